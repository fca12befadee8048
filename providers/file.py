"""A local file as a secret store: ``raw``, ``dotenv`` or ``json``.

Consumers read one file that holds only the current value. The rotator keeps
its bookkeeping beside that file, never inside it::

    payments.env                   what consumers read: the current value only
    payments.env.rotator.json      version counter and stamps, never a value (0600)
    payments.env.rotator-pending   the staged value until it is promoted (0600)
    payments.env.rotator.lock      flock held around every read-compare-write

Every write goes to a temporary file in the same directory (created 0600 and
exclusively), is fsynced, renamed over its target, and the directory is
fsynced: a crash leaves the old file or the new one, never half of one.

A target path that is a symbolic link is written through: the file it resolves to is
replaced in its own directory (a temporary file there, then a rename), keeping its mode
and owner, and the link stays a link. The sidecars stay next to the link, named after it.
A link whose destination does not exist is an error, never read as an empty target.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from providers._field import FieldCodec
from rotator.abc import Stamp, StoredVersion, TargetState
from rotator.builtin.stores import FileTarget
from rotator.durable import write_all
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreFormatError,
    StoreNotFound,
)
from rotator.secret import Secret

_PRIVATE = 0o600


@dataclass(frozen=True)
class _Entry:
    version: str
    stamp: Stamp


@dataclass
class _Book:
    """The sidecar: what the rotator knows about the file, without any value."""

    counter: int = 0
    current: _Entry | None = None
    pending: _Entry | None = None


@dataclass(frozen=True)
class _Snapshot:
    """The three files' bytes as read under one lock (``None``: absent)."""

    main: bytes | None
    pending: bytes | None
    sidecar: bytes | None
    book: _Book = field(default_factory=_Book)

    @property
    def revision(self) -> str:
        digest = hashlib.sha256()
        for part in (self.main, self.pending, self.sidecar):
            digest.update(b"-" if part is None else b"+%d:%b" % (len(part), part))
        return digest.hexdigest()[:32]


class FileStore:
    """A :class:`rotator.abc.SecretStore` over one local file."""

    def __init__(self, target: FileTarget, path: Path) -> None:
        self.target = target
        self.path = path
        base = path.name
        self._sidecar = path.with_name(base + ".rotator.json")
        self._pending = path.with_name(base + ".rotator-pending")
        self._lock = path.with_name(base + ".rotator.lock")
        suffix = f"#{target.field}" if target.field else ""
        self._name = f"file:{target.path}{suffix}"
        fmt = "line" if target.format == "raw" or target.field is None else target.format
        self._codec = FieldCodec(self._name, target.field, fmt, json_style="indented")

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"FileStore({self._name!r})"

    # ------------------------------------------------------------------ the protocol

    def read(self) -> TargetState:
        """Current and pending versions; a missing file (not a dangling link) reads as empty."""
        with self._os_errors("reading"), self._locked(exclusive=False):
            return self._view(self._snapshot())

    def stage(self, value: Secret, stamp: Stamp, *, expected: str | None) -> None:
        """Write ``value`` durably to the pending sidecar; consumers still read the old one."""
        if stamp.fingerprint != value.fingerprint:
            raise ValueError(f"{self._name}: the stamp's fingerprint is not the value's")
        with self._os_errors("staging"), self._locked(exclusive=True):
            snap = self._snapshot()
            state = self._view(snap)  # also refuses a main file we could not merge into later
            if any(held is not None and held.written_by(stamp) for held in (state.pending, state.current)):
                return
            if expected is not None and snap.revision != expected:
                raise StoreConflict(
                    self._name, "changed by another writer since it was read; nothing written"
                )
            book = snap.book
            book.counter += 1
            book.pending = _Entry(str(book.counter), replace(stamp, promoted_at=None))
            self._write(self._pending, value.reveal().encode())
            self._write(self._sidecar, _dump_book(book))

    def promote(self, attempt: str, promoted_at: datetime) -> None:
        """Merge the value staged by ``attempt`` into the file consumers read."""
        with self._os_errors("promoting"), self._locked(exclusive=True):
            snap = self._snapshot()
            state = self._view(snap)
            book = snap.book
            if state.current and state.current.stamp and state.current.stamp.attempt == attempt:
                if book.pending is None and snap.pending is not None:
                    self._remove(self._pending)  # left behind by a crash after the last promote
                return
            pending = state.pending
            if pending is None or pending.stamp is None or pending.stamp.attempt != attempt:
                raise StoreNotFound(self._name, f"no version staged by attempt {attempt}")
            main = self._consumer_file()
            self._write(main, self._merge(snap.main, pending.value), like=self._stat_main(main))
            book.current = _Entry(pending.version, replace(pending.stamp, promoted_at=promoted_at))
            book.pending = None
            self._write(self._sidecar, _dump_book(book))
            self._remove(self._pending)

    def check_access(self) -> None:
        """Try what stage and promote will do: lock, write and sync a file as large as they
        will (zeros, never the value: a full disk fails here, before a reset), open the files
        for writing."""
        with self._os_errors("checking access"):
            if not stat.S_ISDIR(os.stat(self.path.parent).st_mode):
                raise StoreNotFound(self._name, f"{self.path.parent} is not a directory")
            with self._locked(exclusive=True):
                main = self._consumer_file()
                size = len(_read_bytes(main) or b"") + 4096  # value, pending, sidecar
                for folder in {self.path.parent, main.parent}:
                    fd, tmp = self._create_temp(folder)
                    try:
                        write_all(fd, bytes(size))
                    finally:
                        os.close(fd)
                        os.unlink(tmp)
                for path in (main, self._pending, self._sidecar):
                    with contextlib.suppress(FileNotFoundError):
                        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))

    # ------------------------------------------------------------------ reading

    def _snapshot(self) -> _Snapshot:
        sidecar = _read_bytes(self._sidecar)
        book = _Book() if sidecar is None else self._load_book(sidecar)
        main = _read_bytes(self._consumer_file())
        return _Snapshot(main, _read_bytes(self._pending), sidecar, book)

    def _consumer_file(self) -> Path:
        """The file consumers read: the target path, or the file its symbolic link resolves to.

        :raises StoreNotFound: the path is a link whose destination does not exist.
        """
        if not os.path.islink(self.path):
            return self.path
        try:
            return Path(os.path.realpath(self.path, strict=True))
        except FileNotFoundError:
            raise StoreNotFound(
                self._name,
                f"{self.path} is a symbolic link to {os.readlink(self.path)}, which does not "
                "exist; create that file or point the link at an existing one",
            ) from None
        except OSError as exc:  # a loop of links (ELOOP), a component we may not search
            reason = exc.strerror or type(exc).__name__
            raise StoreError(
                self._name, f"{self.path} is a symbolic link that cannot be resolved: {reason}"
            ) from None

    def _view(self, snap: _Snapshot) -> TargetState:
        current = None
        value = self._extract(snap.main)
        if value is not None:
            entry = snap.book.current
            if entry is not None and entry.stamp.fingerprint == value.fingerprint:
                current = StoredVersion(entry.version, value, entry.stamp)
            else:  # written by someone else: adopt it as an unstamped version
                ext = hashlib.sha256(snap.main or b"").hexdigest()[:12]
                current = StoredVersion(f"ext-{ext}", value, None)
        pending = None
        entry = snap.book.pending
        if entry is not None and snap.pending is not None:
            staged = Secret(self._decode(snap.pending, self._pending.name))
            if staged.fingerprint == entry.stamp.fingerprint:
                pending = StoredVersion(entry.version, staged, entry.stamp)
        return TargetState(current, pending, snap.revision)

    def _extract(self, main: bytes | None) -> Secret | None:
        if main is None:
            return None
        found = self._codec.read(self._decode(main, self.path.name), "the file")
        return None if found is None else Secret(found)

    def _merge(self, main: bytes | None, value: Secret) -> bytes:
        text = None if main is None or self._codec.whole else self._decode(main, self.path.name)
        return self._codec.merge(text, value.reveal(), "the file").encode()

    def _decode(self, data: bytes, what: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreFormatError(self._name, f"{what} is not UTF-8 text") from None

    def _load_book(self, data: bytes) -> _Book:
        try:
            raw = json.loads(data)
            book = _Book(counter=int(raw["counter"]))
            entries = {
                slot: (str(raw[slot]["version"]), Stamp.from_dict(raw[slot]["stamp"]))
                for slot in ("current", "pending")
                if raw.get(slot) is not None
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            entries = {"damaged": ("", None)}
        for slot, (version, stamp) in entries.items():
            if stamp is None:
                raise StoreFormatError(
                    self._name,
                    f"{self._sidecar.name} is damaged; delete it to adopt the current value unstamped",
                )
            setattr(book, slot, _Entry(version, stamp))
        return book

    # ------------------------------------------------------------------ writing

    @staticmethod
    def _stat_main(main: Path) -> os.stat_result | None:
        try:
            return os.stat(main)
        except FileNotFoundError:
            return None

    def _create_temp(self, folder: Path) -> tuple[int, Path]:
        tmp = folder / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        return os.open(tmp, flags, _PRIVATE), tmp

    def _write(self, path: Path, data: bytes, *, like: os.stat_result | None = None) -> None:
        """Atomically replace ``path`` (a temporary file in its directory, then a rename);
        ``like`` keeps a consumer file's mode and owner."""
        fd, tmp = self._create_temp(path.parent)
        try:
            try:
                if like is not None:
                    # consumers may read the file through a group or another user: keep that
                    os.fchmod(fd, stat.S_IMODE(like.st_mode))
                    if (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                        with contextlib.suppress(PermissionError):
                            os.fchown(fd, like.st_uid, like.st_gid)
                write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            _fsync_dir(path.parent)

    # ------------------------------------------------------------------ locking and errors

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        """flock the lock file. A reader never creates it (read-only commands write nothing):
        without one, no writer has run yet, and it reads without the lock."""
        fd: int | None
        if exclusive:
            fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE)
        else:
            try:
                fd = os.open(self._lock, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                fd = None  # the reads below meet the same error, or the file is just absent
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing releases the flock

    @contextlib.contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        """Translate OSError into the store error of the same kind (messages name paths only)."""
        try:
            yield
        except PermissionError as exc:
            raise StoreAccessDenied(
                self._name, f"permission denied {doing} {exc.filename or self.path}"
            ) from exc
        except (FileNotFoundError, NotADirectoryError) as exc:
            missing = exc.filename if os.path.isdir(self.path.parent) else self.path.parent
            raise StoreNotFound(self._name, f"{doing}: {missing} does not exist") from exc
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise StoreError(self._name, f"{doing} failed: {reason}") from exc


def _read_bytes(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dump_book(book: _Book) -> bytes:
    def entry(item: _Entry | None) -> dict[str, Any] | None:
        return None if item is None else {"version": item.version, "stamp": item.stamp.to_dict()}

    data = {
        "format": 1,
        "counter": book.counter,
        "current": entry(book.current),
        "pending": entry(book.pending),
    }
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def open_store(target: FileTarget, *, base_dir: Path) -> FileStore:
    """The store for ``target``; a relative path resolves against ``base_dir``."""
    return FileStore(target, base_dir / target.path)
