"""A test hook: die by SIGKILL at a named step boundary, to prove crash safety.

Set ``ROTATOR_CRASH_AT`` to one of :data:`CHECKPOINTS` (optionally ``name@key`` to limit
it to one key). Nothing happens when it is unset, which is always the case in production.
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
    "after-revoke",  # old key revoked
    "before-reset",  # cutover: attempt on record, reset not sent
    "after-reset",  # cutover: old key revoked by the vendor, new value only in memory
)


_hooks: dict[str, list[Callable[[str], None]]] = {}


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
    if point == name and (not only or only == key):
        os.kill(os.getpid(), signal.SIGKILL)
