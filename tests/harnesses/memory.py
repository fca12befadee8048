"""The in-memory backend for the store contract suite (see tests/store_harness.py).

It runs first: the contract with no server in the way. Each test gets its own
:class:`MemorySecrets`; a denied store acts as a credential the server refuses.
"""

from __future__ import annotations

import uuid

import pytest

from providers.memory import MemorySecrets, MemoryStore
from rotator.abc import SecretStore


class MemoryHarness:
    """Secrets at fresh paths of one in-process :class:`MemorySecrets`."""

    name = "memory"
    invisible_staging = True

    def __init__(self) -> None:
        self.server = MemorySecrets()

    def make_store(self, *, field: str | None = None) -> MemoryStore:
        return self.server.store(f"contract/{uuid.uuid4().hex}", field=field)

    def reopen(self, store: SecretStore) -> MemoryStore:
        """A new client of the same path: it holds no state, as a fresh process would not."""
        found = _memory(store)
        return self.server.store(found.path, field=found.field)

    def external_write(self, store: SecretStore, raw: str) -> None:
        self.server.put(_memory(store).path, raw)

    def read_raw(self, store: SecretStore) -> str | None:
        return self.server.get(_memory(store).path)

    def delete(self, store: SecretStore) -> None:
        self.server.delete(_memory(store).path)

    def denied_store(self, store: SecretStore) -> MemoryStore:
        found = _memory(store)
        self.server.deny("denied")
        return self.server.store(found.path, field=found.field, credential="denied")


def _memory(store: SecretStore) -> MemoryStore:
    assert isinstance(store, MemoryStore), f"not a memory store: {store!r}"
    return store


@pytest.fixture
def memory_harness() -> MemoryHarness:
    """The in-memory backend: a fresh server for each test."""
    return MemoryHarness()
