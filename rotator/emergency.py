"""``rotator emergency``: after a leak, shut the door first.

Following the vendors' leak procedure: revoke the leaked key at once, then mint, roll out
to every target and audit the vendor's trace chain for the exposure window. With
``keep_serving`` the order is mint, roll out, then revoke seconds later: a short exposure
instead of an outage. A reset-only vendor revokes and mints in one call (the reset). Every
write goes through the engine's act path (``Engine.act``; ``RevokeLeaked`` for the revoke).

Everything here is reached only by the emergency path; it imports no cloud SDK a target of
the key does not use (providers import their SDK when the store is opened).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rotator.abc import ChainAuditing, VendorKey, format_time, parse_time
from rotator.engine.model import RevokeLeaked
from rotator.engine.runner import Engine, KeyResult
from rotator.errors import ConfigError, RotatorError

log = logging.getLogger("rotator.emergency")

REPEAT_WINDOW = timedelta(hours=1)
"""A second emergency this soon after one that minted the key now current must name the
leaked key (``--key-id``): without it, it would revoke the key the first one just minted."""
CLOCK_MARGIN = timedelta(minutes=10)
"""How far the vendor's clock (a key's ``created_at``) may be from ours for that check."""


@dataclass
class EmergencyReport:
    """What happened, for the incident record. Ids, prefixes and fingerprints only."""

    key: str
    reason: str
    order: str
    leaked_key_id: str | None = None
    leaked_prefix: str | None = None
    leaked_since: str | None = None
    revoked_at: str | None = None
    time_to_revoke_s: float | None = None
    total_s: float | None = None
    new_key_id: str | None = None
    new_prefix: str | None = None
    new_fingerprint: str | None = None
    targets: list[str] = field(default_factory=list)
    outcome: str = "failed"
    message: str = ""
    chain_valid: bool | None = None
    chain_checked: int | None = None
    chain_first_invalid: int | None = None
    leaked_key_traces: int | None = None
    traces_by_key: dict[str, int] = field(default_factory=dict)
    consumers_rolled: list[str] = field(default_factory=list)
    """The consumers rolled to the new key in this emergency, in order."""
    outage_s: float | None = None
    """From the revoke to the last consumer rolled: the longest a consumer that reads its key
    once held a dead key (0 when they were rolled before the revoke); ``None`` without consumers."""
    report_path: str | None = None


def _leaked_key(engine: Engine, key: str, key_id: str | None) -> tuple[VendorKey, datetime | None]:
    """The key to revoke, and when it was promoted (the default start of the exposure)."""
    issuer = engine.issuer(key)
    listed = [k for k in issuer.list_keys() if k.active]
    if key_id is not None:
        chosen = [k for k in listed if k.id == key_id]
        if not chosen:
            raise RotatorError(f"{key}: no active vendor key with id {key_id!r}")
        return chosen[0], None
    if len(listed) == 1 and issuer.capabilities.overlap:
        # the common case, decided from the vendor's list alone: no store read before the revoke
        return listed[0], None
    obs = engine.observe(key)
    current = {
        t.state.current.fingerprint: t.state.current
        for t in obs.targets
        if t.state is not None and t.state.current is not None
    }
    owners = obs.owners or {}
    for fp, version in current.items():
        for k in listed:
            if k.id in owners.get(fp, ()):
                promoted = version.stamp.promoted_at if version.stamp else None
                return k, promoted
    if not listed:
        raise RotatorError(f"{key}: the vendor lists no active key to revoke")
    raise RotatorError(
        f"{key}: {len(listed)} active keys and none is current in a target; name the leaked one with --key-id"
    )


def run_emergency(
    engine: Engine,
    key: str,
    *,
    reason: str,
    leaked_since: datetime | None = None,
    keep_serving: bool = False,
    key_id: str | None = None,
    started: float | None = None,
    lock_timeout: timedelta = timedelta(0),
    warn: Callable[[str], None] | None = None,
) -> EmergencyReport:
    """Revoke ``key``'s leaked vendor key, mint and roll out a new one, audit, report.

    ``warn`` gets a line for each option that cannot apply, once the run is sure to proceed.
    """
    t0 = started if started is not None else time.monotonic()
    _check_input(engine, reason, leaked_since)
    own_key = key in engine.credential_keys()
    issuer = engine.issuer(key)
    reset_vendor = not issuer.capabilities.overlap
    # A management key that revokes itself first cannot mint its successor afterwards.
    serve_first = keep_serving or own_key
    order = "reset" if reset_vendor else ("mint-then-revoke" if serve_first else "revoke-first")
    report = EmergencyReport(key=key, reason=reason, order=order)
    with engine.take_lease(key, lock_timeout):
        leaked, promoted = _leaked_key(engine, key, key_id)
        if key_id is None:
            _refuse_repeat(engine, key, leaked)
        if keep_serving and warn is not None and (why := keep_serving_ignored(engine, key)):
            warn(why)
        engine.journal.append("emergency-started", key=key, reason=reason, order=order)
        report.leaked_key_id, report.leaked_prefix = leaked.id, leaked.prefix
        since = leaked_since or promoted or leaked.created_at
        report.leaked_since = format_time(since)

        revoked: float | None = None
        if reset_vendor:
            result = engine.reconcile_locked(key, force=True, emergency=True)
            revoked = _revoked(report, engine, key, leaked, t0, at=result.reset_at)
        elif serve_first:
            result = engine.reconcile_locked(key, force=True, stop_before=("revoke",), emergency=True)
            if result.outcome in ("ok", "waiting"):  # the new key is current everywhere
                engine.act(key, RevokeLeaked(leaked.id))
                revoked = _revoked(report, engine, key, leaked, t0)
                result = engine.reconcile_locked(key, emergency=True)
        else:
            engine.act(key, RevokeLeaked(leaked.id))
            revoked = _revoked(report, engine, key, leaked, t0)
            result = engine.reconcile_locked(key, emergency=True)
        _finish(report, engine, key, result)
        _outage(report, engine, key, revoked)
        _audit_chain(report, engine, key, since)
        report.total_s = round(time.monotonic() - t0, 3)
        report.report_path = str(_write_report(engine.state_dir, report))
        engine.journal.append(
            "emergency-complete",
            key=key,
            outcome=report.outcome,
            time_to_revoke_s=report.time_to_revoke_s,
            report=report.report_path,
        )
    return report


def keep_serving_ignored(engine: Engine, key: str) -> str | None:
    """Why ``--keep-serving`` cannot apply to ``key`` (a reset-only vendor), else ``None``."""
    if engine.issuer(key).capabilities.overlap:
        return None
    return (
        f"{key}: --keep-serving cannot apply: its vendor revokes the old key the moment it resets "
        "it, so there is no overlap to roll out in first; the emergency is an immediate reset "
        "instead, and consumers fail until they read the new key"
    )


def _check_input(engine: Engine, reason: str, leaked_since: datetime | None) -> None:
    """Refuse, before anything is touched, what would make the incident record wrong."""
    if not reason.strip():
        raise ConfigError(
            "--reason is empty: say why the key is revoked (it goes into the journal and the incident report)"
        )
    now = engine.clock()
    if leaked_since is not None and leaked_since > now:
        raise ConfigError(
            f"--leaked-since {format_time(leaked_since)} is in the future (now {format_time(now)}): "
            "give the earliest time the key may have leaked"
        )


def _refuse_repeat(engine: Engine, key: str, leaked: VendorKey) -> None:
    """Refuse to revoke a key an emergency minted within :data:`REPEAT_WINDOW` unless named."""
    since = engine.clock() - REPEAT_WINDOW
    if leaked.created_at < since - CLOCK_MARGIN:
        return  # created (by the vendor's clock) before any emergency of the window began
    started = _minted_by_emergency(engine.journal.recent(key, since)).get(leaked.id)
    if started is None:
        return
    raise ConfigError(
        f"{key}: the current key {leaked.id} ({leaked.prefix}…) was minted by the emergency "
        f"started at {started}; not revoking it on a guess. Name the leaked key with --key-id "
        f"(--key-id {leaked.id} if this one leaked too)"
    )


def _minted_by_emergency(entries: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Vendor key id -> start time of the emergency that minted it (journal entries, in order)."""
    minted: dict[str, str] = {}
    started: str | None = None
    for entry in entries:
        event = entry.get("event")
        if event == "emergency-started":
            started = str(entry.get("ts"))
        elif event == "emergency-complete":
            started = None
        elif event in ("minted", "reset") and started is not None:
            key_id = (entry.get("details") or {}).get("key_id")
            if isinstance(key_id, str):
                minted[key_id] = started
    return minted


def _revoked(
    report: EmergencyReport, engine: Engine, key: str, leaked: VendorKey, t0: float, at: float | None = None
) -> float:
    """Record the revoke; ``at`` is when it happened if earlier than now (a reset's answer).
    Returns that instant (``time.monotonic()``)."""
    at = at if at is not None else time.monotonic()
    report.time_to_revoke_s = round(at - t0, 3)
    report.revoked_at = format_time(engine.clock())
    engine.journal.append(
        "emergency-revoked",
        key=key,
        key_id=leaked.id,
        prefix=leaked.prefix,
        time_to_revoke_s=report.time_to_revoke_s,
    )
    return at


def _outage(report: EmergencyReport, engine: Engine, key: str, revoked: float | None) -> None:
    """The consumers rolled to the new key, and the outage: from the revoke to the last roll."""
    if revoked is None or report.new_key_id is None or not engine.spec.keys[key].consumers:
        return
    now = datetime.now(UTC)
    revoked_at = now - timedelta(seconds=time.monotonic() - revoked)  # the journal's clock
    rolled = [
        e
        for e in engine.journal.recent(key, revoked_at - CLOCK_MARGIN)
        if e.get("event") == "rolled" and (e.get("details") or {}).get("key_id") == report.new_key_id
    ]
    report.consumers_rolled = [str(e["details"].get("consumer")) for e in rolled]
    if rolled:
        last = max(parse_time(str(e["ts"])) for e in rolled)
        report.outage_s = round(max(0.0, (last - revoked_at).total_seconds()), 3)


def _finish(report: EmergencyReport, engine: Engine, key: str, result: KeyResult) -> None:
    report.outcome, report.message = result.outcome, result.message
    if result.outcome != "ok":
        return
    obs = engine.observe(key)
    owners = obs.owners or {}
    currents = [t.state.current for t in obs.targets if t.state is not None and t.state.current]
    report.targets = [t.name for t in obs.targets]
    if currents:
        fp = currents[0].fingerprint
        report.new_fingerprint = fp
        for k in obs.vendor:
            if k.id in owners.get(fp, ()) and k.active:
                report.new_key_id, report.new_prefix = k.id, k.prefix
    if report.revoked_at is None:
        report.outcome, report.message = "failed", "the leaked key was not revoked"


def _audit_chain(report: EmergencyReport, engine: Engine, key: str, since: datetime) -> None:
    issuer = engine.issuer(key)
    if not isinstance(issuer, ChainAuditing):
        return  # the vendor has no trace chain to audit
    try:
        chain = issuer.verify_chain(since, engine.clock())
    except RotatorError as exc:
        log.warning("%s: chain audit failed: %s", key, exc)
        report.message += f"; chain audit failed: {exc}"
        return
    report.chain_valid, report.chain_checked = chain.valid, chain.checked
    report.chain_first_invalid = chain.first_invalid
    report.traces_by_key = dict(chain.traces_by_key)
    report.leaked_key_traces = chain.traces_by_key.get(report.leaked_key_id or "", 0)


def _write_report(state_dir: Path, report: EmergencyReport) -> Path:
    folder = state_dir / "incidents"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = (report.revoked_at or format_time(datetime.now().astimezone())).replace(":", "")
    path = folder / f"{stamp}-{report.key}.json"
    data: dict[str, Any] = asdict(report)
    data["report_path"] = str(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
    return path
