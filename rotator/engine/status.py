"""What ``rotator status`` shows: phase, ages, prefixes, fingerprints, targets in sync."""

from __future__ import annotations

from typing import Any

from rotator.engine.decide import when
from rotator.engine.model import Decision, Observation
from rotator.secret import Secret
from rotator.spec import format_duration


def describe(obs: Observation, decision: Decision) -> dict[str, Any]:
    """A JSON-ready view of one key. Holds ids, prefixes and fingerprints, never values."""
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
                        "prefix": _prefix(obs, v.value, n),
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
            "prefix": k.prefix + "…",
            "status": k.status,
            "age": format_duration(obs.now - k.created_at),
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
    }


def _newest(targets: list[dict[str, Any]]) -> str | None:
    stamped = [r["current"] for r in targets if r.get("current") and r["current"]["promoted_at"]]
    if not stamped:
        return None
    return str(max(stamped, key=lambda c: c["promoted_at"])["fingerprint"])


def _prefix(obs: Observation, value: Secret, n: int) -> str:
    """The vendor's prefix of the key a stored value is (for IAM, the access key id, not the
    start of a JSON text); the value's first characters when the vendor does not know it."""
    owners = (obs.owners or {}).get(value.fingerprint, ())
    for k in obs.vendor:
        if k.id in owners:
            return k.prefix + "…"
    return value.prefix(n) + "…"
