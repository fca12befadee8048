"""One rate budget per vendor, shared by every worker of the process.

A fleet pass runs many workers against one vendor; each alone would meet a rate limit (429)
only by hitting it, and all together would keep hitting it. :class:`RateBudget` paces them as
one client, in the manner of TCP's congestion control (AIMD):

- until the vendor first answers 429, requests are not paced at all;
- a 429 pauses **every** worker until its ``Retry-After`` has passed (1 s when it gives none),
  and cuts the pace to half the rate requests were sent at over the last second (never below
  :data:`FLOOR`); the other 429s of the same burst (requests paced before that cut, or
  answered before any success at the new pace within a second of it) pause again but cut
  no further;
- each success raises the pace a little (by about ``max(1, 10 %)`` of it per second of
  successes), so the pace climbs back towards the vendor's limit and follows it if it moves.

The budget only says how long to wait before a request: the caller sleeps (its own sleep, so a
test's fake sleep stays fake). It holds no secret and no connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

LOG = logging.getLogger("rotator.vendors")

FLOOR = 1.0
"""The slowest pace, in requests per second: below it the vendor's ``Retry-After`` paces."""
CUT = 0.5
"""A 429 cuts the pace to this share of the recent send rate."""
WINDOW = 1.0
"""Seconds over which the send rate is measured when a 429 comes."""
PAUSE = 1.0
"""How long a 429 without ``Retry-After`` pauses every worker."""
GROWTH, STEP = 0.1, 1.0
"""Per second of successes the pace grows by ``max(STEP, GROWTH * pace)``."""


class RateBudget:
    """The pace of requests to one vendor, shared by every worker (thread-safe)."""

    def __init__(self, name: str = "vendor", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._rate: float | None = None
        self._next = 0.0
        self._paused_until = 0.0
        self._cuts = 0
        self._cut_at = float("-inf")
        self._tested = True
        """A success came since the last cut: the new pace was tried."""
        self._sent: deque[float] = deque()

    @property
    def rate(self) -> float | None:
        """Requests per second now allowed; ``None`` while unpaced (no 429 seen)."""
        return self._rate

    def reserve(self, *, paused: bool = True) -> tuple[float, int]:
        """Take the next slot: ``(seconds to wait before sending, the pace it was given)``.

        The second value goes back to :meth:`limited` if the vendor answers 429.
        ``paused=False`` for the retry of a request that was answered 429 itself and has
        waited out its ``Retry-After``: it is paced but not paused again."""
        with self._lock:
            now = self._clock()
            at = max(now, self._paused_until) if paused else now
            if self._rate is not None:
                at = max(at, self._next)
                self._next = at + 1.0 / self._rate
            self._sent.append(at)
            while self._sent and self._sent[0] < now - WINDOW:
                self._sent.popleft()
            return at - now, self._cuts

    def limited(self, pace: int, retry_after: float | None) -> None:
        """A request given ``pace`` by :meth:`reserve` was answered 429 (with ``retry_after``)."""
        with self._lock:
            now = self._clock()
            pause = PAUSE if retry_after is None else retry_after
            self._paused_until = max(self._paused_until, now + pause)
            if pace != self._cuts or (not self._tested and now - self._cut_at < WINDOW):
                return  # the same burst as the last cut, already paid for
            recent = sum(1 for t in self._sent if now - WINDOW <= t <= now) / WINDOW
            base = recent if self._rate is None else min(self._rate, recent)
            self._rate = max(FLOOR, base * CUT)
            self._cuts += 1
            self._cut_at, self._tested = now, False
            rate = self._rate
        LOG.info("%s: the vendor limits requests (429); pacing at %.1f requests/s", self.name, rate)

    def succeeded(self, pace: int) -> None:
        """A request given ``pace`` was answered (neither 429 nor 5xx): the pace may grow."""
        with self._lock:
            self._tested = self._tested or pace == self._cuts
            if self._rate is not None:
                self._rate += max(STEP, GROWTH * self._rate) / self._rate
