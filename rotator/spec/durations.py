"""Durations as a rotation file spells them: ``15m``, ``2h30m``, ``30d``, ``500ms`` or seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=3650)
"""The longest duration a rotation file may give (ten years); beyond it is a typo."""


def _bounded(seconds: float, value: object) -> timedelta:
    if math.isnan(seconds):
        raise ValueError("a duration like 15m, 24h or 30d")
    if seconds > MAX_DURATION.total_seconds():
        shown = value if isinstance(value, int | float) else repr(value)
        raise ValueError(f"{shown} is longer than the 3650d (10 years) a duration may be")
    return timedelta(seconds=seconds)


def parse_duration(value: object) -> timedelta:
    """``15m``, ``2h30m``, ``30d``, ``500ms`` or a number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration like 15m, 24h or 30d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _bounded(value, value)
    if not isinstance(value, str):
        raise ValueError("a duration like 15m, 24h or 30d")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"{value!r} is not a duration like 15m, 24h or 30d")
    return _bounded(total, value)


def format_duration(value: timedelta) -> str:
    """Shortest unit spelling of a timedelta: ``90s`` -> ``1m30s``."""
    seconds = value.total_seconds()
    if seconds < 1 and seconds:
        return f"{round(seconds * 1000)}ms"
    out, rest = [], int(seconds)
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        assert isinstance(size, int)
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
