"""Act: take the one step ``decide`` chose (or an order: an emergency's revoke, a person's
reactivate). The only code that writes to vendors and stores.

Each step gets a :class:`StepContext` (frozen: what it may touch) and returns an
:class:`Acted` (what it did); it imports nothing of the runner. Every step is journalled,
and each step boundary is a crash checkpoint (``faults``), so the tests can prove that a
process killed anywhere leaves a world the next pass can finish.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from rotator.abc import (
    Consumer,
    Issuer,
    Reactivating,
    Retiring,
    RollEvent,
    SecretStore,
    Stamp,
    VendorClock,
    VendorKey,
    WriteOnlyTarget,
    format_time,
)
from rotator.audit import Journal
from rotator.engine import faults
from rotator.engine.decide import show
from rotator.engine.model import (
    Decision,
    Delete,
    Mint,
    Order,
    Promote,
    Publish,
    Reactivate,
    Reset,
    Revoke,
    RevokeLeaked,
    RevokeOrphan,
    Roll,
    Stage,
    attempt_name,
)
from rotator.errors import (
    ConsumerError,
    Held,
    KeyLimitReached,
    RotatorError,
    StoreError,
    StoreNotFound,
    VendorError,
    VendorOutcomeUnknown,
    VendorProtocolError,
)
from rotator.logs import redact
from rotator.secret import Secret
from rotator.spec import Settings

log = logging.getLogger("rotator.engine")

PUBLISHED_MARGIN = timedelta(hours=1)
"""How far before the new key's promotion (in the vendor's clock) the revoke's pre-check reads
the journal for its writes to the write-only targets: room for a skewed clock."""


@dataclass(frozen=True)
class StepContext:
    """What one step of one key may touch."""

    key: str
    issuer: Issuer
    stores: Sequence[SecretStore]
    journal: Journal
    clock: Callable[[], datetime]
    settings: Settings
    credential: Callable[[], Secret]
    """The key's management credential (a reset vendor's: the key itself)."""
    forget_credential: Callable[[], None]
    """Drop the cached credential once the key it was changed (the next call reads it anew)."""
    lease: object | None = None
    """The held lease, if the step runs under one."""
    write_only: Callable[[], Sequence[WriteOnlyTarget]] = tuple
    """The key's write-only targets, in file order (opened when a step first needs them: an
    emergency's revoke opens nothing it does not use)."""
    consumers: Callable[[], Sequence[Consumer]] = tuple
    """The key's consumers, in file order (opened when a roll needs them)."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set on SIGTERM: a consumer's wait ends early, and no further consumer is rolled."""


@dataclass(frozen=True)
class Acted:
    """What a step did."""

    action: str
    key: VendorKey | None = None
    """The vendor key minted, reset to, revoked or reactivated."""
    reset_at: float | None = None
    """``time.monotonic()`` when the vendor answered a reset: it revoked the old key then."""
    error: RotatorError | None = None
    """A reset that happened but whose later part failed: the caller raises it, after
    recording ``reset_at``."""
    roll_failures: tuple[tuple[str, str], ...] = ()
    """A roll: ``(consumer, error)`` of each consumer that failed (the others rolled). The old
    key is alive and nothing is broken: the caller waits and tries again."""


def act(ctx: StepContext, step: Decision | Order, attempt: str | None = None) -> Acted:
    """Take ``step`` for ``ctx.key``; ``attempt`` names the rotation a mint or reset starts."""
    match step:
        case Mint():
            return _mint(ctx, step, attempt or str(uuid.uuid4()))
        case Reset():
            return _reset(ctx, step, attempt or str(uuid.uuid4()))
        case Stage() | Promote() | Publish() | Roll():
            return _roll_out(ctx, step)
        case Revoke() | Delete() | RevokeOrphan():
            return _revoke(ctx, step)
        case _:
            return _order(ctx, step)


def _roll_out(ctx: StepContext, step: Stage | Promote | Publish | Roll) -> Acted:
    """A step of the roll-out: the new key to the stores, then to the consumers."""
    match step:
        case Stage():
            return _stage(ctx, step)
        case Promote():
            return _promote(ctx, step)
        case Publish():
            return _publish(ctx, step)
        case _:
            return _roll(ctx, step)


def _order(ctx: StepContext, step: Decision | Order) -> Acted:
    """An order of the emergency path or of a person."""
    if isinstance(step, RevokeLeaked):
        return Acted(step.action, key=ctx.issuer.revoke(step.key_id))
    if isinstance(step, Reactivate):
        return _reactivate(ctx, step)
    raise RotatorError(f"{ctx.key}: nothing to act on for {step.action}")  # wait, hold, fail, done


def _mint(ctx: StepContext, d: Mint, attempt: str) -> Acted:
    key, issuer, stores = ctx.key, ctx.issuer, ctx.stores
    # a key minted for a target that cannot take it would only have to be revoked again
    checks: list[Callable[[], None]] = [partial(_check_writable, s) for s in stores]
    checks += [t.check_access for t in ctx.write_only()]
    _run_all(lambda i: checks[i](), range(len(checks)))
    try:
        minted = issuer.mint(attempt_name(key, attempt))
    except KeyLimitReached as exc:
        raise Held(
            f"the vendor says two keys are already active ({exc}); a rotation is in flight "
            "elsewhere: not minting around it"
        ) from None
    k = minted.key
    ctx.journal.append(
        "minted",
        key=key,
        attempt=attempt,
        key_id=k.id,
        prefix=k.prefix,
        fingerprint=minted.value.fingerprint,
        reason=d.reason,
    )
    faults.checkpoint("after-mint", key)
    first = stores[0]
    first.stage(minted.value, Stamp(k.id, minted.value.fingerprint, attempt), expected=None)
    ctx.journal.append("staged", key=key, attempt=attempt, key_id=k.id, targets=[first.name])
    faults.checkpoint("after-stage-first", key)
    return Acted(d.action, key=k)


def _stage(ctx: StepContext, d: Stage) -> Acted:
    assert d.version.stamp is not None
    key, stores = ctx.key, ctx.stores
    # the revisions the decision was made on: a write since then is a conflict, not lost
    expected = dict(zip(d.targets, d.revisions or (None,) * len(d.targets), strict=True))
    version, stamp = d.version, d.version.stamp
    cutover = d.phase == "reset"  # a reset vendor's key is already live: no reason to keep it pending

    def write(i: int) -> None:
        stores[i].stage(version.value, stamp, expected=expected[i])
        if cutover:
            stores[i].promote(stamp.attempt, ctx.clock())

    _run_all(write, d.targets)
    names = [stores[i].name for i in d.targets]
    ctx.journal.append(
        "promoted" if cutover else "staged",
        key=key,
        attempt=stamp.attempt,
        key_id=stamp.key_id,
        fingerprint=stamp.fingerprint,
        targets=names,
    )
    if cutover:
        ctx.forget_credential()
    faults.checkpoint("after-stage", key)
    return Acted(d.action)


def _probe(ctx: StepContext, value: Secret, what: str) -> None:
    deadline = time.monotonic() + ctx.settings.probe_timeout
    delay = 0.2
    while not ctx.issuer.probe(value):
        if time.monotonic() >= deadline:
            raise Held(
                f"{what}: the vendor rejects the new key (fingerprint {value.fingerprint}) "
                f"after {ctx.settings.probe_timeout:.0f}s of probing; the old key keeps serving"
            )
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _promote(ctx: StepContext, d: Promote) -> Acted:
    assert d.version.stamp is not None
    key, stamp, stores = ctx.key, d.version.stamp, ctx.stores
    _probe(ctx, d.version.value, "not promoting")
    when = d.promoted_at
    _run_all(lambda i: stores[i].promote(stamp.attempt, when), d.targets)
    ctx.forget_credential()
    ctx.journal.append(
        "promoted",
        key=key,
        attempt=stamp.attempt,
        key_id=stamp.key_id,
        fingerprint=stamp.fingerprint,
        promoted_at=format_time(when),
        targets=[stores[i].name for i in d.targets],
    )
    faults.checkpoint("after-promote", key)
    return Acted(d.action)


def _publish(ctx: StepContext, d: Publish) -> Acted:
    """Write the new key to the write-only targets at once, and journal each write that took."""
    assert d.version.stamp is not None
    key, stamp, targets = ctx.key, d.version.stamp, ctx.write_only()
    faults.checkpoint("before-publish", key)
    errors = _try_all(lambda i: targets[i].write(d.version.value, stamp), d.targets)
    for i in d.targets:
        if i not in errors:
            _journal_published(ctx, targets[i], stamp)
    faults.checkpoint("after-publish", key)
    if errors:
        raise errors[min(errors)]
    return Acted(d.action)


def _journal_published(ctx: StepContext, target: WriteOnlyTarget, stamp: Stamp) -> None:
    ctx.journal.append(
        "published",
        key=ctx.key,
        attempt=stamp.attempt,
        key_id=stamp.key_id,
        fingerprint=stamp.fingerprint,
        target=target.name,
    )


def _roll(ctx: StepContext, d: Roll) -> Acted:
    """Roll the consumers in file order, each journalled as it finishes (``rolled``, with its
    time in the vendor's clock, which the drain counts from). One that fails is journalled
    (``roll-failed``) and the others are still rolled; a stop (SIGTERM) rolls no further one."""
    key, consumers = ctx.key, ctx.consumers()
    event = RollEvent(key, d.attempt, d.roll_phase, d.key_id, d.prefix, d.fingerprint)
    failed: list[tuple[str, str]] = []
    for i in d.consumers:
        if ctx.stop.is_set():
            break
        consumer = consumers[i]
        faults.checkpoint("before-roll", key)
        started = time.monotonic()
        try:
            consumer.roll(event, stop=ctx.stop)
        except ConsumerError as exc:
            error = redact(str(exc))
            log.warning("%s: %s", key, error, extra={"key": key, "attempt": d.attempt, "phase": "rolling"})
            ctx.journal.append("roll-failed", key=key, attempt=d.attempt, consumer=consumer.name, error=error)
            failed.append((consumer.name, error))
            continue
        ctx.journal.append(
            "rolled",
            key=key,
            attempt=d.attempt,
            consumer=consumer.name,
            key_id=d.key_id,
            fingerprint=d.fingerprint,
            rolled_at=format_time(_vendor_now(ctx)),
            seconds=round(time.monotonic() - started, 3),
        )
        faults.checkpoint("after-roll", key)
    return Acted(d.action, roll_failures=tuple(failed))


def _vendor_now(ctx: StepContext) -> datetime:
    """The vendor's time now, when the issuer knows it; else ours."""
    issuer = ctx.issuer
    now = issuer.vendor_now() if isinstance(issuer, VendorClock) else None
    return now if now is not None else ctx.clock()


def _revoke(ctx: StepContext, d: Revoke | Delete | RevokeOrphan) -> Acted:
    key = ctx.key
    if isinstance(d, Revoke):
        # invariant 1: the new key works and every target reads it back before any revoke
        current = [s.read().current for s in ctx.stores]
        fps = {c.fingerprint if c else None for c in current}
        if len(fps) != 1 or None in fps:
            raise Held("not revoking: the targets no longer agree on the current key")
        value = current[0]
        assert value is not None
        _check_published(ctx, value.fingerprint, d.promoted_at)
        _probe(ctx, value.value, "not revoking the old key")
    revoked = ctx.issuer.revoke(d.key_id)
    event = {Revoke: "revoked", Delete: "deleted"}.get(type(d), "orphan-revoked")
    ctx.journal.append(event, key=key, key_id=revoked.id, prefix=revoked.prefix, reason=d.reason)
    _retire(ctx, revoked.id)
    faults.checkpoint("after-revoke", key)
    return Acted(d.action, key=revoked)


def _check_published(ctx: StepContext, fp: str, promoted_at: datetime) -> None:
    """Write-only targets cannot be read back: the journal must show the new key written to each."""
    targets = ctx.write_only()
    if not targets:
        return
    last: dict[str, str] = {}
    for e in ctx.journal.recent(ctx.key, promoted_at - PUBLISHED_MARGIN):
        if e.get("event") == "published":
            details = e.get("details") or {}
            last[str(details.get("target"))] = str(details.get("fingerprint"))
    missing = [t.name for t in targets if last.get(t.name) != fp]
    if missing:
        raise Held(
            f"not revoking: the journal does not show the new key (fingerprint {fp}) written to "
            f"{', '.join(missing)}"
        )


def _retire(ctx: StepContext, key_id: str) -> None:
    """Stores that can (GCP) disable old versions holding a revoked key, so no consumer
    pinned to one keeps a dead key. Best effort: the revoke itself already happened."""
    for store in ctx.stores:
        if not isinstance(store, Retiring):
            continue
        try:
            versions = store.retire(key_id)
        except StoreError as exc:
            log.warning("%s: could not disable old versions in %s: %s", ctx.key, store.name, exc)
            continue
        if versions:
            ctx.journal.append("retired", key=ctx.key, key_id=key_id, target=store.name, versions=versions)


def _reactivate(ctx: StepContext, order: Reactivate) -> Acted:
    issuer = ctx.issuer
    if not isinstance(issuer, Reactivating):
        raise RotatorError(f"{issuer.name} cannot reactivate a key: its revoke is final")
    restored = issuer.reactivate(order.key_id)
    ctx.journal.append("reactivated", key=ctx.key, key_id=restored.id, prefix=restored.prefix)
    return Acted(order.action, key=restored)


def _reset(ctx: StepContext, d: Reset, attempt: str) -> Acted:
    """Cutover: a reset revokes the old key at once, so every store is checked first
    (a real write where the store allows one) and the new value goes to every store at
    once, each retried with back-off: it is safe as soon as one holds it."""
    key, stores, issuer = ctx.key, ctx.stores, ctx.issuer
    current = ctx.credential()
    checks = [*(s.check_access for s in stores), *(t.check_access for t in ctx.write_only())]
    _run_all(lambda i: checks[i](), range(len(checks)))
    ctx.journal.append("reset-started", key=key, attempt=attempt, old_key_id=d.key_id)
    faults.checkpoint("before-reset", key)
    try:
        minted = issuer.mint(attempt_name(key, attempt), current=current)
    except VendorOutcomeUnknown as exc:
        raise Held(
            f"the reset of attempt {attempt} may have reached the vendor but its answer was lost "
            f"({exc}); the old key may already be revoked. Check the app in the vendor's "
            "console: if its key prefix changed, reset it there and give the new key once "
            "through `bootstrap: {env: NAME}`; then run `rotator apply`"
        ) from None
    except VendorProtocolError as exc:
        # the vendor answered, so the reset happened and revoked the old key; the value
        # that came back is unusable: the same recovery as a lost answer
        raise Held(
            f"the reset of attempt {attempt} revoked the app's key but its answer carried no "
            f"usable key ({exc}); consumers are failing now. Reset the key in the vendor's "
            "console, give the new key once through `bootstrap: {env: NAME}` (or write it "
            "into the first target by hand), then run `rotator apply`"
        ) from None
    started = time.monotonic()  # the vendor revoked the old key when it answered
    try:
        faults.checkpoint("after-reset", key)
        _roll_out_reset(ctx, minted.key, minted.value, attempt, started)
    except RotatorError as exc:
        return Acted(d.action, key=minted.key, reset_at=started, error=exc)
    return Acted(d.action, key=minted.key, reset_at=started)


def _roll_out_reset(ctx: StepContext, k: VendorKey, value: Secret, attempt: str, started: float) -> None:
    """The second half of a reset: the new value to every store and write-only target at once
    (the consumers are failing until they read it), then verified."""
    key, stores, targets = ctx.key, ctx.stores, ctx.write_only()
    stamp = Stamp(k.id, value.fingerprint, attempt)
    now = ctx.clock()

    first: list[float] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        if i >= len(stores):
            _retried(ctx, lambda: targets[i - len(stores)].write(value, stamp))
            return
        _retried(ctx, lambda: stores[i].stage(value, stamp, expected=None))
        _retried(ctx, lambda: stores[i].promote(attempt, now))
        with lock:
            first.append(time.monotonic() - started)

    # every target at once: the new key is safe as soon as one (readable) holds it
    names = [*(s.name for s in stores), *(t.name for t in targets)]
    errors = _try_all(write, range(len(names)))
    window = time.monotonic() - started
    published = [t for j, t in enumerate(targets) if len(stores) + j not in errors]
    held = [s.name for i, s in enumerate(stores) if i not in errors]
    failed = "; ".join(str(errors[i]) for i in sorted(errors))
    if not held:
        ctx.journal.append(
            "reset-lost",
            key=key,
            attempt=attempt,
            key_id=k.id,
            prefix=k.prefix,
            fingerprint=value.fingerprint,
            targets=[s.name for s in stores],
        )
        for target in published:
            _journal_published(ctx, target, stamp)
        raise Held(
            f"APP DOWN: the app's key was reset (now {show(k)}, attempt {attempt}) and no "
            f"store could take the new one ({failed}); consumers are failing now. Make a "
            "store writable, reset the key in the vendor's console, give the new key once "
            "through `bootstrap: {env: NAME}` (or write it into the first target by hand), "
            "then run `rotator apply`"
        )
    ctx.forget_credential()
    ctx.journal.append(
        "reset",
        key=key,
        attempt=attempt,
        key_id=k.id,
        prefix=k.prefix,
        fingerprint=value.fingerprint,
        first_write_s=round(min(first), 3),
        window_s=round(window, 3),
        targets=held,
        **({"failed": [names[i] for i in sorted(errors)]} if errors else {}),
    )
    for target in published:
        _journal_published(ctx, target, stamp)
    _probe(ctx, value, "reset done but")
    ctx.journal.append("verified", key=key, attempt=attempt, key_id=k.id)
    log.info("%s: reset to %s; consumers could hold a dead key for %.3fs", key, show(k), window)
    if errors:
        raise RotatorError(
            f"reset done: the new key {show(k)} is safe in {', '.join(held)}, but could not "
            f"be written to {failed}; the next pass writes it there"
        )


def _retried(ctx: StepContext, step: Callable[[], None]) -> None:
    """``step``, repeated with back-off while the store fails (the settings' retry bounds)."""
    settings = ctx.settings
    delay = settings.retry_initial
    for left in range(settings.retry_attempts - 1, -1, -1):
        try:
            step()
        except StoreError:
            if not left:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            return


def _check_writable(store: SecretStore) -> None:
    """``store.check_access()``, except that a secret that does not exist yet passes: the
    first stage creates it."""
    try:
        store.check_access()
    except StoreNotFound:
        if store.read().exists:
            raise


def _try_all(fn: Callable[[int], object], indices: Sequence[int] | range) -> dict[int, RotatorError]:
    """Run ``fn`` on every index in parallel; the errors by index."""
    errors: dict[int, RotatorError] = {}

    def guarded(i: int) -> None:
        try:
            fn(i)
        except RotatorError as exc:
            errors[i] = exc

    items = list(indices)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        list(pool.map(guarded, items))
    return errors


def _run_all(fn: Callable[[int], object], indices: Sequence[int] | range) -> None:
    """Run ``fn`` on every index in parallel; raise the first error after all have finished."""
    items = list(indices)
    if len(items) <= 1:
        for i in items:
            fn(i)
        return
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            fn(i)
        except (StoreError, VendorError, RotatorError) as exc:
            errors.append(exc)

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        list(pool.map(guarded, items))
    if errors:
        raise errors[0]
