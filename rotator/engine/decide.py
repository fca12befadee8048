"""Decide the next safe step for one key from an observation alone (no I/O).

The rules keep DESIGN.md's invariants. Each numbered rule is one small function; they are
tried in this order and the first that applies decides.

any strategy:
  0. a target that cannot be read stops the pass: nothing is minted or revoked blind.

overlap (two keys may be active; ``_OVERLAP_RULES``):
  1. an active key the rotator minted that no target holds, newer than every stored key, is
     an orphan (minted, then the process died before storing it) only when the journal shows
     no write of its attempt to any target and the vendor shows no use since its mint: revoke
     it. Otherwise it was stored once and a target was renamed or its secret deleted: hold for
     a person, never revoke a key consumers may still use;
  2. no target holds a key the vendor still accepts: mint one, unless the scope already has
     as many active keys as it allows (hold: never mint around keys the rotator does not hold);
  3. the newest stored key the vendor still accepts is the desired one: stage it where it is
     missing;
  4. then promote it where it is not current, or where a promote was cut short (the probe
     happens before promoting);
  5. once it is current in every readable target, write it to each write-only target the
     journal does not show holding it (publish);
  6. then, when the rotator minted it (an adopted key rolls nothing), roll each consumer the
     journal does not show rolled for its attempt, in file order; from ``promoted_at +
     timeout`` on, hold instead, naming them and their last errors, while the old key is
     still active or a roll failed (else the journal does not know: never roll blind);
  7. two-step revoke (``delete_after``): delete an inactive old key once it has been inactive
     that long, or at once when it holds the second key slot and a rotation is due;
  8. an active key newer than the current one that the rotator did not mint: hold;
  9. once the new key is current everywhere (and its consumers rolled), an older active key
     drains: revoke it when its ``last_used_at`` has stayed before ``start + propagation``
     for ``drain``; hold at ``start + timeout`` (or revoke if the file says ``on_timeout:
     revoke``). ``start`` is ``rolled_at`` (the attempt's last roll) for a key with
     consumers, else ``promoted_at``. An older key beside an adopted key the rotator never
     promoted: hold;
  10. a target still holding a pending copy of the live key that no promote of the rotator
      accounts for, when a rotation is due: hold (never mint over it);
  11. otherwise the key is due (age, schedule, or a person asked: mint) or current (done).

Every time is judged in the vendor's clock (``Observation.clock_offset``): ``promoted_at`` is
stamped in it and compared with the vendor's ``last_used_at``; ``until`` is handed back in ours.

cutover (a reset revokes the old key at once; ``_CUTOVER_RULES``):
  1. the vendor lists no active key: hold (a lost reset, or no key to reset with);
  2. no target holds the vendor's key but the bootstrap value is it: adopt it (stage it
     everywhere);
  3. no target holds the vendor's key: a reset's value was lost; hold with recovery steps,
     never reset again blindly;
  4. stage the vendor's key where it is not current;
  5. publish it to the write-only targets, as overlap rule 5;
  6. roll the consumers of its attempt, as overlap rule 6 (a reset of the rotator's; an
     adopted or bootstrap key rolls nothing): they are failing until rolled, so this follows
     the reset in the same pass;
  7. otherwise the key is due (reset) or current (done).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property

from rotator.abc import RollPhase, Stamp, StoredVersion, TargetState, VendorKey
from rotator.engine.model import (
    Decision,
    Delete,
    Done,
    Fail,
    Hold,
    Mint,
    Observation,
    Phase,
    Promote,
    Publish,
    Reset,
    Revoke,
    RevokeOrphan,
    Roll,
    Stage,
    Wait,
    attempt_of,
)
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
        return Fail(f"cannot read {len(broken)} target(s), acting on none: {names}")
    offset = obs.clock_offset
    if not offset:
        return _decide_cutover(obs) if obs.strategy == "cutover" else _decide_overlap(obs)
    # one clock, the vendor's: promoted_at is stamped in it and compared with its last_used_at
    seen = replace(obs, now=obs.now + offset)
    d = _decide_cutover(seen) if obs.strategy == "cutover" else _decide_overlap(seen)
    if isinstance(d, Wait | Done) and d.until is not None:
        return replace(d, until=d.until - offset)  # callers sleep in ours
    return d


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


def _steady(obs: Observation, key: VendorKey, *, cutover: bool) -> Decision:
    reason = _due_reason(obs, key)
    if reason is None:
        due_at = key.created_at + obs.max_age
        if obs.next_schedule_fire is not None:
            due_at = min(due_at, obs.next_schedule_fire)
        return Done(f"{show(key)} is current everywhere; next due {when(due_at)}", key.id, until=due_at)
    return Reset(reason, key_id=key.id) if cutover else Mint(reason, key_id=key.id)


# --------------------------------------------------------------------------- consumers


def _minted_attempt(obs: Observation, key: VendorKey, version: StoredVersion) -> str | None:
    """The attempt whose consumers roll to ``key``: its stamp's, when the rotator minted the key
    (overlap: the vendor's name of the key says so) or reset to it (cutover: the vendor names
    no key, so any stamp but an adoption's). ``None`` for an adopted key: it rolls nothing."""
    stamp = version.stamp
    if stamp is None or stamp.key_id != key.id:
        return None
    if obs.strategy == "cutover":
        return None if stamp.attempt == adoption_attempt(key.id) else stamp.attempt
    return stamp.attempt if attempt_of(obs.key, key) == stamp.attempt else None


def _rolled_at(obs: Observation, attempt: str | None) -> datetime | None:
    """When the last consumer of ``attempt`` finished rolling (vendor clock), if any did."""
    if attempt is None:
        return None
    return max((t for c in obs.consumers if (t := obs.rolled.get((attempt, c))) is not None), default=None)


def _publish(obs: Observation, key: VendorKey, version: StoredVersion) -> Decision | None:
    """Publish ``key`` to the write-only targets whose last write the journal shows was another key."""
    fp = version.fingerprint
    missing = tuple(i for i, name in enumerate(obs.write_only) if obs.published.get(name) != fp)
    if not missing:
        return None
    names = ", ".join(obs.write_only[i] for i in missing)
    return Publish(
        f"{show(key)} is current in every readable target; writing it to {names}",
        targets=missing,
        version=_stamped(version, key),
        key_id=key.id,
    )


def _roll(
    obs: Observation,
    key: VendorKey,
    version: StoredVersion,
    attempt: str | None,
    promoted_at: datetime | None,
    old: VendorKey | None,
) -> Decision | None:
    """Roll the consumers of ``attempt`` the journal does not show rolled, in file order; from
    ``promoted_at + timeout`` on, hold instead while the old key lives or a roll failed (else
    the journal does not know these rolls, e.g. it is not kept between runs: never roll blind)
    unless a person asks again (``force``)."""
    if attempt is None or not obs.consumers:
        return None
    todo = tuple(i for i, c in enumerate(obs.consumers) if (attempt, c) not in obs.rolled)
    if not todo:
        return None
    names = ", ".join(obs.consumers[i] for i in todo)
    failed = [e for i in todo if (e := obs.roll_failures.get((attempt, obs.consumers[i]))) is not None]
    last = f"; last try: {'; '.join(failed)}" if failed else ""
    timeout = obs.policy.timeout
    if promoted_at is not None and obs.now >= promoted_at + timeout and not obs.force:
        if old is None and not failed:
            return None
        keeps = f"; the old key {show(old)} stays active" if old is not None else ""
        return Hold(
            f"consumers not rolled to {show(key)} within {format_duration(timeout)} of its promotion "
            f"at {when(promoted_at)}: {names}{last}{keeps}. Fix them, then run `rotator rotate "
            f"{obs.key}` to roll them again (it finishes this rotation, then starts the next)",
            key_id=(old or key).id,
            promoted_at=promoted_at,
        )
    phase: RollPhase = "reset" if obs.strategy == "cutover" else "rotation"
    return Roll(
        f"{show(key)} is in every target; rolling {names}{last}",
        consumers=todo,
        attempt=attempt,
        key_id=key.id,
        prefix=key.prefix,
        fingerprint=version.fingerprint,
        roll_phase="emergency" if obs.emergency else phase,
    )


# --------------------------------------------------------------------------- overlap


@dataclass(frozen=True)
class _Seen:
    """What the overlap rules share, worked out once from the observation."""

    obs: Observation
    states: tuple[TargetState, ...]
    active: tuple[VendorKey, ...]
    stored: tuple[tuple[VendorKey, StoredVersion], ...]
    """Each stored value with the vendor key it is."""

    @classmethod
    def of(cls, obs: Observation) -> _Seen:
        states = tuple(_states(obs))
        stored = tuple(
            (k, v)
            for state in states
            for v in _versions(state)
            if (k := _key_for(obs, v.value, v.stamp)) is not None
        )
        return cls(obs, states, tuple(k for k in obs.vendor if k.active), stored)

    @cached_property
    def live(self) -> list[tuple[VendorKey, StoredVersion]]:
        return [(k, v) for k, v in self.stored if k.active]

    @cached_property
    def newest(self) -> tuple[VendorKey, StoredVersion]:
        """The newest live stored key (rules 3 on: rule 2 saw that there is one). A copy
        stamped for the key beats an unstamped copy of the same key: a promote cut short (a
        file written, its stamp not yet) leaves the value current but unstamped in one target."""
        return max(
            self.live,
            key=lambda kv: (kv[0].created_at, kv[1].stamp is not None and kv[1].stamp.key_id == kv[0].id),
        )

    @property
    def new_key(self) -> VendorKey:
        return self.newest[0]

    @property
    def fp(self) -> str:
        return self.newest[1].fingerprint

    @cached_property
    def promoted(self) -> list[datetime]:
        """When the new key was promoted, in each target that stamped it."""
        return [
            s.current.stamp.promoted_at
            for s in self.states
            if s.current is not None
            and s.current.fingerprint == self.fp
            and s.current.stamp is not None
            and s.current.stamp.promoted_at is not None
        ]


def _unheld(seen: _Seen) -> Decision | None:
    """Rule 1: an active rotator key no target holds, newer than every stored key: revoke it
    as an orphan if never stored and never used, else hold it (a target renamed or deleted)."""
    obs = seen.obs
    referenced = {k.id for k, _ in seen.stored}
    # the keys broken values claim by prefix: being replaced, not renamed away
    referenced |= {i for fp in obs.rejected for i in (obs.owners or {}).get(fp, ())}
    newest = max((k.created_at for k, _ in seen.stored), default=None)
    for k in seen.active:
        attempt = attempt_of(obs.key, k)
        if k.id in referenced or attempt is None:
            continue
        if newest is not None and k.created_at <= newest:
            continue  # an older key: it drains (rule 7)
        used = k.last_used_at is not None and k.last_used_at >= k.created_at
        if attempt not in obs.stored_attempts and not used:
            return RevokeOrphan(
                f"orphan {show(k)}: minted by attempt {attempt} but stored in no target; revoking it", k.id
            )
        last = f"last used {when(k.last_used_at)}" if used and k.last_used_at else "never used"
        was = "was written to a target" if attempt in obs.stored_attempts else "has been used"
        return Hold(
            f"active key {show(k)} ({last}) {was} but no target holds it now: a target was "
            "likely renamed or its secret deleted. Not revoking a key consumers may still use: "
            "put the target back, or move its consumers and revoke the key by hand",
            key_id=k.id,
        )
    return None


def _no_working_key(seen: _Seen) -> Decision | None:
    """Rule 2: no target holds a key the vendor still accepts: mint, unless the scope is full."""
    if seen.live:
        return None
    obs = seen.obs
    if len(seen.active) >= obs.capabilities.max_active:
        names = ", ".join(show(k) for k in seen.active)
        return Hold(
            f"no target holds a working key and the scope already has {len(seen.active)} active "
            f"keys the rotator does not hold ({names}); not minting around them"
        )
    broken = [
        t.name
        for t in obs.targets
        if t.state is not None and any(v.fingerprint in obs.rejected for v in _versions(t.state))
    ]
    if broken:
        return Mint(
            f"the value stored in {', '.join(broken)} is broken: it has a key's prefix but "
            "the vendor rejects it; minting a replacement"
        )
    if any(True for s in seen.states for _ in _versions(s)):
        return Mint("the stored key is unknown to or revoked by the vendor")
    return Mint("first run: no target holds a key")


def _stage_missing(seen: _Seen) -> Decision | None:
    """Rule 3: stage the newest stored key where it is missing."""
    new_key, new_version = seen.newest
    missing = tuple(i for i, s in enumerate(seen.states) if not _holds(s, seen.fp))
    if not missing:
        return None
    return Stage(
        "minted",
        f"{show(new_key)} is not yet staged in {len(missing)} target(s)",
        targets=missing,
        revisions=_revisions(list(seen.states), missing),
        version=_stamped(new_version, new_key),
        key_id=new_key.id,
    )


def _promote_lagging(seen: _Seen) -> Decision | None:
    """Rule 4: promote it where it is not current, or where a promote was cut short."""
    new_key, new_version = seen.newest
    fp = seen.fp
    attempt = new_version.stamp.attempt if new_version.stamp is not None else None
    not_current = tuple(
        i for i, s in enumerate(seen.states) if not _is_current(s, fp) or _cut_short(s, fp, attempt)
    )
    if not not_current:
        return None
    return Promote(
        f"{show(new_key)} is staged everywhere, not yet current in {len(not_current)} target(s)",
        targets=not_current,
        version=_stamped(new_version, new_key),
        key_id=new_key.id,
        promoted_at=min(seen.promoted, default=seen.obs.now),
    )


def _publish_new(seen: _Seen) -> Decision | None:
    """Rule 5: write the new key to each write-only target the journal does not show holding it."""
    return _publish(seen.obs, *seen.newest)


def _roll_new(seen: _Seen) -> Decision | None:
    """Rule 6: roll the consumers of the new key's attempt not yet rolled; hold at the timeout."""
    obs, (new_key, new_version) = seen.obs, seen.newest
    older = [k for k in seen.active if k.id != new_key.id and k.created_at < new_key.created_at]
    old = min(older, key=lambda k: k.created_at) if older else None
    attempt = _minted_attempt(obs, new_key, new_version)
    return _roll(obs, new_key, new_version, attempt, min(seen.promoted, default=None), old)


def _delete_inactive(seen: _Seen) -> Decision | None:
    """Rule 7: two-step revoke: delete an inactive key once ripe, or when its slot is needed."""
    obs, new_key = seen.obs, seen.new_key
    inactive = [k for k in obs.vendor if k.status == "inactive" and k.id != new_key.id]
    if obs.delete_after is None or not inactive:
        return None
    ripe = [k for k in inactive if (k.revoked_at or k.created_at) + obs.delete_after <= obs.now]
    if not ripe and _due_reason(obs, new_key) is None:
        return None
    old = (ripe or inactive)[0]
    why = (
        f"deactivated more than {format_duration(obs.delete_after)} ago"
        if ripe
        else "it holds the second key slot and a rotation is due"
    )
    return Delete(f"deleting inactive key {show(old)}: {why}", old.id)


def _newer_stranger(seen: _Seen) -> Decision | None:
    """Rule 8: an active key newer than the current one, in no target, not the rotator's."""
    new_key = seen.new_key
    newer = [k for k in seen.active if k.id != new_key.id and k.created_at > new_key.created_at]
    if not newer:
        return None
    return Hold(
        f"active key {show(newer[0])} is newer than the current key, is in no target and was "
        "not minted by the rotator; revoke it by hand if it is not needed"
    )


def _drain_older(seen: _Seen) -> Decision | None:
    """Rule 9: an older active key drains after the new key's promotion (and its consumers' rolls)."""
    new_key = seen.new_key
    others = [k for k in seen.active if k.id != new_key.id]
    if not others:
        return None
    if not seen.promoted:
        return Hold(
            f"key {show(others[0])} is active beside the adopted current key {show(new_key)}, "
            "and the rotator never promoted either; revoke it by hand or run `rotator rotate`"
        )
    promoted_at = min(seen.promoted)
    rolled_at = _rolled_at(seen.obs, _minted_attempt(seen.obs, new_key, seen.newest[1]))
    old = min(others, key=lambda k: k.created_at)
    return _drain(seen.obs, new_key, old, promoted_at, rolled_at)


def _pending_leftover(seen: _Seen) -> Decision | None:
    """Rule 10: never mint while a store still holds an unresolved pending version of a live key."""
    obs, new_key = seen.obs, seen.new_key
    leftover = [
        obs.targets[i].name
        for i, s in enumerate(seen.states)
        if s.pending is not None
        and (k := _key_for(obs, s.pending.value, s.pending.stamp)) is not None
        and k.active
    ]
    if not leftover or _due_reason(obs, new_key) is None:
        return None
    return Hold(
        f"{', '.join(leftover)} still hold(s) a pending copy of {show(new_key)} that no promote "
        "of the rotator accounts for; remove that pending version by hand, then run `rotator apply`"
    )


_OVERLAP_RULES: tuple[Callable[[_Seen], Decision | None], ...] = (
    _unheld,
    _no_working_key,
    _stage_missing,
    _promote_lagging,
    _publish_new,
    _roll_new,
    _delete_inactive,
    _newer_stranger,
    _drain_older,
    _pending_leftover,
)
"""Rules 1-10 of the module docstring, in order; rule 11 (:func:`_steady`) is the rest."""


def _decide_overlap(obs: Observation) -> Decision:
    seen = _Seen.of(obs)
    for rule in _OVERLAP_RULES:
        decision = rule(seen)
        if decision is not None:
            return decision
    return _steady(obs, seen.new_key, cutover=False)


def _drain(
    obs: Observation, new: VendorKey, old: VendorKey, promoted_at: datetime, rolled_at: datetime | None = None
) -> Decision:
    """Rule 9's drain. Propagation, drain and timeout count from ``rolled_at`` (the last consumer
    rolled) when consumers were rolled, else from ``promoted_at``; both are reported."""
    policy = obs.policy
    start = max(promoted_at, rolled_at) if rolled_at is not None else promoted_at
    since = f"promotion at {when(promoted_at)}" if rolled_at is None else f"the last roll at {when(start)}"
    quiet_from = start + policy.propagation
    last = old.last_used_at
    quiet_since = max(quiet_from, last) if last is not None else quiet_from
    ready_at = quiet_since + policy.drain
    deadline = start + policy.timeout
    new_ok = not policy.require_new_traffic or (
        new.last_used_at is not None and new.last_used_at >= promoted_at
    )
    if obs.now >= ready_at and new_ok:
        used = f"last used {when(last)}" if last else "never used"
        return Revoke(
            f"old key {show(old)} drained: {used}, quiet for {format_duration(policy.drain)} "
            f"after {since} + propagation",
            old.id,
            promoted_at,
        )
    if obs.now >= deadline:
        if last is not None and last > quiet_from:
            failed = f"old key {show(old)} was still used at {when(last)}, after the propagation budget"
        elif not new_ok:
            failed = f"new key {show(new)} has not been used since promotion at {when(promoted_at)}"
        else:
            failed = f"old key {show(old)} has not been quiet for {format_duration(policy.drain)}"
        if policy.on_timeout == "revoke":
            return Revoke(
                f"drain timeout ({format_duration(policy.timeout)}) and on_timeout: revoke; {failed}",
                old.id,
                promoted_at,
            )
        return Hold(
            f"drain timeout ({format_duration(policy.timeout)} since {when(start)}): {failed}; "
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
    return Wait(
        phase,
        reason,
        until=min(max(ready_at, obs.now), deadline),
        key_id=old.id,
        promoted_at=promoted_at,
    )


# --------------------------------------------------------------------------- cutover


@dataclass(frozen=True)
class _Cut:
    """What the cutover rules share."""

    obs: Observation
    states: tuple[TargetState, ...]
    current: VendorKey | None
    """The vendor's newest active key."""

    @cached_property
    def holding(self) -> list[StoredVersion]:
        """The stored versions that are the vendor's current key."""
        current = self.current
        if current is None:
            return []
        return [v for s in self.states for v in _versions(s) if _matches(self.obs, v.value, current)]


def _no_active_key(cut: _Cut) -> Decision | None:
    """Cutover rule 1: the vendor lists no active key."""
    if cut.current is not None:
        return None
    if any(True for s in cut.states for _ in _versions(s)) or cut.obs.bootstrap is not None:
        return Hold(_lost_reset_help(cut.obs))
    return Hold(
        "a reset-only vendor cannot mint without the current key: put it in a target or give it "
        "once with `bootstrap: {env: NAME}`"
    )


def _adopt_bootstrap(cut: _Cut) -> Decision | None:
    """Cutover rule 2: the bootstrap value is the vendor's key and no target holds it."""
    obs, current = cut.obs, cut.current
    if current is None or cut.holding or obs.bootstrap is None or not _matches(obs, obs.bootstrap, current):
        return None
    everywhere = tuple(range(len(cut.states)))
    return Stage(
        "reset",
        f"adopting {show(current)} from bootstrap",
        targets=everywhere,
        revisions=_revisions(list(cut.states), everywhere),
        version=_stamped(StoredVersion("bootstrap", obs.bootstrap, None), current),
        key_id=current.id,
    )


def _lost_reset(cut: _Cut) -> Decision | None:
    """Cutover rule 3: no target holds the vendor's key: a reset's value was lost."""
    return None if cut.holding else Hold(_lost_reset_help(cut.obs, cut.current))


def _stage_lagging(cut: _Cut) -> Decision | None:
    """Cutover rule 4: stage the vendor's key where it is not current."""
    current = cut.current
    assert current is not None  # rule 1
    version = max(cut.holding, key=lambda v: v.stamp is not None)
    lagging = tuple(i for i, s in enumerate(cut.states) if not _is_current(s, version.fingerprint))
    if not lagging:
        return None
    return Stage(
        "reset",
        f"{show(current)} is not yet current in {len(lagging)} target(s)",
        targets=lagging,
        revisions=_revisions(list(cut.states), lagging),
        version=_stamped(version, current),
        key_id=current.id,
    )


def _cut_version(cut: _Cut) -> tuple[VendorKey, StoredVersion]:
    """The vendor's current key and its stored version (a stamped copy first)."""
    assert cut.current is not None  # rule 1
    return cut.current, max(cut.holding, key=lambda v: v.stamp is not None)


def _publish_reset(cut: _Cut) -> Decision | None:
    """Cutover rule 5: write the vendor's key to the write-only targets not holding it."""
    return _publish(cut.obs, *_cut_version(cut))


def _roll_reset(cut: _Cut) -> Decision | None:
    """Cutover rule 6: roll the consumers of the reset's attempt not yet rolled."""
    current, version = _cut_version(cut)
    promoted_at = version.stamp.promoted_at if version.stamp is not None else None
    return _roll(cut.obs, current, version, _minted_attempt(cut.obs, current, version), promoted_at, None)


_CUTOVER_RULES: tuple[Callable[[_Cut], Decision | None], ...] = (
    _no_active_key,
    _adopt_bootstrap,
    _lost_reset,
    _stage_lagging,
    _publish_reset,
    _roll_reset,
)
"""Cutover rules 1-6 of the module docstring, in order; rule 7 (:func:`_steady`) is the rest."""


def _decide_cutover(obs: Observation) -> Decision:
    active = [k for k in obs.vendor if k.active]
    cut = _Cut(obs, tuple(_states(obs)), max(active, key=lambda k: k.created_at) if active else None)
    for rule in _CUTOVER_RULES:
        decision = rule(cut)
        if decision is not None:
            return decision
    assert cut.current is not None  # rule 1
    return _steady(obs, cut.current, cutover=True)


def _lost_reset_help(obs: Observation, current: VendorKey | None = None) -> str:
    vendor = f"the vendor's current key {show(current)}" if current else "the vendor's current key"
    return (
        f"{vendor} is in no target and the stored key is rejected: a reset happened and its new "
        "value never reached a store. Not resetting again blindly. To recover: reset the key in "
        "the vendor's console, then give the new key once through `bootstrap: {env: NAME}` "
        "(or write it into the first target by hand) and run `rotator apply`; the journal's "
        "last reset-started entry names the attempt"
    )
