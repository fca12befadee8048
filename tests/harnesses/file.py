"""The file backend for the store contract suite (see tests/store_harness.py).

Each secret lives in its own directory under the test's ``tmp_path``, named by
a path relative to it, so ``open_store`` resolves it against ``base_dir``.

A denied store is the same file seen by another user: its directory is made
mode 000, and when the tests run as root (which file modes do not stop) every
call runs on a thread whose file-system uid is ``nobody``, so the kernel itself
refuses, as it would for a service account without access.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pytest

from providers.file import FileStore, open_store
from rotator.abc import SecretStore, Stamp, TargetState
from rotator.secret import Secret
from rotator.spec import FileTarget

_T = TypeVar("_T")
_NOBODY = 65534


def _as_nobody(call: Callable[[], _T]) -> _T:
    """Run ``call`` on a fresh thread whose fsuid/fsgid are nobody (Linux: per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        libc.setfsgid(_NOBODY)
        libc.setfsuid(_NOBODY)
        if libc.setfsuid(_NOBODY) != _NOBODY:  # setfsuid answers the previous fsuid
            failure.append(RuntimeError("could not switch the thread's fsuid"))
            return
        try:
            box.append(call())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box[0]


class _OtherUser:
    """A store over the same file whose calls run with another user's file access."""

    def __init__(self, store: FileStore) -> None:
        self._store = store

    def _call(self, call: Callable[[], _T]) -> _T:
        return _as_nobody(call) if os.geteuid() == 0 else call()

    @property
    def name(self) -> str:
        return self._store.name

    def read(self) -> TargetState:
        return self._call(self._store.read)

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        self._call(lambda: self._store.stage(value, stamp, expected=expected))

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        self._call(lambda: self._store.promote(attempt, promoted_at))

    def check_access(self) -> None:
        self._call(self._store.check_access)


class FileHarness:
    """Secrets as files under one temporary directory."""

    name = "file"
    invisible_staging = True

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._count = 0
        self._locked_dirs: list[Path] = []

    def make_store(self, *, field: str | None = None) -> FileStore:
        self._count += 1
        folder = f"secret-{self._count}"
        (self.base_dir / folder).mkdir()
        if field is None:
            target = FileTarget(type="file", path=f"{folder}/app.key")
        else:
            target = FileTarget(type="file", path=f"{folder}/app.json", format="json", field=field)
        return open_store(target, base_dir=self.base_dir)

    def reopen(self, store: SecretStore) -> FileStore:
        """A new store object for the same file, as a fresh process would open it."""
        return open_store(_file(store).target, base_dir=self.base_dir)

    def external_write(self, store: SecretStore, raw: str) -> None:
        _file(store).path.write_text(raw)

    def read_raw(self, store: SecretStore) -> str | None:
        path = _file(store).path
        return path.read_text() if path.exists() else None

    def delete(self, store: SecretStore) -> None:
        path = _file(store).path
        for name in (path.name, f"{path.name}.rotator.json", f"{path.name}.rotator-pending"):
            path.with_name(name).unlink(missing_ok=True)

    def denied_store(self, store: SecretStore) -> SecretStore:
        folder = _file(store).path.parent
        folder.chmod(0)
        self._locked_dirs.append(folder)
        return _OtherUser(self.reopen(store))

    def restore(self) -> None:
        for folder in self._locked_dirs:
            folder.chmod(0o700)


def _file(store: SecretStore) -> FileStore:
    assert isinstance(store, FileStore), f"not a file store: {store!r}"
    return store


@pytest.fixture
def file_harness(tmp_path: Path) -> Iterator[FileHarness]:
    """The file backend: every secret a file under this test's temporary directory."""
    harness = FileHarness(tmp_path)
    yield harness
    harness.restore()
