"""Decide the next safe step for one key from an observation alone (no I/O).

The rules, in the order they are tried, keep DESIGN.md's invariants:

overlap (two keys may be active):
  1. a target that cannot be read stops the pass: nothing is minted or revoked blind;
  2. an active key the rotator minted that no target holds, newer than every stored key,
     is an orphan (minted, then the process died before storing it) only when the journal
     shows no write of its attempt to any target and the vendor shows no use since its mint:
     revoke it. Otherwise it was stored once and a target was renamed or its secret deleted:
     hold for a person, never revoke a key consumers may still use;
  3. the newest stored key the vendor still accepts is the desired one: stage it where it is
     missing, then promote it where it is not current, or where a promote was cut short (the
     probe happens before promoting);
  4. once it is current everywhere, an older active key drains: revoke it when its
     ``last_used_at`` has stayed before ``promoted_at + propagation`` for ``drain``; hold
     at ``timeout`` (or revoke if the file says ``on_timeout: revoke``);
  5. otherwise the key is due (age, schedule, or a person asked) or current.

Every time is judged in the vendor's clock (``Observation.clock_offset``): ``promoted_at`` is
stamped in it and compared with the vendor's ``last_used_at``; ``until`` is handed back in ours.

cutover (a reset revokes the old key at once):
  the vendor's one key must be in every target; if no target holds it and the stored key is
  rejected, a reset's value was lost: hold with recovery steps, never reset again blindly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from rotator.abc import Stamp, StoredVersion, TargetState, VendorKey
from rotator.engine.model import Decision, Observation, Phase, attempt_of
from rotator.secret import Secret
from rotator.spec import format_duration

_ADOPT_NS = uuid.UUID("0f0c4d47-6b43-4a0e-9f7e-5d8a3c2e1b90")


def adoption_attempt(key_id: str) -> str:
    """A stable attempt id (UUID) for stamping a key the rotator adopted instead of minting."""
    return str(uuid.uuid5(_ADOPT_NS, key_id))


def show(key: VendorKey) -> str:
    """How messages name a vendor key: id and prefix, never more."""
    return f"{key.id} ({key.prefix}…)"


def when(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def decide(obs: Observation) -> Decision:
    """The next step for ``obs.key``; see the module docstring for the rules."""
    broken = [t for t in obs.targets if t.state is None]
    if broken:
        # a store's own errors already start with its name
        names = "; ".join(
            t.error if t.error and t.error.startswith(f"{t.name}: ") else f"{t.name}: {t.error}"
            for t in broken
        )
        return Decision("fail", "failed", f"cannot read {len(broken)} target(s), acting on none: {names}")
    offset = obs.clock_offset
    if not offset:
        return _decide_cutover(obs) if obs.strategy == "cutover" else _decide_overlap(obs)
    # one clock, the vendor's: promoted_at is stamped in it and compared with its last_used_at
    seen = replace(obs, now=obs.now + offset)
    d = _decide_cutover(seen) if obs.strategy == "cutover" else _decide_overlap(seen)
    return d if d.until is None else replace(d, until=d.until - offset)  # callers sleep in ours


# --------------------------------------------------------------------------- helpers


def _states(obs: Observation) -> list[TargetState]:
    return [t.state for t in obs.targets if t.state is not None]


def _versions(state: TargetState) -> Iterable[StoredVersion]:
    return (v for v in (state.current, state.pending) if v is not None)


def _key_for(obs: Observation, value: Secret, stamp: Stamp | None) -> VendorKey | None:
    """The vendor key a stored value is: by its stamp's key id among the keys it matches,
    else the newest active match."""
    matches = [k for k in obs.vendor if _matches(obs, value, k)]
    if stamp is not None:
        for k in matches:
            if k.id == stamp.key_id:
                return k
    matches.sort(key=lambda k: (not k.active, -k.created_at.timestamp()))
    return matches[0] if matches else None


def _matches(obs: Observation, value: Secret, key: VendorKey) -> bool:
    if value.fingerprint in obs.rejected:  # the vendor rejects it: broken, never adopted
        return False
    if obs.owners is None:
        return value.prefix(obs.capabilities.prefix_len) == key.prefix
    return key.id in obs.owners.get(value.fingerprint, ())


def _revisions(states: list[TargetState], targets: tuple[int, ...]) -> tuple[str | None, ...]:
    """The revisions the decision saw, so a write made since is caught as a conflict."""
    return tuple(states[i].revision for i in targets)


def _holds(state: TargetState, fp: str) -> bool:
    return any(v.fingerprint == fp for v in _versions(state))


def _is_current(state: TargetState, fp: str) -> bool:
    return state.current is not None and state.current.fingerprint == fp


def _cut_short(state: TargetState, fp: str, attempt: str | None) -> bool:
    """A promote of ``attempt`` that died half-way in this target: the value is current, but
    still pending too, or current without its ``promoted_at``. Promoting again finishes it."""
    if attempt is None:
        return False
    pending, current = state.pending, state.current
    if pending is not None and pending.fingerprint == fp and pending.stamp is not None:
        return pending.stamp.attempt == attempt
    return (
        current is not None
        and current.fingerprint == fp
        and current.stamp is not None
        and current.stamp.attempt == attempt
        and current.stamp.promoted_at is None
    )


def _stamped(version: StoredVersion, key: VendorKey) -> StoredVersion:
    """The version to stage elsewhere: same value, its stamp without promoted_at."""
    stamp = version.stamp
    if stamp is None:  # adopted: stamped from now on
        stamp = Stamp(key.id, version.fingerprint, adoption_attempt(key.id))
    return StoredVersion(
        version.version, version.value, Stamp(stamp.key_id, stamp.fingerprint, stamp.attempt)
    )


def _due_reason(obs: Observation, key: VendorKey) -> str | None:
    if obs.force:
        return "a rotation was requested"
    age = obs.now - key.created_at
    if age >= obs.max_age:
        return f"key is {format_duration(age)} old (max_age {format_duration(obs.max_age)})"
    fire = obs.next_schedule_fire
    if fire is not None and fire <= obs.now:
        return f"schedule fired at {when(fire)}"
    return None


def _steady(obs: Observation, key: VendorKey, action: str) -> Decision:
    reason = _due_reason(obs, key)
    if reason is None:
        due_at = key.created_at + obs.max_age
        if obs.next_schedule_fire is not None:
            due_at = min(due_at, obs.next_schedule_fire)
        return Decision(
            "done",
            "current",
            f"{show(key)} is current everywhere; next due {when(due_at)}",
            until=due_at,
            key_id=key.id,
        )
    return Decision(action, "due", reason, key_id=key.id)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- overlap


def _decide_overlap(obs: Observation) -> Decision:
    states = _states(obs)
    active = [k for k in obs.vendor if k.active]
    stored: list[tuple[VendorKey, StoredVersion]] = []
    for state in states:
        for v in _versions(state):
            k = _key_for(obs, v.value, v.stamp)
            if k is not None:
                stored.append((k, v))
    referenced = {k.id for k, _ in stored}
    # the keys broken values claim by prefix: being replaced, not renamed away
    referenced |= {i for fp in obs.rejected for i in (obs.owners or {}).get(fp, ())}
    newest_stored = max((k.created_at for k, _ in stored), default=None)

    unheld = _unheld(obs, active, referenced, newest_stored)
    if unheld is not None:
        return unheld

    live = [(k, v) for k, v in stored if k.active]
    if not live:
        if len(active) >= obs.capabilities.max_active:
            names = ", ".join(show(k) for k in active)
            return Decision(
                "hold",
                "held",
                f"no target holds a working key and the scope already has {len(active)} active "
                f"keys the rotator does not hold ({names}); not minting around them",
            )
        held = [v for s in states for v in _versions(s)]
        broken = [
            t.name
            for t in obs.targets
            if t.state is not None and any(v.fingerprint in obs.rejected for v in _versions(t.state))
        ]
        if broken:
            why = (
                f"the value stored in {', '.join(broken)} is broken: it has a key's prefix but "
                "the vendor rejects it; minting a replacement"
            )
        elif held:
            why = "the stored key is unknown to or revoked by the vendor"
        else:
            why = "first run: no target holds a key"
        return Decision("mint", "due", why)

    # A copy stamped for the key beats an unstamped copy of the same key: a promote cut short
    # (a file written, its stamp not yet) leaves the value current but unstamped in one target.
    new_key, new_version = max(
        live, key=lambda kv: (kv[0].created_at, kv[1].stamp is not None and kv[1].stamp.key_id == kv[0].id)
    )
    fp = new_version.fingerprint
    missing = tuple(i for i, s in enumerate(states) if not _holds(s, fp))
    if missing:
        return Decision(
            "stage",
            "minted",
            f"{show(new_key)} is not yet staged in {len(missing)} target(s)",
            targets=missing,
            revisions=_revisions(states, missing),
            version=_stamped(new_version, new_key),
            key_id=new_key.id,
        )
    attempt = new_version.stamp.attempt if new_version.stamp is not None else None
    not_current = tuple(
        i for i, s in enumerate(states) if not _is_current(s, fp) or _cut_short(s, fp, attempt)
    )
    promoted = [
        s.current.stamp.promoted_at
        for s in states
        if s.current is not None
        and s.current.fingerprint == fp
        and s.current.stamp is not None
        and s.current.stamp.promoted_at is not None
    ]
    if not_current:
        return Decision(
            "promote",
            "staged",
            f"{show(new_key)} is staged everywhere, not yet current in {len(not_current)} target(s)",
            targets=not_current,
            version=_stamped(new_version, new_key),
            key_id=new_key.id,
            promoted_at=min(promoted, default=obs.now),
        )

    inactive = [k for k in obs.vendor if k.status == "inactive" and k.id != new_key.id]
    if obs.delete_after is not None and inactive:
        ripe = [k for k in inactive if (k.revoked_at or k.created_at) + obs.delete_after <= obs.now]
        if ripe or _due_reason(obs, new_key) is not None:
            old = (ripe or inactive)[0]
            why = (
                f"deactivated more than {format_duration(obs.delete_after)} ago"
                if ripe
                else "it holds the second key slot and a rotation is due"
            )
            return Decision("revoke", "revoked", f"deleting inactive key {show(old)}: {why}", key_id=old.id)

    others = [k for k in active if k.id != new_key.id]
    newer = [k for k in others if k.created_at > new_key.created_at]
    if newer:
        return Decision(
            "hold",
            "held",
            f"active key {show(newer[0])} is newer than the current key, is in no target and was "
            "not minted by the rotator; revoke it by hand if it is not needed",
        )
    if others:
        if not promoted:
            return Decision(
                "hold",
                "held",
                f"key {show(others[0])} is active beside the adopted current key {show(new_key)}, "
                "and the rotator never promoted either; revoke it by hand or run `rotator rotate`",
            )
        return _drain(obs, new_key, min(others, key=lambda k: k.created_at), min(promoted))
    leftover = [
        obs.targets[i].name
        for i, s in enumerate(states)
        if s.pending is not None
        and (k := _key_for(obs, s.pending.value, s.pending.stamp)) is not None
        and k.active
    ]
    if leftover and _due_reason(obs, new_key) is not None:
        # never mint while a store still holds an unresolved pending version of a live key
        return Decision(
            "hold",
            "held",
            f"{', '.join(leftover)} still hold(s) a pending copy of {show(new_key)} that no promote "
            "of the rotator accounts for; remove that pending version by hand, then run `rotator apply`",
        )
    return _steady(obs, new_key, "mint")


def _unheld(
    obs: Observation, active: list[VendorKey], referenced: set[str], newest: datetime | None
) -> Decision | None:
    """Rule 2: an active rotator key no target holds, newer than every stored key: revoke it
    as an orphan if never stored and never used, else hold it (a target renamed or deleted)."""
    for k in active:
        attempt = attempt_of(obs.key, k)
        if k.id in referenced or attempt is None:
            continue
        if newest is not None and k.created_at <= newest:
            continue  # an older key: it drains (rule 4)
        used = k.last_used_at is not None and k.last_used_at >= k.created_at
        if attempt not in obs.stored_attempts and not used:
            return Decision(
                "revoke",
                "minted",
                f"orphan {show(k)}: minted by attempt {attempt} but stored in no target; revoking it",
                key_id=k.id,
            )
        last = f"last used {when(k.last_used_at)}" if used and k.last_used_at else "never used"
        was = "was written to a target" if attempt in obs.stored_attempts else "has been used"
        return Decision(
            "hold",
            "held",
            f"active key {show(k)} ({last}) {was} but no target holds it now: a target was "
            "likely renamed or its secret deleted. Not revoking a key consumers may still use: "
            "put the target back, or move its consumers and revoke the key by hand",
            key_id=k.id,
        )
    return None


def _drain(obs: Observation, new: VendorKey, old: VendorKey, promoted_at: datetime) -> Decision:
    policy = obs.policy
    quiet_from = promoted_at + policy.propagation
    last = old.last_used_at
    quiet_since = max(quiet_from, last) if last is not None else quiet_from
    ready_at = quiet_since + policy.drain
    deadline = promoted_at + policy.timeout
    new_ok = not policy.require_new_traffic or (
        new.last_used_at is not None and new.last_used_at >= promoted_at
    )
    if obs.now >= ready_at and new_ok:
        used = f"last used {when(last)}" if last else "never used"
        return Decision(
            "revoke",
            "draining",
            f"old key {show(old)} drained: {used}, quiet for {format_duration(policy.drain)} "
            f"after promotion at {when(promoted_at)} + propagation",
            key_id=old.id,
            promoted_at=promoted_at,
        )
    if obs.now >= deadline:
        if last is not None and last > quiet_from:
            failed = f"old key {show(old)} was still used at {when(last)}, after the propagation budget"
        elif not new_ok:
            failed = f"new key {show(new)} has not been used since promotion at {when(promoted_at)}"
        else:
            failed = f"old key {show(old)} has not been quiet for {format_duration(policy.drain)}"
        if policy.on_timeout == "revoke":
            return Decision(
                "revoke",
                "draining",
                f"drain timeout ({format_duration(policy.timeout)}) and on_timeout: revoke; {failed}",
                key_id=old.id,
                promoted_at=promoted_at,
            )
        return Decision(
            "hold",
            "held",
            f"drain timeout ({format_duration(policy.timeout)} since {when(promoted_at)}): {failed}; "
            "the old key stays active. Move its consumers and run `rotator apply`, or revoke it by hand",
            key_id=old.id,
            promoted_at=promoted_at,
        )
    phase: Phase = "promoted" if obs.now < quiet_from else "draining"
    if not new_ok and obs.now >= ready_at:
        reason = f"waiting for traffic on the new key {show(new)} (require_new_traffic)"
    elif last is not None and last > quiet_from:
        reason = f"old key {show(old)} still in use (last at {when(last)}); waiting for it to drain"
    else:
        reason = f"draining old key {show(old)} until {when(ready_at)}"
    return Decision(
        "wait",
        phase,
        reason,
        until=min(max(ready_at, obs.now), deadline),
        key_id=old.id,
        promoted_at=promoted_at,
    )


# --------------------------------------------------------------------------- cutover


def _decide_cutover(obs: Observation) -> Decision:
    states = _states(obs)
    active = [k for k in obs.vendor if k.active]
    if not active:
        stored = [v for s in states for v in _versions(s)]
        if stored or obs.bootstrap is not None:
            return Decision("hold", "held", _lost_reset_help(obs))
        return Decision(
            "hold",
            "held",
            "a reset-only vendor cannot mint without the current key: put it in a target or give it "
            "once with `bootstrap: {env: NAME}`",
        )
    current = max(active, key=lambda k: k.created_at)
    holding = [v for s in states for v in _versions(s) if _matches(obs, v.value, current)]
    if not holding and obs.bootstrap is not None and _matches(obs, obs.bootstrap, current):
        boot = StoredVersion("bootstrap", obs.bootstrap, None)
        return Decision(
            "stage",
            "reset",
            f"adopting {show(current)} from bootstrap",
            targets=tuple(range(len(states))),
            revisions=_revisions(states, tuple(range(len(states)))),
            version=_stamped(boot, current),
            key_id=current.id,
        )
    if not holding:
        return Decision("hold", "held", _lost_reset_help(obs, current))
    version = max(holding, key=lambda v: v.stamp is not None)
    fp = version.fingerprint
    lagging = tuple(i for i, s in enumerate(states) if not _is_current(s, fp))
    if lagging:
        return Decision(
            "stage",
            "reset",
            f"{show(current)} is not yet current in {len(lagging)} target(s)",
            targets=lagging,
            revisions=_revisions(states, lagging),
            version=_stamped(version, current),
            key_id=current.id,
        )
    return _steady(obs, current, "reset")


def _lost_reset_help(obs: Observation, current: VendorKey | None = None) -> str:
    vendor = f"the vendor's current key {show(current)}" if current else "the vendor's current key"
    return (
        f"{vendor} is in no target and the stored key is rejected: a reset happened and its new "
        "value never reached a store. Not resetting again blindly. To recover: reset the key in "
        "the vendor's console, then give the new key once through `bootstrap: {env: NAME}` "
        "(or write it into the first target by hand) and run `rotator apply`; the journal's "
        "last reset-started entry names the attempt"
    )
