"""What each store backend gives the one contract suite (``tests/test_store_contract.py``).

Every backend (memory, file, aws, vault, gcp) has a module in ``tests/harnesses/`` that
defines a pytest fixture named ``<backend>_harness`` returning an object of this
shape. The contract suite is then run unchanged against all of them.
"""

from __future__ import annotations

from typing import Protocol

from rotator.abc import SecretStore


class StoreHarness(Protocol):
    name: str
    """Backend name: memory, file, aws, vault or gcp."""

    def make_store(self, *, field: str | None = None) -> SecretStore:
        """A store pointing at a fresh secret that does not exist yet (a unique name).

        With ``field`` set, the target keeps the key in that field of a JSON
        (or, for files, dotenv) map.
        """
        ...

    def external_write(self, store: SecretStore, raw: str) -> None:
        """Another writer (not the rotator) replaces the whole secret with ``raw`` text,
        making it the version consumers read. Used for conflicts, for adoption of
        keys put there by hand, and to plant values that are not JSON."""
        ...

    def read_raw(self, store: SecretStore) -> str | None:
        """The whole text consumers read now (None if the secret does not exist)."""
        ...

    def delete(self, store: SecretStore) -> None:
        """Delete the secret behind ``store`` (as an operator would, mid-rotation)."""
        ...

    def denied_store(self, store: SecretStore) -> SecretStore:
        """A store for the same secret as ``store`` whose credentials may not read or write it."""
        ...

    def reopen(self, store: SecretStore) -> SecretStore:
        """A new store object for the same secret, sharing no state with ``store``
        (a fresh process's view)."""
        ...
