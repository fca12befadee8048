"""The audit journal: an append-only, hash-chained file of JSON lines.

Each line is one entry::

    {"seq": 7, "ts": "2024-05-01T03:00:00.123456Z", "event": "revoke",
     "key": "payments", "attempt": "<uuid4>", "details": {...},
     "prev": "<hash of entry 6>", "hash": "<sha256 of this entry without hash>"}

``seq`` counts from 1 and equals the line number; the first entry's ``prev`` is
64 zeros. Editing, deleting, reordering or cutting lines breaks the chain and
:meth:`Journal.verify` names the first line that does not hold. Removing whole
lines from the end cannot be seen from the file alone, so each append also
replaces the **head record** ``audit.head`` (the entry count and the last
hash, written to a temporary file and renamed over the old one): a journal
shorter than its head, or whose entry at the head's count has another hash,
was cut. Not detected: a journal and head both rewritten (or both deleted)
together, and the entries appended after a crash between the journal write
and the head write (the head then lags by one entry, which verify accepts).

Appends are serialised across threads and processes by an exclusive ``flock``
on a sibling lock file. Readers take no lock: a line still being written has
no newline yet and is skipped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

from rotator.abc import format_time, parse_time
from rotator.durable import write_all
from rotator.errors import RotatorError
from rotator.secret import Secret

GENESIS: Final = "0" * 64
_FIELDS: Final = frozenset({"seq", "ts", "event", "key", "attempt", "details", "prev", "hash"})
_BLOCK: Final = 8192
_TS_TAIL: Final = re.compile(rb'"ts":"([0-9T:.Z+-]+)"}$')  # the last field of a canonical line
# Raw vendor keys, matched anywhere in a string. AWS secret keys have no prefix to match on.
_RAW_KEY: Final = re.compile(r"adj_live_[0-9a-f]{64}|adj_agent_[0-9a-f]{48}|sk_live_[A-Za-z0-9]{40}")


class JournalError(RotatorError):
    """The journal cannot be appended to or read: a line is damaged. Names the line only."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :meth:`Journal.verify`.

    ``checked`` counts the entries found sound; ``first_bad`` is the 1-based
    line number of the first one that is not, with ``reason`` saying why.
    """

    ok: bool
    checked: int
    first_bad: int | None = None
    reason: str | None = None


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``entry`` without its ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


class Journal:
    """The hash-chained journal ``audit.jsonl`` in a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / "audit.jsonl"
        self._lock_path = self.state_dir / "audit.jsonl.lock"
        self.head_path = self.state_dir / "audit.head"

    # ------------------------------------------------------------------ writing

    def append(
        self,
        event: str,
        *,
        key: str | None = None,
        attempt: str | None = None,
        **details: object,
    ) -> dict[str, Any]:
        """Append one entry and return it (with ``seq``, ``prev`` and ``hash``).

        :raises TypeError: a detail is a :class:`~rotator.secret.Secret` or not JSON-able.
        :raises ValueError: a string looks like a raw vendor key (the detail is named).
        :raises JournalError: the journal's last line is damaged.
        """
        for name, value in (("event", event), ("key", key), ("attempt", attempt)):
            if (value is not None or name == "event") and not isinstance(value, str):
                raise TypeError(f"audit {name} must be a str, not {type(value).__name__}")
            if value is not None and _RAW_KEY.search(value):
                raise ValueError(f"audit {name} looks like a raw key; name keys by id")
        clean = {name: _normalise(name, value) for name, value in details.items()}
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            seq, prev = self._head()
            recorded = self.read_head()
            if recorded is not None and recorded[0] > seq:
                raise JournalError(
                    f"{self.path}: the journal has {seq} entries but its head record "
                    f"{self.head_path} counts {recorded[0]}: it was cut; run 'rotator audit verify'"
                )
            entry: dict[str, Any] = {
                "seq": seq + 1,
                "ts": format_time(datetime.now(UTC)),
                "event": event,
                "key": key,
                "attempt": attempt,
                "details": clean,
                "prev": prev,
            }
            entry["hash"] = entry_hash(entry)
            self._write(_canonical(entry) + b"\n")
            self._write_head(entry["seq"], entry["hash"])
        finally:
            os.close(lock_fd)  # closing the last fd on the description drops the flock
        return entry

    def _head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry, read from the end of the file."""
        if not self.path.exists():
            return 0, GENESIS
        with open(self.path, "rb") as f:
            for line, torn in _reverse_lines(f):
                if torn:
                    raise JournalError(
                        f"{self.path}: the last line is cut short (an interrupted write?); "
                        "run 'rotator audit verify' and repair the journal before appending"
                    )
                entry = _parse(line)
                if (
                    entry is None
                    or not isinstance(entry.get("seq"), int)
                    or not isinstance(entry.get("hash"), str)
                ):
                    raise JournalError(f"{self.path}: the last entry is damaged; run 'rotator audit verify'")
                return entry["seq"], entry["hash"]
        return 0, GENESIS

    def _write(self, data: bytes) -> None:
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot append ({exc.strerror or exc})") from None
        if created:  # make the new directory entry durable too
            self._sync_dir()

    def _sync_dir(self) -> None:
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _write_head(self, seq: int, digest: str) -> None:
        """Replace the head record atomically: a temporary file, fsync, rename, fsync the dir."""
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, _canonical({"seq": seq, "hash": digest}) + b"\n")
            finally:
                os.close(fd)
            os.replace(tmp, self.head_path)
            self._sync_dir()
        except OSError as exc:
            raise JournalError(f"{self.head_path}: cannot write ({exc.strerror or exc})") from None

    def read_head(self) -> tuple[int, str] | None:
        """``(count, last hash)`` from the head record; ``None`` when there is none.

        :raises JournalError: the head record is damaged.
        """
        try:
            data = json.loads(self.head_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            data = None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("seq"), int)
            or not isinstance(data.get("hash"), str)
        ):
            raise JournalError(f"{self.head_path}: the head record is damaged")
        return data["seq"], data["hash"]

    # ------------------------------------------------------------------ reading

    def entries(self, key: str | None = None) -> Iterator[dict[str, Any]]:
        """Stream the entries in order, those of ``key`` only if given.

        A last line without its newline (a write in progress) is skipped.
        """
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    return
                entry = _parse(line)
                if entry is None:
                    raise JournalError(f"{self.path}: line {lineno} is not a journal entry")
                if key is None or entry.get("key") == key:
                    yield entry

    def last(self, key: str, event: str | None = None) -> dict[str, Any] | None:
        """The latest entry for ``key`` (of ``event`` if given), read from the end."""
        if not self.path.exists():
            return None
        with open(self.path, "rb") as f:
            for line, torn in _reverse_lines(f):
                if torn:
                    continue
                entry = _parse(line)
                if entry is None:
                    raise JournalError(
                        f"{self.path}: a line that is not a journal entry; run 'rotator audit verify'"
                    )
                if entry.get("key") == key and (event is None or entry.get("event") == event):
                    return entry
        return None

    def recent(self, key: str, since: datetime) -> list[dict[str, Any]]:
        """The entries of ``key`` stamped ``since`` or later, oldest first, read from the end
        (so the cost is the recent tail, not the whole journal)."""
        if not self.path.exists():
            return []
        found: list[dict[str, Any]] = []
        needle = b'"key":' + _canonical(key)
        with open(self.path, "rb") as f:
            for line, torn in _reverse_lines(f):
                if torn:
                    continue
                # canonical lines end with the ts: read it without parsing other keys' entries
                tail = _TS_TAIL.search(line)
                entry = _parse(line) if tail is None or needle in line else None
                stamp = tail.group(1).decode() if tail is not None else (entry or {}).get("ts")
                try:
                    at = parse_time(stamp) if isinstance(stamp, str) else None
                except ValueError:
                    at = None
                if at is None:
                    raise JournalError(
                        f"{self.path}: a line that is not a journal entry; run 'rotator audit verify'"
                    )
                if at < since:
                    break
                if entry is not None and entry.get("key") == key:
                    found.append(entry)
        found.reverse()
        return found

    def verify(self) -> VerifyResult:
        """Check the whole chain, streaming: hashes, links, seq, a cut last line, and that
        the journal reaches its head record (lines cut from the end, or the file deleted)."""
        try:
            head = self.read_head()
        except JournalError as exc:
            return VerifyResult(False, 0, None, str(exc))
        if not self.path.exists():
            if head is not None:
                return VerifyResult(
                    False, 0, 1, f"the journal is missing but its head record counts {head[0]} entries"
                )
            return VerifyResult(ok=True, checked=0)
        with open(self.path, "rb") as f:
            size = self._committed_size(f)
            prev, checked, read = GENESIS, 0, 0
            for lineno, line in enumerate(f, start=1):
                read += len(line)
                if read > size:  # appended after we started: not ours to judge
                    break
                problem = _check_line(line, lineno, prev)
                if isinstance(problem, str):
                    return VerifyResult(False, checked, lineno, problem)
                prev = problem["hash"]
                checked += 1
                if head is not None and checked == head[0] and prev != head[1]:
                    return VerifyResult(
                        False, checked - 1, lineno, f"line {lineno} is not the entry the head record names"
                    )
        if head is not None and checked < head[0]:
            return VerifyResult(
                False,
                checked,
                checked + 1,
                f"the journal ends after {checked} entries but its head record counts {head[0]}: "
                "entries were cut from the end",
            )
        return VerifyResult(ok=True, checked=checked)

    def _committed_size(self, f: IO[bytes]) -> int:
        """The file size while no append is half-done (a shared lock waits for writers)."""
        try:
            lock_fd = os.open(self._lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return os.fstat(f.fileno()).st_size
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            return os.fstat(f.fileno()).st_size
        finally:
            os.close(lock_fd)


# ---------------------------------------------------------------------- helpers


def _check_line(line: bytes, lineno: int, prev: str) -> str | dict[str, Any]:
    """The entry on line ``lineno`` if it follows one hashed ``prev``, else why not."""
    if not line.endswith(b"\n"):
        return (
            f"line {lineno} is truncated: the file ends in the middle of an entry "
            "(an interrupted write, or the file was cut)"
        )
    entry = _parse(line)
    if entry is None:
        return f"line {lineno} is not valid JSON"
    if set(entry) != _FIELDS:
        missing = sorted(_FIELDS - set(entry))
        extra = sorted(set(entry) - _FIELDS)
        return f"line {lineno} has the wrong fields (missing {missing}, unexpected {extra})"
    if entry["hash"] != entry_hash(entry):
        return f"line {lineno} was altered: its content does not match its hash"
    if entry["prev"] != prev:
        return f"line {lineno} does not follow line {lineno - 1}: an entry was deleted, inserted or moved"
    if entry["seq"] != lineno:
        return f"line {lineno} has seq {entry['seq']!r}, expected {lineno}"
    return entry


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _reverse_lines(f: IO[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line, torn)`` from the last line back, reading blocks from the end.

    ``torn`` is true for a last line without its newline.
    """
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    torn = f.read(1) != b"\n"
    pos = size if torn else size - 1  # the final newline ends a line, it does not start one
    pending = b""
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + pending).split(b"\n")
        pending = parts[0]
        for part in reversed(parts[1:]):
            yield part, torn
            torn = False
    yield pending, torn


def _normalise(name: str, value: object) -> Any:
    """``value`` as plain JSON data, refusing raw keys wherever they hide."""

    def default(obj: object) -> object:
        if isinstance(obj, Secret):
            raise TypeError(f"audit detail {name!r} holds a Secret; record its fingerprint")
        if isinstance(obj, datetime):
            return format_time(obj)
        if isinstance(obj, timedelta):
            return obj.total_seconds()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"audit detail {name!r} holds a {type(obj).__name__}, not JSON data")

    if _RAW_KEY.search(name):
        raise ValueError("an audit detail name looks like a raw key")
    plain = json.loads(json.dumps(value, default=default, allow_nan=False))
    _refuse_raw_keys(name, plain)
    return plain


def _refuse_raw_keys(path: str, value: object) -> None:
    if isinstance(value, str):
        if _RAW_KEY.search(value):
            raise ValueError(
                f"audit detail {path!r} looks like a raw vendor key; name keys by id, prefix or fingerprint"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            if _RAW_KEY.search(k):
                raise ValueError(f"audit detail {path!r} has a field named like a raw key")
            _refuse_raw_keys(f"{path}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_raw_keys(f"{path}[{i}]", v)
