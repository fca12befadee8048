"""Act: take the one step ``decide`` chose. The only code that writes to vendors and stores.

Every step is journalled, and each step boundary is a crash checkpoint (``faults``), so the
tests can prove that a process killed anywhere leaves a world the next pass can finish.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from rotator.abc import SecretStore, Stamp, format_time
from rotator.engine import faults
from rotator.engine.decide import show
from rotator.engine.model import Decision, attempt_name
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

if TYPE_CHECKING:
    from rotator.engine.runner import Engine

log = logging.getLogger("rotator.engine")


class Actor:
    """The steps of a rotation, for one :class:`~rotator.engine.runner.Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def act(self, key: str, d: Decision, attempt: str | None) -> None:
        """Take the step ``d`` decided for ``key``."""
        if d.action == "mint":
            self._mint(key, d, attempt or str(uuid.uuid4()))
        elif d.action == "reset":
            self._reset(key, d, attempt or str(uuid.uuid4()))
        else:
            {"stage": self._stage, "promote": self._promote, "revoke": self._revoke}[d.action](key, d)

    def _mint(self, key: str, d: Decision, attempt: str) -> None:
        issuer, stores = self.engine.issuer(key), self.engine.stores(key)
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
        self.engine.journal.append(
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
        self.engine.journal.append("staged", key=key, attempt=attempt, key_id=k.id, targets=[first.name])
        faults.checkpoint("after-stage-first", key)

    def _stage(self, key: str, d: Decision) -> None:
        assert d.version is not None and d.version.stamp is not None
        stores = self.engine.stores(key)
        # the revisions the decision was made on: a write since then is a conflict, not lost
        expected = dict(zip(d.targets, d.revisions or (None,) * len(d.targets), strict=True))
        version, stamp = d.version, d.version.stamp
        cutover = self.engine.spec.strategy(key) == "cutover"

        def write(i: int) -> None:
            stores[i].stage(version.value, stamp, expected=expected[i])
            if cutover:  # a reset vendor's key is already live: no reason to keep it pending
                stores[i].promote(stamp.attempt, self.engine.clock())

        _run_all(write, d.targets)
        names = [stores[i].name for i in d.targets]
        self.engine.journal.append(
            "promoted" if cutover else "staged",
            key=key,
            attempt=stamp.attempt,
            key_id=stamp.key_id,
            fingerprint=stamp.fingerprint,
            targets=names,
        )
        if cutover:
            self.engine._forget_credential(key)
        faults.checkpoint("after-stage", key)

    def _probe(self, key: str, value: Secret, what: str) -> None:
        issuer = self.engine.issuer(key)
        deadline = time.monotonic() + self.engine.settings.probe_timeout
        delay = 0.2
        while not issuer.probe(value):
            if time.monotonic() >= deadline:
                raise Held(
                    f"{what}: the vendor rejects the new key (fingerprint {value.fingerprint}) "
                    f"after {self.engine.settings.probe_timeout:.0f}s of probing; the old key keeps serving"
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _promote(self, key: str, d: Decision) -> None:
        assert d.version is not None and d.version.stamp is not None and d.promoted_at is not None
        stamp = d.version.stamp
        self._probe(key, d.version.value, "not promoting")
        stores = self.engine.stores(key)
        when = d.promoted_at
        _run_all(lambda i: stores[i].promote(stamp.attempt, when), d.targets)
        self.engine._forget_credential(key)
        self.engine.journal.append(
            "promoted",
            key=key,
            attempt=stamp.attempt,
            key_id=stamp.key_id,
            fingerprint=stamp.fingerprint,
            promoted_at=format_time(when),
            targets=[stores[i].name for i in d.targets],
        )
        faults.checkpoint("after-promote", key)

    def _revoke(self, key: str, d: Decision) -> None:
        assert d.key_id is not None
        issuer = self.engine.issuer(key)
        if d.phase == "draining":
            # invariant 1: the new key works and every target reads it back before any revoke
            current = [s.read().current for s in self.engine.stores(key)]
            fps = {c.fingerprint if c else None for c in current}
            if len(fps) != 1 or None in fps:
                raise Held("not revoking: the targets no longer agree on the current key")
            value = current[0]
            assert value is not None
            self._probe(key, value.value, "not revoking the old key")
        revoked = issuer.revoke(d.key_id)
        event = {"draining": "revoked", "revoked": "deleted"}.get(d.phase, "orphan-revoked")
        self.engine.journal.append(event, key=key, key_id=revoked.id, prefix=revoked.prefix, reason=d.reason)
        self._retire(key, revoked.id)
        faults.checkpoint("after-revoke", key)

    def _retire(self, key: str, key_id: str) -> None:
        """Stores that can (GCP) disable old versions holding a revoked key, so no consumer
        pinned to one keeps a dead key. Best effort: the revoke itself already happened."""
        for store in self.engine.stores(key):
            retire = getattr(store, "retire", None)
            if retire is None:
                continue
            try:
                versions = retire(key_id)
            except StoreError as exc:
                log.warning("%s: could not disable old versions in %s: %s", key, store.name, exc)
                continue
            if versions:
                self.engine.journal.append(
                    "retired", key=key, key_id=key_id, target=store.name, versions=versions
                )

    def _reset(self, key: str, d: Decision, attempt: str) -> None:
        """Cutover: a reset revokes the old key at once, so every store is checked first
        (a real write where the store allows one) and the new value goes to every store at
        once, each retried with back-off: it is safe as soon as one holds it."""
        stores, issuer = self.engine.stores(key), self.engine.issuer(key)
        current = self.engine._credential(key)
        _run_all(lambda i: stores[i].check_access(), range(len(stores)))
        self.engine.journal.append("reset-started", key=key, attempt=attempt, old_key_id=d.key_id)
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
        started = time.monotonic()
        self.engine.last_reset[key] = started  # the vendor revoked the old key when it answered
        faults.checkpoint("after-reset", key)
        k, value = minted.key, minted.value
        stamp = Stamp(k.id, value.fingerprint, attempt)
        now = self.engine.clock()

        first: list[float] = []
        lock = threading.Lock()

        def write(i: int) -> None:
            self._retried(lambda: stores[i].stage(value, stamp, expected=None))
            self._retried(lambda: stores[i].promote(attempt, now))
            with lock:
                first.append(time.monotonic() - started)

        # every target at once: the new key is safe as soon as one holds it
        errors = _try_all(write, range(len(stores)))
        window = time.monotonic() - started
        held = [s.name for i, s in enumerate(stores) if i not in errors]
        failed = "; ".join(str(errors[i]) for i in sorted(errors))
        if not held:
            self.engine.journal.append(
                "reset-lost", key=key, attempt=attempt, key_id=k.id, prefix=k.prefix,
                fingerprint=value.fingerprint, targets=[s.name for s in stores],
            )
            raise Held(
                f"APP DOWN: the app's key was reset (now {show(k)}, attempt {attempt}) and no "
                f"store could take the new one ({failed}); consumers are failing now. Make a "
                "store writable, reset the key in the vendor's console, give the new key once "
                "through `bootstrap: {env: NAME}` (or write it into the first target by hand), "
                "then run `rotator apply`"
            )
        self.engine._forget_credential(key)
        self.engine.journal.append(
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
        self._probe(key, value, "reset done but")
        self.engine.journal.append("verified", key=key, attempt=attempt, key_id=k.id)
        log.info("%s: reset to %s; consumers could hold a dead key for %.3fs", key, show(k), window)
        if errors:
            raise RotatorError(
                f"reset done: the new key {show(k)} is safe in {', '.join(held)}, but could not "
                f"be written to {failed}; the next pass writes it there"
            )

    def _retried(self, step: Callable[[], None]) -> None:
        """``step``, repeated with back-off while the store fails (the settings' retry bounds)."""
        settings = self.engine.settings
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
