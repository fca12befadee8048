"""The state directory (lease files and the audit journal): only commands that change
something create or write it, and they prove it takes a write before their first step."""

from __future__ import annotations

import os
from pathlib import Path

from rotator.errors import RotatorError

PROBE = ".rotator-write-check"
"""A one-byte file written and removed again to prove the directory takes a write."""


class StateDirError(RotatorError):
    """The state directory cannot be created or written (read-only, full, not a directory)."""


def ensure_writable(state_dir: Path) -> None:
    """Create ``state_dir`` (0700) if needed and write one byte in it, so a read-only or full
    directory stops a command before it changes anything at the vendor or in a store.

    :raises StateDirError: naming the directory and the system's reason.
    """
    probe = state_dir / PROBE
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise StateDirError(
            f"state_dir {state_dir} cannot be written ({exc.strerror or exc}); "
            "nothing was changed: free space or fix its permissions, or set ROTATOR_STATE_DIR"
        ) from None
