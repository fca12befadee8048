"""A test hook: die by SIGKILL at a named step boundary, to prove crash safety.

Set ``ROTATOR_CRASH_AT`` to one of :data:`CHECKPOINTS` (optionally ``name@key`` to limit
it to one key, and ``name#n`` to die the n-th time this process reaches it, e.g. after the
second consumer's roll: ``after-roll#2``). Nothing happens when it is unset, which is always
the case in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

CHECKPOINTS = (
    "after-mint",  # minted at the vendor, nothing stored yet (an orphan if we die)
    "after-stage-first",  # durable in the first target
    "after-stage",  # staged in every target
    "after-promote",  # current everywhere, old key still active
    "before-publish",  # current in every readable target, write-only targets not yet written
    "after-publish",  # written to the write-only targets and journalled
    "before-roll",  # a consumer about to be rolled (a kill here: it is rolled again next pass)
    "after-roll",  # a consumer rolled and journalled: never rolled again for this attempt
    "after-revoke",  # old key revoked
    "before-reset",  # cutover: attempt on record, reset not sent
    "after-reset",  # cutover: old key revoked by the vendor, new value only in memory
)


_hooks: dict[str, list[Callable[[str], None]]] = {}
_reached: dict[str, int] = {}


@contextlib.contextmanager
def hooked(name: str, hook: Callable[[str], None]) -> Iterator[None]:
    """In-process tests: call ``hook(key)`` at checkpoint ``name`` while the block runs (to
    break a store at an exact instant, e.g. right after a reset)."""
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}")
    _hooks.setdefault(name, []).append(hook)
    try:
        yield
    finally:
        _hooks[name].remove(hook)


def checkpoint(name: str, key: str) -> None:
    """Run the hooks of this checkpoint; SIGKILL this process if ``ROTATOR_CRASH_AT`` names it."""
    for hook in list(_hooks.get(name, ())):
        hook(key)
    wanted = os.environ.get("ROTATOR_CRASH_AT")
    if not wanted:
        return
    point, _, only = wanted.partition("@")
    point, _, nth = point.partition("#")
    if point != name or (only and only != key):
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
