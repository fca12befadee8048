"""One reconcile pass: for each key, under its lease, observe -> decide -> act (act.py) until the
decision is to wait, hold, fail or rest. Every step is written to the audit journal."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from rotator.abc import Issuer, SecretStore, TargetState, VendorClock, VendorKey
from rotator.audit import Journal
from rotator.engine.act import Actor
from rotator.engine.decide import decide
from rotator.engine.lease import FileLease, Lease
from rotator.engine.model import Decision, Observation, TargetObs, attempt_of
from rotator.errors import (
    Held,
    LeaseBusy,
    RotatorError,
    StoreError,
    Transient,
    VendorAuthError,
)
from rotator.secret import Secret
from rotator.spec import (
    EnvRef,
    RotationFile,
    Settings,
    cron_trigger,
    format_duration,
)

log = logging.getLogger("rotator.engine")

Outcome = Literal["ok", "waiting", "held", "failed", "busy"]
_STORED_EVENTS = frozenset({"staged", "promoted", "reset"})
"""Journal events that mean an attempt's key reached a target."""
MAX_STEPS = 16
"""Acting steps one key may take in one pass; a rotation needs about six. Waits are not steps."""
WAIT_MARGIN = timedelta(minutes=10)
"""``--wait`` gives up at the key's ``verify.timeout`` plus this margin (for the steps before
promotion) unless ``--wait-timeout`` says otherwise: by then the drain has ended in a revoke or
a hold."""
WAIT_POLL = 5.0
"""Seconds between observations while ``--wait`` follows a long wait (the vendor is asked
once per poll; the progress view counts down on its own)."""
LEASE_POLL = 1.0
"""Seconds between attempts to take a lease another runner holds (``--lock-timeout``)."""
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
"""Back-off of ``--wait`` after a transient error: 1 s, doubling, at most 30 s."""


@dataclass
class KeyResult:
    """How a pass left one key."""

    key: str
    outcome: Outcome
    phase: str
    message: str
    steps: list[str] = field(default_factory=list)
    until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "outcome": self.outcome,
            "phase": self.phase,
            "message": self.message,
            "steps": self.steps,
            "until": self.until.isoformat() if self.until else None,
        }


Progress = Callable[[str, Decision], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _outcome(d: Decision) -> Outcome:
    return {"wait": "waiting", "hold": "held", "fail": "failed"}.get(d.action, "ok")  # type: ignore[return-value]


class Engine:
    """Reconciles the keys of one rotation file."""

    def __init__(
        self,
        spec: RotationFile,
        *,
        base_dir: Path,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = utcnow,
        issuer_factory: Callable[..., Issuer] | None = None,
        store_factory: Callable[..., SecretStore] | None = None,
        lease: Lease | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.spec = spec
        self.base_dir = base_dir
        self.settings = settings or Settings()
        state_dir = self.settings.state_dir or Path(spec.state_dir)
        self.state_dir = state_dir if state_dir.is_absolute() else base_dir / state_dir
        self.clock = clock
        # leases and journal only, created by the first write: read-only commands write nothing
        self.journal = Journal(self.state_dir)
        self.lease: Lease = lease if lease is not None else make_lease(spec, self.state_dir)
        self._issuer_factory = issuer_factory
        self._store_factory = store_factory
        self._stores: dict[str, list[SecretStore]] = {}
        self._issuers: dict[str, Issuer] = {}
        self._credentials: dict[str, Secret] = {}
        self._actor = Actor(self)
        self.last_reset: dict[str, float] = {}
        """Per key, ``time.monotonic()`` when the vendor answered the last reset (a reset
        revokes the old key at that instant)."""
        self.stopping = threading.Event()
        """Set it (e.g. on SIGTERM) to finish the step in hand and end the pass."""
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self.stopping.wait
        """How waits pause (``--wait`` polls, back-off, ``--lock-timeout``): by default an
        interruptible wait on :attr:`stopping`; a test passes one that advances its fake clock."""

    def close(self) -> None:
        """Close the vendor clients' connections."""
        for issuer in self._issuers.values():
            close = getattr(issuer, "close", None)
            if close is not None:
                close()
        self._issuers.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ wiring

    def stores(self, key: str) -> list[SecretStore]:
        if key not in self._stores:
            factory = self._store_factory
            if factory is None:
                from providers import open_store

                factory = open_store
            self._stores[key] = [factory(t, base_dir=self.base_dir) for t in self.spec.keys[key].targets]
        return self._stores[key]

    def issuer(self, key: str) -> Issuer:
        if key not in self._issuers:
            factory = self._issuer_factory
            if factory is None:
                from rotator.vendors import RetryPolicy, make_issuer

                s = self.settings
                retry = RetryPolicy(
                    attempts=s.retry_attempts, initial=s.retry_initial, max_total=s.retry_max_total
                )

                def factory(*a: Any, **kw: Any) -> Issuer:
                    return make_issuer(*a, retry=retry, **kw)

            spec = self.spec.keys[key]
            issuer_spec = self.spec.issuers[spec.issuer]
            self._issuers[key] = factory(issuer_spec, spec, credential=lambda: self._credential(key))
        return self._issuers[key]

    def _credential(self, key: str) -> Secret:
        """The management credential for ``key``'s issuer (for reset vendors: the key itself)."""
        source = self.spec.issuers[self.spec.keys[key].issuer].management_credential(key)
        if source is None:
            raise RotatorError(f"issuer {self.spec.keys[key].issuer}: uses the SDK's credentials, not a key")
        if isinstance(source, EnvRef):
            value = os.environ.get(source.env)
            if not value:
                raise RotatorError(
                    f"issuer {self.spec.keys[key].issuer}: environment variable {source.env} is not set"
                )
            return Secret(value)
        ref = source.key
        if ref not in self._credentials:
            for store in self.stores(ref):
                state = store.read()
                if state.current is not None:
                    self._credentials[ref] = state.current.value
                    break
            else:
                boot = self._bootstrap(ref)
                if boot is None:
                    raise RotatorError(f"key {ref}: no target holds a current value to authenticate with")
                self._credentials[ref] = boot
        return self._credentials[ref]

    def _bootstrap(self, key: str) -> Secret | None:
        boot = self.spec.keys[key].bootstrap
        value = os.environ.get(boot.env) if boot else None
        return Secret(value) if value else None

    def _forget_credential(self, key: str) -> None:
        self._credentials.pop(key, None)

    def credential_keys(self) -> set[str]:
        """Keys that are some issuer's management credential: rotated after the others."""
        return {ref for i in self.spec.issuers.values() if (ref := i.credential_key()) is not None}

    # ------------------------------------------------------------------ observe

    def observe(self, key: str, *, force: bool = False) -> Observation:
        stores = self.stores(key)
        with ThreadPoolExecutor(max_workers=max(1, len(stores))) as pool:
            targets = tuple(pool.map(_read_target, stores))
        issuer = self.issuer(key)
        bootstrap = self._bootstrap(key)
        if issuer.capabilities.overlap:
            vendor = tuple(issuer.list_keys())
        else:
            vendor = self._list_with_stored_key(key, issuer, targets, bootstrap)
        spec = self.spec.keys[key]
        newest = max((k.created_at for k in vendor if k.active), default=None)
        fire = None
        if spec.schedule and newest is not None:
            trigger = cron_trigger(spec.schedule)
            fire = trigger.get_next_fire_time(None, newest + timedelta(microseconds=1))
        owners: dict[str, tuple[str, ...]] = {}
        values = [v.value for t in targets if t.state for v in (t.state.current, t.state.pending) if v]
        for value in [*values, *([bootstrap] if bootstrap else [])]:
            owners[value.fingerprint] = tuple(k.id for k in vendor if issuer.matches(value, k))
        rejected = self._probe_adoptions(issuer, targets, owners)
        now = self.clock()
        vendor_now = issuer.vendor_now() if isinstance(issuer, VendorClock) else None
        return Observation(
            clock_offset=None if vendor_now is None else vendor_now - now,
            stored_attempts=self._stored_attempts(key, vendor, owners),
            rejected=rejected,
            owners=owners,
            delete_after=self.spec.issuers[spec.issuer].revoke_delay(),
            key=key,
            now=now,
            vendor=vendor,
            targets=targets,
            capabilities=issuer.capabilities,
            strategy=self.spec.strategy(key),
            policy=self.spec.verify(key),
            max_age=self.spec.max_age(key),
            next_schedule_fire=fire,
            force=force,
            bootstrap=bootstrap,
        )

    @staticmethod
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
        self, key: str, vendor: Sequence[VendorKey], owners: Mapping[str, tuple[str, ...]]
    ) -> frozenset[str]:
        """The attempts of active keys no target holds that the journal shows stored once."""
        held = {k for ids in owners.values() for k in ids}
        unheld = {
            a for k in vendor if k.active and k.id not in held and (a := attempt_of(key, k))
        }
        if not unheld:
            return frozenset()
        return frozenset(
            e["attempt"]
            for e in self.journal.entries(key)
            if e.get("event") in _STORED_EVENTS and e.get("attempt") in unheld
        )

    def _list_with_stored_key(
        self, key: str, issuer: Issuer, targets: Sequence[TargetObs], bootstrap: Secret | None
    ) -> tuple[Any, ...]:
        """A reset vendor is read with the app's own key: try each stored value until one works."""
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
            self._credentials[key] = value
            try:
                return tuple(issuer.list_keys())
            except VendorAuthError as exc:
                if value == bootstrap:
                    boot_refused = exc
                continue
        self._forget_credential(key)
        if bootstrap is not None and boot_refused is not None:
            self._check_bootstrap_refusal(key, bootstrap, boot_refused, stored)
        return ()

    def _check_bootstrap_refusal(
        self, key: str, bootstrap: Secret, exc: VendorAuthError, stored: Sequence[Secret]
    ) -> None:
        """A refused bootstrap key that was never this key's is a wrong key, not a lost reset:
        say so (advice to reset in the console would revoke the app's working key)."""
        if exc.status == 401 and (
            bootstrap in stored
            or any(
                e.get("details", {}).get("fingerprint") == bootstrap.fingerprint
                for e in self.journal.entries(key)
            )
        ):
            return  # once the app's key, revoked since: decide's lost-reset diagnosis holds
        spec = self.spec.keys[key]
        app = getattr(self.spec.issuers[spec.issuer], "app_id", None)
        whose = f"app {app}" if app else f"issuer {spec.issuer}"
        answer = {401: "the vendor answered 401: unknown or revoked", None: "not a well-formed key"}.get(
            exc.status, f"the vendor answered {exc.status}"
        )
        env = f"${spec.bootstrap.env}" if spec.bootstrap else "the bootstrap variable"
        raise RotatorError(
            f"the bootstrap key is not a key of {whose} ({answer}); "
            f"set {env} to {whose}'s current key and run `rotator apply` again"
        )

    # ------------------------------------------------------------------ passes

    def plan(self, keys: Sequence[str], *, force: bool = False) -> list[tuple[str, Decision]]:
        """What each key needs now and why; writes nothing."""
        out = []
        for key in keys:
            try:
                out.append((key, decide(self.observe(key, force=force))))
            except RotatorError as exc:
                out.append((key, Decision("fail", "failed", str(exc))))
        return out

    def apply(
        self,
        keys: Sequence[str],
        *,
        force: bool = False,
        wait: bool = False,
        parallel: int | None = None,
        progress: Progress | None = None,
        wait_timeout: timedelta | None = None,
        lock_timeout: timedelta = timedelta(0),
    ) -> list[KeyResult]:
        """One pass over ``keys``: issuer credentials' own keys go last (DESIGN.md)."""
        own = self.credential_keys()
        waves = [[k for k in keys if k not in own], [k for k in keys if k in own]]
        results: dict[str, KeyResult] = {}
        workers = parallel or self.settings.parallel
        for wave in waves:
            if not wave:
                continue
            with ThreadPoolExecutor(max_workers=min(workers, len(wave))) as pool:
                for result in pool.map(
                    lambda k: self.reconcile(
                        k,
                        force=force,
                        wait=wait,
                        progress=progress,
                        wait_timeout=wait_timeout,
                        lock_timeout=lock_timeout,
                    ),
                    wave,
                ):
                    results[result.key] = result
        return [results[k] for k in keys]

    def reconcile(
        self,
        key: str,
        *,
        force: bool = False,
        wait: bool = False,
        progress: Progress | None = None,
        attempt: str | None = None,
        stop_before: Collection[str] = (),
        wait_timeout: timedelta | None = None,
        lock_timeout: timedelta = timedelta(0),
    ) -> KeyResult:
        """Drive one key as far as it safely goes now (or, with ``wait``, to rest).

        ``attempt`` names the rotation a mint or reset starts (a Secrets Manager rotation
        token); ``stop_before`` ends the pass, without acting, at the first decision whose
        action it names (a rotation Lambda's steps map onto these). ``wait_timeout`` bounds
        ``wait`` (default: :data:`WAIT_MARGIN` past the key's ``verify.timeout``);
        ``lock_timeout`` is how long to wait for a lease another runner holds.
        """
        try:
            with self.take_lease(key, lock_timeout) as lease:
                limit = wait_timeout or timedelta(0)
                if wait and wait_timeout is None:
                    limit = self.default_wait_timeout(key)
                return self._reconcile(
                    key, force, wait, progress, attempt, stop_before, lease, wait_timeout=limit
                )
        except LeaseBusy as exc:
            return KeyResult(key, "busy", "unknown", f"skipped: held by {exc.holder}")
        except RotatorError as exc:  # the lease store itself failed (e.g. DynamoDB unreachable)
            return KeyResult(key, "failed", "failed", f"cannot take the lease: {exc}")

    def default_wait_timeout(self, key: str) -> timedelta:
        """How long ``--wait`` follows ``key`` unless told: its ``verify.timeout`` plus
        :data:`WAIT_MARGIN`."""
        return self.spec.verify(key).timeout + WAIT_MARGIN

    @contextmanager
    def take_lease(self, key: str, timeout: timedelta = timedelta(0)) -> Iterator[object]:
        """Hold ``key``'s lease for the ``with`` block, polling up to ``timeout`` (Terraform's
        ``-lock-timeout``) while another runner holds it.

        :raises LeaseBusy: when it is still held at the end of ``timeout``, or on a stop.
        """
        deadline = self.clock() + timeout
        with ExitStack() as stack:
            while True:
                try:
                    lease = stack.enter_context(self.lease.acquire(key))
                    break
                except LeaseBusy:
                    left = (deadline - self.clock()).total_seconds()
                    if left <= 0 or self.stopping.is_set():
                        raise
                    self._sleep(min(LEASE_POLL, left))
            yield lease

    def reconcile_locked(
        self, key: str, *, force: bool = False, stop_before: Collection[str] = ()
    ) -> KeyResult:
        """:meth:`reconcile` for a caller that already holds the key's lease (emergency)."""
        return self._reconcile(key, force, False, None, None, stop_before, None)

    def _reconcile(
        self,
        key: str,
        force: bool,
        wait: bool,
        progress: Progress | None,
        attempt: str | None,
        stop_before: Collection[str],
        lease: object | None,
        *,
        wait_timeout: timedelta = timedelta(0),
    ) -> KeyResult:
        steps: list[str] = []
        decision = Decision("fail", "failed", "no step taken")
        give_up = self.clock() + wait_timeout
        backoff = BACKOFF_FIRST
        while True:
            if _lease_lost(lease):  # a lease that could not be renewed: another runner may act
                decision = Decision("fail", "failed", "lost the lease on this key; stopped between steps")
                break
            if self.stopping.is_set():
                decision = Decision(
                    "wait",
                    decision.phase if steps or decision.action == "wait" else "current",
                    "stopped before the next step; the next pass resumes",
                    until=decision.until,
                )
                break
            try:
                obs = self.observe(key, force=force)
                decision = decide(obs)
                if progress:
                    progress(key, decision)
                if wait and decision.action == "fail" and _unreadable_for_now(obs):
                    raise _TargetsDown(decision.reason)
                if decision.action == "wait" and wait:
                    if self.clock() >= give_up:
                        decision = _gave_up(key, decision, wait_timeout)
                        break
                    backoff = BACKOFF_FIRST
                    self._sleep_until(decision.until, give_up)
                    continue
                if decision.terminal or decision.action in stop_before:
                    break
                if len(steps) >= MAX_STEPS:  # only acting steps count: a wait of any length is none
                    decision = Decision(
                        "fail", "failed", f"no rest after {MAX_STEPS} steps; next: {decision.reason}"
                    )
                    break
                self._actor.act(key, decision, attempt)
                steps.append(decision.action)
                if decision.action in ("mint", "reset"):
                    force = False  # a requested rotation is served once
            except Held as exc:
                decision = Decision("hold", "held", str(exc))
                break
            except RotatorError as exc:
                decision = Decision("fail", "failed", str(exc))
                if not (wait and isinstance(exc, Transient) and self._back_off(key, exc, backoff, give_up)):
                    break
                backoff = min(backoff * 2, BACKOFF_MAX)
        if decision.action in ("hold", "fail"):
            self.journal.append(
                "held" if decision.action == "hold" else "failed", key=key, reason=decision.reason
            )
            log.warning("%s: %s", key, decision.reason, extra={"key": key, "phase": decision.phase})
        return KeyResult(key, _outcome(decision), decision.phase, decision.reason, steps, decision.until)

    def _back_off(self, key: str, exc: Transient, backoff: float, give_up: datetime) -> bool:
        """``--wait`` rides out what serve's next ticks would (the vendor or a store briefly
        down): pause, then the next observation decides afresh, so a half-done step is redone
        safely. False when the pause would reach ``give_up``."""
        pause = max(backoff, exc.retry_after or 0.0)
        if self.clock() + timedelta(seconds=pause) >= give_up:
            return False
        log.warning("%s: %s; retrying in %s", key, exc, format_duration(timedelta(seconds=pause)))
        self._sleep(pause)
        return True

    def _sleep_until(self, until: datetime | None, give_up: datetime) -> None:
        """One ``--wait`` poll: until the wait ends, at most :data:`WAIT_POLL` and never past
        ``give_up``; a wait with no end in sight (or already past it) polls every second."""
        now = self.clock()
        end = min(until, give_up) if until is not None else give_up
        left = (end - now).total_seconds()
        pause = min(left, WAIT_POLL) if left > 0 and until is not None and until > now else 1.0
        self._sleep(max(pause, 0.05))


class _TargetsDown(Transient):
    """Some targets could not be read, each for a transient reason (e.g. a dropped connection)."""


def _unreadable_for_now(obs: Observation) -> bool:
    broken = [t for t in obs.targets if t.error is not None]
    return bool(broken) and all(t.transient for t in broken)


def _gave_up(key: str, decision: Decision, limit: timedelta) -> Decision:
    """The ``waiting`` result of a ``--wait`` that reached its ``--wait-timeout``."""
    return Decision(
        "wait",
        decision.phase,
        f"stopped waiting after {format_duration(limit)} (--wait-timeout); the rotation goes on: "
        f"{decision.reason}; resume with `rotator apply {key} --wait` or let the next pass finish it",
        until=decision.until,
        key_id=decision.key_id,
        promoted_at=decision.promoted_at,
    )


def make_lease(spec: RotationFile, state_dir: Path) -> Lease:
    """The lease backend the rotation file chooses."""
    if spec.lease.type == "dynamodb":
        from rotator.engine.lease_dynamodb import DynamoDBLease

        lease: Lease = DynamoDBLease(spec.lease)
        return lease
    return FileLease(state_dir)


def _lease_lost(lease: object | None) -> bool:
    """True when a renewable lease (DynamoDB) reports it was lost; file leases cannot be."""
    lost = getattr(lease, "lost", None)
    return isinstance(lost, threading.Event) and lost.is_set()


def _read_target(store: SecretStore) -> TargetObs:
    try:
        state: TargetState = store.read()
    except StoreError as exc:
        return TargetObs(store.name, None, str(exc), transient=isinstance(exc, Transient))
    return TargetObs(store.name, state)
