"""A :class:`rotator.abc.SecretStore` held in this process's memory, for tests.

It is the first backend the store contract suite runs (``tests/test_store_contract.py``):
the rules of the Protocol with nothing else in the way, so a failure there is a
failure of the contract, not of a server. It is not a target type of the rotation
file; tests construct it directly.

:class:`MemorySecrets` plays the server: it holds every secret by path, each a
list of versions (the whole text a consumer reads, and the rotator's stamp), a
pointer to the current one and one to the pending one, and a revision that
changes on every write. :class:`MemoryStore` is a client of one path, holding no
state of its own, so a second object for the same path sees what a fresh process
would. Credentials named in :meth:`MemorySecrets.deny` may neither read nor write.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

from providers._field import FieldCodec
from rotator.abc import Stamp, StoredVersion, TargetState
from rotator.errors import StoreAccessDenied, StoreConflict, StoreNotFound
from rotator.secret import Secret

ABSENT = "0"
"""The revision of a secret that does not exist (every write gives a larger one)."""


@dataclass
class _Version:
    id: str
    text: str
    """The whole text consumers read when this version is current."""
    stamp: Stamp | None


@dataclass
class _Secret:
    versions: dict[str, _Version] = field(default_factory=dict)
    current: str | None = None
    pending: str | None = None
    revision: str = ABSENT


class MemorySecrets:
    """The server side: secrets by path, shared by every :class:`MemoryStore` made from it."""

    def __init__(self) -> None:
        self._secrets: dict[str, _Secret] = {}
        self._denied: set[str] = set()
        self._lock = threading.RLock()
        self._revisions = itertools.count(1)

    def store(self, path: str, *, field: str | None = None, credential: str = "default") -> MemoryStore:
        """A client of the secret at ``path`` (keeping the key in ``field`` of a JSON map
        when one is given), acting as ``credential``."""
        return MemoryStore(self, path, field=field, credential=credential)

    def deny(self, credential: str) -> None:
        """From now on ``credential`` may not read or write any secret."""
        with self._lock:
            self._denied.add(credential)

    # ------------------------------------------------------------------ as another writer would

    def put(self, path: str, text: str) -> None:
        """Another writer replaces the whole secret with ``text``, which consumers read at once
        (an unstamped version; a version staged before stays pending)."""
        with self._lock:
            secret = self._secrets.setdefault(path, _Secret())
            version = self._add(secret, text, None)
            secret.current = version.id

    def get(self, path: str) -> str | None:
        """The whole text consumers read now; ``None`` when the secret does not exist."""
        with self._lock:
            secret = self._secrets.get(path)
            if secret is None or secret.current is None:
                return None
            return secret.versions[secret.current].text

    def delete(self, path: str) -> None:
        """Delete the secret and every version of it."""
        with self._lock:
            self._secrets.pop(path, None)

    # ------------------------------------------------------------------ for MemoryStore

    @contextmanager
    def _session(self, credential: str, name: str, doing: str) -> Iterator[dict[str, _Secret]]:
        with self._lock:
            if credential in self._denied:
                raise StoreAccessDenied(name, f"{doing}: credential {credential!r} is not allowed")
            yield self._secrets

    def _add(self, secret: _Secret, text: str, stamp: Stamp | None) -> _Version:
        version = _Version(str(len(secret.versions) + 1), text, stamp)
        secret.versions[version.id] = version
        secret.revision = str(next(self._revisions))
        return version


class MemoryStore:
    """One secret of a :class:`MemorySecrets`, seen through the :class:`SecretStore` Protocol."""

    def __init__(self, server: MemorySecrets, path: str, *, field: str | None, credential: str) -> None:
        self.server = server
        self.path = path
        self.field = field
        self.credential = credential
        self._name = f"memory:{path}" + (f"#{field}" if field else "")
        self._codec = FieldCodec(self._name, field=field)

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"MemoryStore({self._name!r})"

    def read(self) -> TargetState:
        with self.server._session(self.credential, self._name, "reading") as secrets:
            secret = secrets.get(self.path)
            if secret is None:
                return TargetState(None, None, ABSENT)
            return self._view(secret)

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        if stamp.fingerprint != value.fingerprint:
            raise ValueError(f"{self._name}: the stamp's fingerprint is not the value's")
        with self.server._session(self.credential, self._name, "staging") as secrets:
            secret = secrets.get(self.path)
            state = TargetState(None, None, ABSENT) if secret is None else self._view(secret)
            if any(held is not None and held.written_by(stamp) for held in (state.pending, state.current)):
                return
            if expected is not None and state.revision != expected:
                raise StoreConflict(
                    self._name, "changed by another writer since it was read; nothing written"
                )
            base = None if secret is None or secret.current is None else secret.versions[secret.current].text
            text = self._merge(base, value)
            secret = secrets.setdefault(self.path, _Secret())
            secret.pending = self.server._add(secret, text, replace(stamp, promoted_at=None)).id

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        with self.server._session(self.credential, self._name, "promoting") as secrets:
            secret = secrets.get(self.path)
            if secret is None:
                raise StoreNotFound(
                    self._name, f"the secret does not exist; nothing staged by attempt {attempt}"
                )
            current = None if secret.current is None else secret.versions[secret.current]
            if current is not None and current.stamp is not None and current.stamp.attempt == attempt:
                return
            pending = None if secret.pending is None else secret.versions[secret.pending]
            if pending is None or pending.stamp is None or pending.stamp.attempt != attempt:
                raise StoreNotFound(self._name, f"no version staged by attempt {attempt}")
            pending.stamp = replace(pending.stamp, promoted_at=promoted_at)
            secret.current, secret.pending = pending.id, None
            secret.revision = str(next(self.server._revisions))

    def check_access(self) -> None:
        with self.server._session(self.credential, self._name, "checking access"):
            return

    # ------------------------------------------------------------------ the value in the text

    def _view(self, secret: _Secret) -> TargetState:
        current = pending = None
        if secret.current is not None:
            version = secret.versions[secret.current]
            value = self._extract(version.text)
            if value is not None:
                current = StoredVersion(version.id, value, version.stamp)
        if secret.pending is not None:
            version = secret.versions[secret.pending]
            value = self._extract(version.text)
            if value is not None:
                pending = StoredVersion(version.id, value, version.stamp)
        return TargetState(current, pending, secret.revision)

    def _extract(self, text: str) -> Secret | None:
        found = self._codec.read(text.strip() if self._codec.whole else text, "the secret")
        return Secret(found) if found else None

    def _merge(self, base: str | None, value: Secret) -> str:
        return self._codec.merge(base, value.reveal(), "the secret")
