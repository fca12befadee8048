"""The per-key file lease: one writer per key across processes and threads."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rotator.engine.lease import FileLease, Lease, LeaseInfo, lock_name
from rotator.errors import LeaseBusy

_HOLDER = """
import pathlib, sys
from rotator.engine.lease import FileLease
lease = FileLease(pathlib.Path(sys.argv[1]), owner=sys.argv[3])
with lease.acquire(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A subprocess that holds the lease on 'payments' until its stdin gets a line."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), "payments", "cron@box-1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.timeout(30)
def test_another_process_is_refused_and_named(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    """While a process holds a key, acquiring it fails at once naming the holder and since when."""
    lease = FileLease(tmp_path, owner="alice@laptop")
    before = datetime.now(UTC)
    with pytest.raises(LeaseBusy) as caught, lease.acquire("payments"):
        pytest.fail("acquired a lease another process holds")
    assert caught.value.key == "payments"
    holder_text = caught.value.holder
    assert holder_text.startswith(f"cron@box-1 (pid {holder.pid}) since ")
    since = datetime.fromisoformat(holder_text.rsplit(" ", 1)[1].replace("Z", "+00:00"))
    assert before - timedelta(seconds=30) < since <= datetime.now(UTC)
    assert "cron@box-1" in str(caught.value)
    with lease.acquire("billing") as info:  # other keys are not blocked
        assert info.key == "billing"
    assert holder.stdin is not None
    assert holder.stdout is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "released\n"
    with lease.acquire("payments") as info:
        assert info.owner == "alice@laptop"


@pytest.mark.timeout(30)
def test_lease_is_released_when_the_holder_is_killed(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    """SIGKILL of the holder frees the key: the kernel drops the lock with the process."""
    lease = FileLease(tmp_path)
    with pytest.raises(LeaseBusy), lease.acquire("payments"):
        pass
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=10) == -signal.SIGKILL
    with lease.acquire("payments") as info:
        assert info.owner == FileLease(tmp_path).owner
        assert str(os.getpid()) in info.owner


def test_another_thread_is_refused(tmp_path: Path) -> None:
    """A second thread of the same process cannot take a key the first one holds."""
    lease = FileLease(tmp_path, owner="scheduler")
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lease.acquire("payments"):
            held.set()
            done.wait(timeout=10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(timeout=10)
        with pytest.raises(LeaseBusy, match="scheduler"), lease.acquire("payments"):
            pass
    finally:
        done.set()
        thread.join()
    with lease.acquire("payments"):
        pass


def test_lease_is_not_reentrant(tmp_path: Path) -> None:
    """The same thread asking again for a key it holds is refused too, not deadlocked."""
    lease = FileLease(tmp_path)
    with lease.acquire("payments"), pytest.raises(LeaseBusy), lease.acquire("payments"):
        pass


def test_flock_excludes_open_file_descriptions_of_one_process(tmp_path: Path) -> None:
    """The property the lease rests on: two opens of one file in one process exclude each other."""
    path = tmp_path / "probe.lock"
    first = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    second = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(first)
        os.close(second)


def test_released_after_the_block_and_after_an_exception(tmp_path: Path) -> None:
    """Leaving the with-block frees the key, also when it raised; the description is cleared."""
    lease = FileLease(tmp_path, owner="ci")
    with lease.acquire("payments") as info:
        assert isinstance(info, LeaseInfo)
        assert info.acquired_at.tzinfo is not None
        assert "ci" in lease.path("payments").read_text()
    assert lease.path("payments").read_text() == ""
    with pytest.raises(RuntimeError, match="boom"), lease.acquire("payments"):
        raise RuntimeError("boom")
    with lease.acquire("payments"):
        pass


def test_lock_files_are_private(tmp_path: Path) -> None:
    """The locks directory is 0700 and each lock file 0600, even under umask 0."""
    old = os.umask(0)
    try:
        with FileLease(tmp_path / "state").acquire("payments"):
            pass
    finally:
        os.umask(old)
    locks = tmp_path / "state" / "locks"
    assert stat.S_IMODE(locks.stat().st_mode) == 0o700
    assert stat.S_IMODE((locks / "payments.lock").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "..", ".", "a/b", "/abs", "a\\b", "k\x00ey", "ключ", "x" * 500]
)
def test_key_names_cannot_escape_the_locks_directory(tmp_path: Path, key: str) -> None:
    """Any key name maps to one plain file inside the locks directory."""
    lease = FileLease(tmp_path / "state")
    path = lease.path(key)
    assert path.parent == tmp_path / "state" / "locks"
    assert "/" not in path.name
    assert not path.name.startswith(".")
    assert len(path.name.encode()) <= 255
    with lease.acquire(key):
        assert path.is_file()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


def test_distinct_keys_get_distinct_lock_files() -> None:
    """Encoding is one-to-one, so two keys never share a lease."""
    keys = ["a/b", "a%2Fb", "a_b", "a-b", "a.b", "a%2Eb", "..", "%2E%2E", "x" * 500, "x" * 501]
    names = [lock_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    assert lock_name("payments") == "payments.lock"
    assert lock_name("adjudon-admin") == "adjudon-admin.lock"


def test_empty_key_is_refused(tmp_path: Path) -> None:
    """A lease needs a key name."""
    with pytest.raises(ValueError, match="key name"), FileLease(tmp_path).acquire(""):
        pass


def test_file_lease_has_the_lease_shape(tmp_path: Path) -> None:
    """FileLease satisfies the Lease protocol and defaults its owner to user@host pid N."""
    lease: Lease = FileLease(tmp_path)
    with lease.acquire("payments") as info:
        assert info.owner.endswith(f" pid {os.getpid()}")
        assert "@" in info.owner
