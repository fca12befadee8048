"""One writer per key (DESIGN.md invariant 4): a lease taken before a pass touches a key.

:class:`Lease` (in ``rotator.abc``) is the shape every lease backend has; :class:`FileLease` holds
an exclusive ``flock`` on ``state_dir/locks/<key>.lock``. ``flock`` locks
belong to the open file description, so a second acquisition conflicts even
from another thread of the same process, and the kernel drops the lock when
the holder dies, however it dies. The state directory must be on a local
file system: some network file systems do not honour ``flock`` between hosts.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from rotator.abc import Lease, LeaseInfo, format_time, parse_time
from rotator.errors import LeaseBusy

_SAFE: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_MAX_NAME: Final = 120

__all__ = ["FileLease", "Lease", "LeaseInfo", "default_owner", "lock_name"]


def default_owner() -> str:
    """``<user>@<hostname> pid <pid>``: enough for a person to find the other runner."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # containers often run a uid with no passwd entry
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def lock_name(key: str) -> str:
    """A file name for ``key``: one per key, never a path.

    Letters, digits, ``_`` and ``-`` stay; every other byte (``/``, ``.``, ``%``)
    is percent-encoded, so no name can climb out of the locks directory and two
    keys never share a name. Very long names end in a hash to fit file systems.
    """
    if not key:
        raise ValueError("a lease needs a key name")
    name = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in key)
    if len(name) > _MAX_NAME:
        name = f"{name[: _MAX_NAME - 65]}~{hashlib.sha256(key.encode()).hexdigest()}"
    return f"{name}.lock"


class FileLease:
    """Leases as ``flock``-ed files in ``state_dir/locks``."""

    def __init__(self, state_dir: Path, *, owner: str | None = None) -> None:
        self.dir = Path(state_dir) / "locks"
        self.owner = owner or default_owner()

    def path(self, key: str) -> Path:
        """The lock file of ``key``."""
        return self.dir / lock_name(key)

    @contextmanager
    def acquire(self, key: str) -> Iterator[LeaseInfo]:
        """Hold ``key``'s lease for the ``with`` block; see :meth:`Lease.acquire`."""
        path = self.path(key)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        # A fresh open file description per acquisition: that is what makes a
        # second acquisition in the same process conflict too.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LeaseBusy(key, _describe_holder(fd)) from None
            info = LeaseInfo(key=key, owner=self.owner, acquired_at=datetime.now(UTC))
            record = {
                "owner": info.owner,
                "pid": os.getpid(),
                "acquired_at": format_time(info.acquired_at),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
            try:
                yield info
            finally:
                # Clear the description while still holding the lock, so nobody
                # reads a stale holder; the file itself stays (unlinking a
                # flock-ed file lets two runners lock two different inodes).
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # drops the flock


def _describe_holder(fd: int) -> str:
    """The holder as its lock file describes it; tolerant of a holder mid-write."""
    try:
        raw = os.pread(fd, 4096, 0)
        record = json.loads(raw)
        owner = str(record["owner"])
        since = format_time(parse_time(str(record["acquired_at"])))
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another runner (it has not described itself yet)"
    if f"pid {pid}" not in owner:
        owner = f"{owner} (pid {pid})"
    return f"{owner} since {since}"
