"""Observe: read one key's world (vendor keys, targets, journal) into an
:class:`~rotator.engine.model.Observation` for ``decide``. Reads only: nothing here writes to
a vendor or a store.

Imports model, never the runner, ``decide`` or ``act``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotator.abc import AppScoped, Issuer, SecretStore, TargetState, VendorClock, VendorKey, parse_time
from rotator.audit import Journal
from rotator.engine.model import Observation, TargetObs, attempt_of
from rotator.errors import RotatorError, StoreError, Transient, VendorAuthError
from rotator.secret import Secret
from rotator.spec import RotationFile, cron_trigger

_STORED_EVENTS = frozenset({"staged", "promoted", "reset"})
"""Journal events that mean an attempt's key reached a target."""
JOURNAL_MARGIN = timedelta(hours=1)
"""How far before the creation of the key the targets hold (in our clock) the journal is read
for its writes and rolls: room for a skewed clock."""


@dataclass(frozen=True)
class ObserveContext:
    """What observing one key reads."""

    key: str
    spec: RotationFile
    issuer: Issuer
    stores: Sequence[SecretStore]
    journal: Journal
    clock: Callable[[], datetime]
    bootstrap: Secret | None
    """A reset vendor's first key, from ``bootstrap: {env: NAME}``."""
    use_credential: Callable[[Secret | None], None]
    """Make the issuer authenticate with this value (a reset vendor is read with the app's own
    key); ``None``: forget it."""
    write_only: Sequence[str] = ()
    """The key's write-only targets, by name, in file order."""
    consumers: Sequence[str] = ()
    """The key's consumers, by label, in file order."""


def observe(ctx: ObserveContext, *, force: bool = False, emergency: bool = False) -> Observation:
    """Everything ``decide`` needs about ``ctx.key``, read now (``emergency``: the pass is an
    emergency's, which consumers are told when rolled)."""
    key, issuer, stores, bootstrap = ctx.key, ctx.issuer, ctx.stores, ctx.bootstrap
    with ThreadPoolExecutor(max_workers=max(1, len(stores))) as pool:
        targets = tuple(pool.map(read_target, stores))
    overlap = issuer.capabilities.overlap
    vendor = tuple(issuer.list_keys()) if overlap else _list_with_stored_key(ctx, targets)
    spec = ctx.spec.keys[key]
    newest = max((k.created_at for k in vendor if k.active), default=None)
    fire = None
    if spec.schedule and newest is not None:
        trigger = cron_trigger(spec.schedule)
        fire = trigger.get_next_fire_time(None, newest + timedelta(microseconds=1))
    owners: dict[str, tuple[str, ...]] = {}
    values = [v.value for t in targets if t.state for v in (t.state.current, t.state.pending) if v]
    for value in [*values, *([bootstrap] if bootstrap else [])]:
        owners[value.fingerprint] = tuple(k.id for k in vendor if issuer.matches(value, k))
    rejected = _probe_adoptions(issuer, targets, owners)
    now = ctx.clock()
    vendor_now = issuer.vendor_now() if isinstance(issuer, VendorClock) else None
    issuer_spec = ctx.spec.issuers[spec.issuer]
    offset = None if vendor_now is None else vendor_now - now
    record = _record(ctx, vendor, offset, {k for ids in owners.values() for k in ids})
    return Observation(
        write_only=tuple(ctx.write_only),
        consumers=tuple(ctx.consumers),
        published=record.published,
        rolled=record.rolled,
        roll_failures=record.roll_failures,
        emergency=emergency,
        clock_offset=offset,
        stored_attempts=_stored_attempts(ctx, vendor, owners),
        rejected=rejected,
        owners=owners,
        delete_after=issuer_spec.revoke_delay(),
        key=key,
        now=now,
        vendor=vendor,
        targets=targets,
        capabilities=issuer.capabilities,
        strategy=ctx.spec.strategy(key),
        policy=ctx.spec.verify(key),
        max_age=ctx.spec.max_age(key),
        next_schedule_fire=fire,
        force=force,
        bootstrap=bootstrap,
    )


@dataclass(frozen=True)
class _Record:
    """What the journal shows written to the write-only targets and rolled (``Observation``'s
    fields of the same names)."""

    published: Mapping[str, str]
    rolled: Mapping[tuple[str, str], datetime]
    roll_failures: Mapping[tuple[str, str], str]


def _record(
    ctx: ObserveContext, vendor: Sequence[VendorKey], offset: timedelta | None, stored: Collection[str]
) -> _Record:
    """What the journal shows written to and rolled for ``ctx.key`` since the newest active key
    a target holds (``stored``: the one ``decide`` rolls out; else the newest active key) was
    created, read from the journal's end; a key with no write-only target and no consumer
    reads nothing."""
    active = [k for k in vendor if k.active]
    newest = max((k.created_at for k in active if k.id in stored), default=None) or max(
        (k.created_at for k in active), default=None
    )
    if (not ctx.write_only and not ctx.consumers) or newest is None:
        return _Record({}, {}, {})
    since = newest - (offset or timedelta(0)) - JOURNAL_MARGIN  # the journal's times are ours
    published: dict[str, str] = {}
    rolled: dict[tuple[str, str], datetime] = {}
    failures: dict[tuple[str, str], str] = {}
    for e in ctx.journal.recent(ctx.key, since):
        event, attempt, details = e.get("event"), e.get("attempt"), e.get("details") or {}
        if event == "published":
            published[str(details.get("target"))] = str(details.get("fingerprint"))
        elif event == "rolled" and attempt:
            rolled[(attempt, str(details.get("consumer")))] = parse_time(str(details.get("rolled_at")))
        elif event == "roll-failed" and attempt:
            failures[(attempt, str(details.get("consumer")))] = str(details.get("error"))
    return _Record(published, rolled, {k: v for k, v in failures.items() if k not in rolled})


def read_target(store: SecretStore) -> TargetObs:
    """One target's state, or why it could not be read."""
    try:
        state: TargetState = store.read()
    except StoreError as exc:
        return TargetObs(store.name, None, str(exc), transient=isinstance(exc, Transient))
    return TargetObs(store.name, state)


def _probe_adoptions(
    issuer: Issuer, targets: Sequence[TargetObs], owners: Mapping[str, tuple[str, ...]]
) -> frozenset[str]:
    """Probe each unstamped stored value that a vendor key matches by prefix (it would be
    adopted): one the vendor rejects is broken."""
    rejected: set[str] = set()
    for t in targets:
        for v in (t.state.current, t.state.pending) if t.state else ():
            fp = v.fingerprint if v is not None else ""
            if v is None or v.stamp is not None or not owners.get(fp) or fp in rejected:
                continue
            if not issuer.probe(v.value):
                rejected.add(fp)
    return frozenset(rejected)


def _stored_attempts(
    ctx: ObserveContext, vendor: Sequence[VendorKey], owners: Mapping[str, tuple[str, ...]]
) -> frozenset[str]:
    """The attempts of active keys no target holds that the journal shows stored once."""
    held = {k for ids in owners.values() for k in ids}
    unheld = {a for k in vendor if k.active and k.id not in held and (a := attempt_of(ctx.key, k))}
    if not unheld:
        return frozenset()
    return frozenset(
        e["attempt"]
        for e in ctx.journal.entries(ctx.key)
        if e.get("event") in _STORED_EVENTS and e.get("attempt") in unheld
    )


def _list_with_stored_key(ctx: ObserveContext, targets: Sequence[TargetObs]) -> tuple[VendorKey, ...]:
    """A reset vendor is read with the app's own key: try each stored value until one works."""
    bootstrap = ctx.bootstrap
    candidates: list[Secret] = []
    for t in targets:
        if t.state is not None:
            for v in (t.state.current, t.state.pending):
                if v is not None and v.value not in candidates:
                    candidates.append(v.value)
    stored = list(candidates)
    if bootstrap is not None and bootstrap not in candidates:
        candidates.append(bootstrap)
    boot_refused: VendorAuthError | None = None
    for value in candidates:
        ctx.use_credential(value)
        try:
            return tuple(ctx.issuer.list_keys())
        except VendorAuthError as exc:
            if value == bootstrap:
                boot_refused = exc
            continue
    ctx.use_credential(None)
    if bootstrap is not None and boot_refused is not None:
        _check_bootstrap_refusal(ctx, bootstrap, boot_refused, stored)
    return ()


def _check_bootstrap_refusal(
    ctx: ObserveContext, bootstrap: Secret, exc: VendorAuthError, stored: Sequence[Secret]
) -> None:
    """A refused bootstrap key that was never this key's is a wrong key, not a lost reset:
    say so (advice to reset in the console would revoke the app's working key)."""
    if exc.status == 401 and (
        bootstrap in stored
        or any(
            e.get("details", {}).get("fingerprint") == bootstrap.fingerprint
            for e in ctx.journal.entries(ctx.key)
        )
    ):
        return  # once the app's key, revoked since: decide's lost-reset diagnosis holds
    spec = ctx.spec.keys[ctx.key]
    issuer_spec = ctx.spec.issuers[spec.issuer]
    app = issuer_spec.app_id if isinstance(issuer_spec, AppScoped) else None
    whose = f"app {app}" if app else f"issuer {spec.issuer}"
    answer = {401: "the vendor answered 401: unknown or revoked", None: "not a well-formed key"}.get(
        exc.status, f"the vendor answered {exc.status}"
    )
    env = f"${spec.bootstrap.env}" if spec.bootstrap else "the bootstrap variable"
    raise RotatorError(
        f"the bootstrap key is not a key of {whose} ({answer}); "
        f"set {env} to {whose}'s current key and run `rotator apply` again"
    )
