"""The ``exdir`` store: a directory of secrets, one file each, for the example plugin.

    <dir>/<name>              what consumers read: the key (or a JSON object, with ``field``)
    <dir>/<name>.pending      the staged key until it is promoted (0600)
    <dir>/<name>.stamps.json  the stamps of the current and pending versions (no value)
    <dir>/<name>.lock         flock held around every read-compare-write

Writes go to a temporary file renamed over the target, so a reader sees the old file or the
new one. A stamp applies to a value only while the value's fingerprint is the stamp's: a value
written by someone else reads as unstamped (adopted).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from rotator.abc import Stamp, StoredVersion, TargetState
from rotator.errors import StoreAccessDenied, StoreConflict, StoreError, StoreFormatError, StoreNotFound
from rotator.secret import Secret
from rotator_example.models import DirTarget


class DirStore:
    """One secret of an ``exdir`` directory."""

    def __init__(self, target: DirTarget, folder: Path) -> None:
        self.target = target
        self.folder = folder
        self.path = folder / target.name
        self._name = f"exdir:{target.dir}/{target.name}" + (f"#{target.field}" if target.field else "")

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"DirStore({self._name})"

    def read(self) -> TargetState:
        with self._errors("read"), self._locked():
            return self._state()

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        with self._errors("stage"), self._locked():
            state = self._state()
            for version in (state.pending, state.current):
                stamped = version and version.stamp and version.stamp.attempt == stamp.attempt
                if stamped and version and version.fingerprint == value.fingerprint:
                    return  # already written by this attempt
            if expected is not None and expected != state.revision:
                raise StoreConflict(self._name, "changed since it was read; nothing was written")
            stamps = self._stamps()
            self._write(self._sidecar("pending"), value.reveal().encode())
            self._write(
                self._sidecar("stamps.json"), json.dumps({**stamps, "pending": stamp.to_json()}).encode()
            )

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        with self._errors("promote"), self._locked():
            state = self._state()
            if state.current and state.current.stamp and state.current.stamp.attempt == attempt:
                return
            pending = state.pending
            if pending is None or pending.stamp is None or pending.stamp.attempt != attempt:
                raise StoreNotFound(self._name, f"no version staged by attempt {attempt}")
            consumer = self._read_bytes(self.path)
            if self.target.field is None:
                data = pending.value.reveal().encode() + b"\n"
            else:
                merged = {**(self._json_map(consumer) if consumer is not None else {})}
                merged[self.target.field] = pending.value.reveal()
                data = json.dumps(merged, indent=2).encode() + b"\n"
            current = replace(pending.stamp, promoted_at=promoted_at)
            # the stamp first: it applies to the new value only, so a crash here leaves the old
            self._write(self._sidecar("stamps.json"), json.dumps({"current": current.to_json()}).encode())
            self._write(self.path, data, mode=0o644)
            self._sidecar("pending").unlink(missing_ok=True)

    def check_access(self) -> None:
        with self._errors("check access"), self._locked():
            self._state()
            probe = self._sidecar("access-check")
            self._write(probe, b"")
            probe.unlink()

    # ------------------------------------------------------------------ internals

    def _sidecar(self, suffix: str) -> Path:
        return self.folder / f"{self.target.name}.{suffix}"

    def _state(self) -> TargetState:
        consumer = self._read_bytes(self.path)
        pending_raw = self._read_bytes(self._sidecar("pending"))
        stamps_raw = self._read_bytes(self._sidecar("stamps.json"))
        stamps = self._stamps(stamps_raw)
        current = None
        if consumer is not None and (value := self._extract(consumer)) is not None:
            stamp = Stamp.from_json(stamps["current"]) if "current" in stamps else None
            if stamp is not None and stamp.fingerprint != value.fingerprint:
                stamp = None  # someone else wrote the file since
            current = StoredVersion(_digest(consumer), value, stamp)
        pending = None
        stamp = Stamp.from_json(stamps["pending"]) if "pending" in stamps else None
        if pending_raw is not None and stamp is not None:
            pending = StoredVersion(
                _digest(pending_raw, stamp.attempt.encode()), Secret(pending_raw.decode()), stamp
            )
        if current is None and pending is None:
            return TargetState(None, None, None)
        revision = _digest(consumer or b"-", pending_raw or b"-", stamps_raw or b"-")
        return TargetState(current, pending, revision)

    def _extract(self, consumer: bytes) -> Secret | None:
        if self.target.field is None:
            text = consumer.decode("utf-8", errors="replace").strip()
            return Secret(text) if text else None
        found = self._json_map(consumer).get(self.target.field)
        if found is not None and not isinstance(found, str):
            raise StoreFormatError(self._name, f"field {self.target.field} is not a string")
        return Secret(found) if found else None

    def _json_map(self, consumer: bytes) -> dict[str, Any]:
        try:
            data = json.loads(consumer)
        except ValueError:
            raise StoreFormatError(self._name, "not JSON (a field needs a JSON object)") from None
        if not isinstance(data, dict):
            raise StoreFormatError(self._name, "not a JSON object (a field needs one)")
        return data

    def _stamps(self, raw: bytes | None = None) -> dict[str, str]:
        if raw is None:
            raw = self._read_bytes(self._sidecar("stamps.json"))
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}  # damaged bookkeeping: the versions read as unstamped
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    @staticmethod
    def _read_bytes(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, path: Path, data: bytes, *, mode: int = 0o600) -> None:
        temp = path.with_name(f".{path.name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._sidecar("lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except PermissionError:
            raise StoreAccessDenied(self._name, f"{doing}: permission denied") from None
        except OSError as exc:
            raise StoreError(self._name, f"{doing}: {exc.strerror or type(exc).__name__}") from None


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]
