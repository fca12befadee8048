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
from dataclasses import dataclass
from datetime import datetime

from rotator.abc import Issuer, Reactivating, Retiring, SecretStore, Stamp, VendorKey, format_time
from rotator.audit import Journal
from rotator.engine import faults
from rotator.engine.decide import show
from rotator.engine.model import (
    Decision,
    Delete,
    Mint,
    Order,
    Promote,
    Reactivate,
    Reset,
    Revoke,
    RevokeLeaked,
    RevokeOrphan,
    Stage,
    attempt_name,
)
from rotator.errors import (
    Held,
    KeyLimitReached,
    RotatorError,
    StoreError,
    StoreNotFound,
    VendorError,
    VendorOutcomeUnknown,
    VendorProtocolError,
)
from rotator.secret import Secret
from rotator.spec import Settings

log = logging.getLogger("rotator.engine")


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


def act(ctx: StepContext, step: Decision | Order, attempt: str | None = None) -> Acted:
    """Take ``step`` for ``ctx.key``; ``attempt`` names the rotation a mint or reset starts."""
    match step:
        case Mint():
            return _mint(ctx, step, attempt or str(uuid.uuid4()))
        case Reset():
            return _reset(ctx, step, attempt or str(uuid.uuid4()))
        case Stage():
            return _stage(ctx, step)
        case Promote():
            return _promote(ctx, step)
        case Revoke() | Delete() | RevokeOrphan():
            return _revoke(ctx, step)
        case _:
            return _order(ctx, step)


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
    _run_all(lambda i: _check_writable(stores[i]), range(len(stores)))
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
        _probe(ctx, value.value, "not revoking the old key")
    revoked = ctx.issuer.revoke(d.key_id)
    event = {Revoke: "revoked", Delete: "deleted"}.get(type(d), "orphan-revoked")
    ctx.journal.append(event, key=key, key_id=revoked.id, prefix=revoked.prefix, reason=d.reason)
    _retire(ctx, revoked.id)
    faults.checkpoint("after-revoke", key)
    return Acted(d.action, key=revoked)


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
    _run_all(lambda i: stores[i].check_access(), range(len(stores)))
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
    """The second half of a reset: the new value to every store at once, then verified."""
    key, stores = ctx.key, ctx.stores
    stamp = Stamp(k.id, value.fingerprint, attempt)
    now = ctx.clock()

    first: list[float] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        _retried(ctx, lambda: stores[i].stage(value, stamp, expected=None))
        _retried(ctx, lambda: stores[i].promote(attempt, now))
        with lock:
            first.append(time.monotonic() - started)

    # every target at once: the new key is safe as soon as one holds it
    errors = _try_all(write, range(len(stores)))
    window = time.monotonic() - started
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
        **({"failed": [stores[i].name for i in sorted(errors)]} if errors else {}),
    )
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
