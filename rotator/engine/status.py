"""What ``rotator status`` shows: phase, ages, prefixes, fingerprints, targets in sync, and
where each write-only target and consumer stands for the key's attempt.

The rows are JSON-ready as they are (``--output json``): times in RFC 3339 with ``Z``, ages
and durations in seconds, prefixes without an ellipsis (``truncated`` says a prefix is the
start of a longer key). The text view formats them for people.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from rotator.abc import Stamp, VendorKey, parse_time
from rotator.engine.decide import adoption_attempt, when
from rotator.engine.model import Decision, Observation, Roll, attempt_of
from rotator.engine.observe import JOURNAL_MARGIN
from rotator.secret import Secret

if TYPE_CHECKING:
    from rotator.audit import Journal

IsKey = Callable[[Secret], bool]
"""True when a stored value has the issuer's public key format (its prefix may be shown)."""


def describe(
    obs: Observation,
    decision: Decision,
    *,
    is_key: IsKey | None = None,
    last_reset: Mapping[str, Any] | None = None,
    journal: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A JSON-ready view of one key. Holds ids, prefixes and fingerprints, never values.

    A stored value's prefix is shown only when it is a key the vendor lists, or has the
    issuer's key format (``is_key``); anything else (a password, a JSON document) is
    shown by its fingerprint alone. ``last_reset`` is the journal's latest ``reset`` entry
    of the key: its ``window_s`` is the time consumers could hold a dead key. ``journal``:
    the key's recent entries (:func:`recent_entries`), for when and by which attempt each
    write-only target was written.
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
        "write_only": write_only_rows(obs, journal, _current_fingerprint(targets, in_sync)),
        "consumers": consumer_rows(obs, decision),
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


# --------------------------------------------------------------------------- consumers

ConsumerState = Literal["rolled", "pending", "failed", "not-needed", "unrecorded"]
"""Where a consumer stands for the key's attempt (``consumers[].state``):

- ``rolled``: the journal shows it rolled for this attempt (``rolled_at``, vendor's clock);
- ``failed``: its last roll for this attempt failed (``error``, as journalled) and none
  succeeded since; the next pass tries again, until ``verify.timeout`` holds the key;
- ``pending``: not rolled yet for this attempt; a coming step rolls it;
- ``not-needed``: nothing to roll for: the key the targets hold was adopted, not minted (or
  reset) by the rotator, or no target holds a key yet;
- ``unrecorded``: the journal has no roll of this attempt, it is past ``verify.timeout`` and
  the old key is gone: the rotator rolls nothing on a guess (the journal was not kept).
"""


def recent_entries(journal: Journal, obs: Observation) -> list[dict[str, Any]]:
    """The key's journal entries since its oldest active vendor key was created (an hour of
    margin for clock skew, as ``observe`` reads it): those that say when each write-only target
    was written. A key without write-only targets reads nothing."""
    created = [k.created_at for k in obs.vendor if k.active]
    if not obs.write_only or not created:
        return []
    return journal.recent(obs.key, min(created) - (obs.clock_offset or timedelta(0)) - JOURNAL_MARGIN)


def write_only_rows(
    obs: Observation, journal: Sequence[Mapping[str, Any]], current: str | None
) -> list[dict[str, Any]]:
    """Each write-only target, in file order: what the journal shows last written there (the
    fingerprint ``decide`` goes by, with the attempt and time of that write) or ``None``, and
    whether that is the key ``current`` in the readable targets."""
    rows = []
    for name in obs.write_only:
        fp = obs.published.get(name)
        published = None
        if fp is not None:
            entry = next(
                (
                    e
                    for e in reversed(journal)
                    if e.get("event") == "published"
                    and (e.get("details") or {}).get("target") == name
                    and (e.get("details") or {}).get("fingerprint") == fp
                ),
                None,
            )
            published = {
                "fingerprint": fp,
                "attempt": entry.get("attempt") if entry else None,
                "at": _rfc3339(entry.get("ts")) if entry else None,
            }
        rows.append({"name": name, "published": published, "current": fp is not None and fp == current})
    return rows


def consumer_rows(obs: Observation, decision: Decision) -> list[dict[str, Any]]:
    """Each consumer, in file order: its :data:`ConsumerState` for the key's attempt, when it
    rolled and its last error (as journalled: names and fingerprints, never a value)."""
    attempt, late = _roll_attempt(obs, decision)
    rows = []
    for name in obs.consumers:
        rolled = obs.rolled.get((attempt, name)) if attempt else None
        error = obs.roll_failures.get((attempt, name)) if attempt else None
        state: ConsumerState
        if attempt is None:
            state = "not-needed"
        elif rolled is not None:
            state = "rolled"
        elif error is not None:
            state = "failed"
        else:
            state = "unrecorded" if late else "pending"
        rows.append(
            {
                "name": name,
                "state": state,
                "attempt": attempt,
                "rolled_at": when(rolled) if rolled else None,
                "error": error,
            }
        )
    return rows


def will_roll(obs: Observation, decision: Decision) -> list[str]:
    """The consumers the steps from ``decision`` on roll, in file order: all of them after a
    mint or reset (a new attempt); those pending or failed while the new key is staged,
    promoted, published or rolled; none at rest, while draining, held or failed."""
    if decision.action in ("mint", "reset"):
        return list(obs.consumers)
    if isinstance(decision, Roll):
        return [obs.consumers[i] for i in decision.consumers]
    if decision.action not in ("stage", "promote", "publish"):
        return []
    return [r["name"] for r in consumer_rows(obs, decision) if r["state"] in ("pending", "failed")]


def _roll_attempt(obs: Observation, decision: Decision) -> tuple[str | None, bool]:
    """The attempt whose consumers roll to the newest active key a target holds (as ``decide``
    finds it: the stamp's, when the rotator minted that key or reset to it; ``None`` for an
    adopted key), and whether it is too late to roll them without a record: past
    ``verify.timeout`` after its promotion with no older key left active (``decide`` then
    rolls nothing)."""
    if isinstance(decision, Roll):
        return decision.attempt, False
    active = {k.id: k for k in obs.vendor if k.active}
    held: list[tuple[VendorKey, Stamp]] = [
        (active[v.stamp.key_id], v.stamp)
        for t in obs.targets
        if t.state is not None
        for v in (t.state.current, t.state.pending)
        if v is not None and v.stamp is not None and v.stamp.key_id in active
    ]
    if not held:
        return None, False
    key = max((k for k, _ in held), key=lambda k: k.created_at)
    stamps = [s for k, s in held if k.id == key.id]
    attempt = stamps[0].attempt
    if obs.strategy == "cutover":
        minted = attempt != adoption_attempt(key.id)
    else:
        minted = attempt_of(obs.key, key) == attempt
    if not minted:
        return None, False
    promoted = [s.promoted_at for s in stamps if s.promoted_at is not None]
    now = obs.now + (obs.clock_offset or timedelta(0))  # promoted_at is in the vendor's clock
    older = any(k.created_at < key.created_at for k in active.values())
    late = bool(promoted) and now >= min(promoted) + obs.policy.timeout and not older
    return attempt, late


def _current_fingerprint(targets: list[dict[str, Any]], in_sync: bool) -> str | None:
    """The fingerprint current in every readable target; when they differ, the newest promoted."""
    if in_sync:
        return str(targets[0]["current"]["fingerprint"])
    return _newest(targets)
