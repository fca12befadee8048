"""Cron schedules of keys: standard 5-field expressions (UTC), read by APScheduler."""

from __future__ import annotations

from typing import Any

CRON_FIELDS = r"^\s*\S+(\s+\S+){4}\s*$"
"""The shape of a cron expression (five fields), for the JSON Schema; validation parses it."""

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_weekdays(field: str) -> str:
    """Standard cron's day-of-week field (0 or 7 = Sunday) spelled with names.

    APScheduler 3 reads numeric weekdays with 0 = Monday, so ``0 3 * * 0`` would fire on
    Mondays; names mean the same to both.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            lo, hi = 0, 6
        else:
            first, _, last = span.partition("-")
            lo = _weekday(first)
            hi = _weekday(last) if last else (6 if step_text else lo)
            if last and last.strip() == "7":
                hi = 7
        if step < 1 or hi < lo:
            raise ValueError(f"bad day-of-week {part!r}")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


def _weekday(text: str) -> int:
    text = text.strip()
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7 if text != "7" else 0
    if text[:3] in _WEEKDAYS:
        return _WEEKDAYS.index(text[:3])
    raise ValueError(f"bad day-of-week {text!r}")


def cron_trigger(expr: str) -> Any:
    """An APScheduler ``CronTrigger`` (UTC) for a standard 5-field cron expression."""
    from apscheduler.triggers.cron import CronTrigger  # only files with a schedule pay for it

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=_cron_weekdays(weekday), timezone="UTC"
    )


def check_cron(expr: str) -> None:
    """Raise ValueError naming ``expr`` unless it parses and fires at some date."""
    from datetime import UTC, datetime

    try:
        trigger = cron_trigger(expr)
    except ValueError as exc:
        raise ValueError(f"{expr!r} is not a 5-field cron expression ({exc})") from None
    # "0 0 31 2 *" parses, then never fires: the key would silently rotate on max_age alone
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError(f"{expr!r} never fires (no date matches it)")
