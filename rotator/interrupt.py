"""Ctrl-C and SIGTERM for a pass run at a terminal (``apply``, ``rotate``): the step in hand
finishes, no further step is taken, the lease is released and the command ends at once.

Python turns SIGINT into ``KeyboardInterrupt`` in the main thread only, while the keys are
reconciled in worker threads; left alone, the interpreter then waits for those workers, which
carry on to the end of their drain (and revoke). Here the signals just set the engine's
``stopping`` event, which every wait of the engine watches.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Caught:
    """The first stop signal received, if any."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a command a signal ended (130, 143)."""
        return 128 + (self.signum or 0)


@contextmanager
def stop_on_signals(stopping: threading.Event) -> Iterator[Caught]:
    """Within the block, SIGINT and SIGTERM set ``stopping`` instead of interrupting.

    Outside the main thread (where no handler can be installed) the block runs unchanged.
    """
    caught = Caught()

    def handler(signum: int, frame: FrameType | None) -> None:
        if caught.signum is None:
            caught.signum = signum
        stopping.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
