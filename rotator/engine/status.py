"""What ``rotator status`` shows: phase, ages, prefixes, fingerprints, targets in sync.

The rows are JSON-ready as they are (``--output json``): times in RFC 3339 with ``Z``, ages
and durations in seconds, prefixes without an ellipsis (``truncated`` says a prefix is the
start of a longer key). The text view formats them for people.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from rotator.abc import VendorKey, parse_time
from rotator.engine.decide import when
from rotator.engine.model import Decision, Observation
from rotator.secret import Secret

IsKey = Callable[[Secret], bool]
"""True when a stored value has the issuer's public key format (its prefix may be shown)."""


def describe(
    obs: Observation,
    decision: Decision,
    *,
    is_key: IsKey | None = None,
    last_reset: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-ready view of one key. Holds ids, prefixes and fingerprints, never values.

    A stored value's prefix is shown only when it is a key the vendor lists, or has the
    issuer's key format (``is_key``); anything else (a password, a JSON document) is
    shown by its fingerprint alone. ``last_reset`` is the journal's latest ``reset`` entry
    of the key: its ``window_s`` is the time consumers could hold a dead key.
    """
    n = obs.capabilities.prefix_len
    targets = []
    for t in obs.targets:
        row: dict[str, Any] = {"name": t.name, "error": t.error}
        if t.state is not None:
            for slot in ("current", "pending"):
                v = getattr(t.state, slot)
                row[slot] = (
                    None
                    if v is None
                    else {
                        **_prefix(obs, v.value, n, is_key),
                        "fingerprint": v.fingerprint,
                        "broken": v.fingerprint in obs.rejected,
                        "attempt": v.stamp.attempt if v.stamp else None,
                        "promoted_at": when(v.stamp.promoted_at) if v.stamp and v.stamp.promoted_at else None,
                    }
                )
        targets.append(row)
    currents = {r["current"]["fingerprint"] for r in targets if r.get("current")}
    in_sync = len(currents) == 1 and all(r.get("current") for r in targets)
    keys = [
        {
            "id": k.id,
            "prefix": k.prefix,
            "truncated": True,
            "status": k.status,
            "created_at": when(k.created_at),
            "age_s": round((obs.now - k.created_at).total_seconds(), 3),
            "last_used_at": when(k.last_used_at) if k.last_used_at else None,
        }
        for k in sorted(obs.vendor, key=lambda k: k.created_at, reverse=True)
        if k.active
    ]
    lagging = [
        r["name"]
        for r in targets
        if r["error"]
        or not r.get("current")
        or (in_sync is False and r["current"]["fingerprint"] != _newest(targets))
    ]
    cutover = None
    if last_reset is not None:
        details = last_reset.get("details", {})
        cutover = {"reset_at": _rfc3339(last_reset.get("ts")), "window_s": details.get("window_s")}
    return {
        "key": obs.key,
        "phase": decision.phase,
        "next": decision.action,
        "reason": decision.reason,
        "until": when(decision.until) if decision.until else None,
        "strategy": obs.strategy,
        "vendor_keys": keys,
        "targets": targets,
        "in_sync": in_sync,
        "lagging": [] if in_sync else lagging,
        "last_cutover": cutover,
    }


def _rfc3339(ts: object) -> str | None:
    """A journal time (RFC 3339 with microseconds) in the seconds form every output uses."""
    if not isinstance(ts, str):
        return None
    return when(parse_time(ts))


def _newest(targets: list[dict[str, Any]]) -> str | None:
    stamped = [r["current"] for r in targets if r.get("current") and r["current"]["promoted_at"]]
    if not stamped:
        return None
    return str(max(stamped, key=lambda c: c["promoted_at"])["fingerprint"])


def _prefix(obs: Observation, value: Secret, n: int, is_key: IsKey | None) -> dict[str, Any]:
    """The vendor's prefix of the key a stored value is (for IAM, the access key id, not the
    start of a JSON text); the value's first characters only when it has the issuer's key
    format; else no prefix at all."""
    owners = (obs.owners or {}).get(value.fingerprint, ())
    for k in obs.vendor:
        if k.id in owners:
            return {"prefix": k.prefix, "truncated": True}
    if is_key is not None and is_key(value):
        return {"prefix": value.prefix(n), "truncated": len(value.prefix(n + 1)) > n}
    return {"prefix": None, "truncated": False}


def key_format_check(matches: Callable[[Secret, VendorKey], bool], n: int) -> IsKey:
    """An :data:`IsKey` from an issuer's ``matches``: a value has the key format when the
    issuer would match it to a key listed under the value's own first ``n`` characters."""

    def is_key(value: Secret) -> bool:
        listed = VendorKey("", value.prefix(n), "", "active", datetime.now(UTC))
        return matches(value, listed)

    return is_key
