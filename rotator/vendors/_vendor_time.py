"""The vendor's clock, learnt from the ``Date`` header of its answers.

The drain compares the vendor's ``last_used_at`` with our ``promoted_at``; both must be
read in one clock, so each answer's ``Date`` gives a sample of vendor time minus ours.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

CLOCK_STEP = timedelta(seconds=2)
"""A ``Date`` sample this far from the offset known means a clock was set: start again."""


class DateOffset:
    """Vendor time minus ours, from ``Date`` samples; ``clock`` is our time."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._offset: timedelta | None = None

    def now(self) -> datetime | None:
        """The vendor's time now; ``None`` before any answer carried a ``Date``."""
        offset = self._offset
        return None if offset is None else self._clock() + offset

    def learn(self, date: str | None) -> None:
        """Record one answer's ``Date``. The header has whole seconds and is stamped before
        the answer travels, so each sample is at most the true offset: keep the largest,
        unless a sample moved by more than a second or two (a clock was set). A missing or
        unreadable header teaches nothing."""
        if not date:
            return
        try:
            vendor = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return
        if vendor.tzinfo is None:
            vendor = vendor.replace(tzinfo=UTC)
        sample = vendor - self._clock()
        known = self._offset
        if known is None or abs(sample - known) > CLOCK_STEP:
            self._offset = sample
        else:
            self._offset = max(known, sample)
