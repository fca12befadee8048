"""One reconcile pass: for each key, under its lease, observe (observe.py) -> decide (decide.py)
-> act (act.py) until the decision is to wait, hold, fail or rest. Every step is written to the
audit journal.

Imports go one way: this module wires the three; observe, decide and act import only the
model (act also decide's naming helper), never this module or each other's state."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from rotator.abc import Closeable, Consumer, Issuer, Lease, Losable, SecretStore, WriteOnlyTarget
from rotator.audit import Journal
from rotator.engine.act import Acted, StepContext
from rotator.engine.act import act as take_step
from rotator.engine.decide import decide, when
from rotator.engine.lease import FileLease
from rotator.engine.model import Decision, Fail, Hold, Mint, Observation, Order, Reset, Roll, Wait
from rotator.engine.observe import ObserveContext, observe
from rotator.errors import (
    Held,
    LeaseBusy,
    RotatorError,
    Transient,
)
from rotator.secret import Secret
from rotator.spec import (
    EnvRef,
    RotationFile,
    Settings,
    format_duration,
)

log = logging.getLogger("rotator.engine")

Outcome = Literal["ok", "waiting", "held", "failed", "busy"]
MAX_STEPS = 16
"""Acting steps one key may take in one pass; a rotation needs about six (eight with write-only
targets and consumers). Waits are not steps, nor is a roll that failed (a wait to retry it)."""
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
    reset_at: float | None = field(default=None, repr=False)
    """``time.monotonic()`` when the vendor answered this pass's reset (it revoked the old
    key then); not part of the result people see."""

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
    if isinstance(d, Wait):
        return "waiting"
    if isinstance(d, Hold):
        return "held"
    return "failed" if isinstance(d, Fail) else "ok"


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
        write_only_factory: Callable[..., WriteOnlyTarget] | None = None,
        consumer_factory: Callable[..., Consumer] | None = None,
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
        self._write_only_factory = write_only_factory
        self._consumer_factory = consumer_factory
        self._stores: dict[str, list[SecretStore]] = {}
        self._write_only: dict[str, list[WriteOnlyTarget]] = {}
        self._consumers: dict[str, list[Consumer]] = {}
        self._issuers: dict[str, Issuer] = {}
        self._credentials: dict[str, Secret] = {}
        self.stopping = threading.Event()
        """Set it (e.g. on SIGTERM) to finish the step in hand and end the pass."""
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self.stopping.wait
        """How waits pause (``--wait`` polls, back-off, ``--lock-timeout``): by default an
        interruptible wait on :attr:`stopping`; a test passes one that advances its fake clock."""

    def close(self) -> None:
        """Close the vendor clients' connections."""
        for issuer in self._issuers.values():
            if isinstance(issuer, Closeable):
                issuer.close()
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
            self._stores[key] = [
                factory(t, base_dir=self.base_dir) for t in self.spec.keys[key].readable_targets()
            ]
        return self._stores[key]

    def write_only(self, key: str) -> list[WriteOnlyTarget]:
        """``key``'s write-only targets, in file order (opened once)."""
        if key not in self._write_only:
            factory = self._write_only_factory
            self._write_only[key] = [
                factory(t, base_dir=self.base_dir) if factory else t.open_write_only(base_dir=self.base_dir)
                for t in self.spec.keys[key].write_only_targets()
            ]
        return self._write_only[key]

    def consumers(self, key: str) -> list[Consumer]:
        """``key``'s consumers, in file order (opened once, when a roll first needs them). Each
        is journalled under its name, which must be its declaration's label."""
        if key not in self._consumers:
            factory = self._consumer_factory
            opened = []
            for model in self.spec.keys[key].consumers:
                consumer = (
                    factory(model, key=key, base_dir=self.base_dir)
                    if factory
                    else model.make_consumer(key=key, base_dir=self.base_dir)
                )
                if consumer.name != model.label():
                    raise RotatorError(
                        f"consumer {model.label()}: its plugin names it {consumer.name!r}; a consumer "
                        "must carry its declaration's label (the journal records its rolls under it)"
                    )
                opened.append(consumer)
            self._consumers[key] = opened
        return self._consumers[key]

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

    # ------------------------------------------------------------------ observe and act

    def observe(self, key: str, *, force: bool = False, emergency: bool = False) -> Observation:
        """What ``decide`` needs about ``key``, read now (observe.py)."""

        def use_credential(value: Secret | None) -> None:
            if value is None:
                self._forget_credential(key)
            else:
                self._credentials[key] = value

        ctx = ObserveContext(
            key=key,
            spec=self.spec,
            issuer=self.issuer(key),
            stores=tuple(self.stores(key)),
            journal=self.journal,
            clock=self.clock,
            bootstrap=self._bootstrap(key),
            use_credential=use_credential,
            write_only=tuple(t.name for t in self.write_only(key)),
            consumers=tuple(c.label() for c in self.spec.keys[key].consumers),
        )
        return observe(ctx, force=force, emergency=emergency)

    def step_context(self, key: str, lease: object | None = None) -> StepContext:
        """What one step of ``key`` may touch (act.py)."""
        return StepContext(
            key=key,
            issuer=self.issuer(key),
            stores=tuple(self.stores(key)),
            journal=self.journal,
            clock=self.clock,
            settings=self.settings,
            credential=lambda: self._credential(key),
            forget_credential=lambda: self._forget_credential(key),
            lease=lease,
            write_only=lambda: self.write_only(key),
            consumers=lambda: self.consumers(key),
            stop=self.stopping,
        )

    def act(
        self, key: str, step: Decision | Order, attempt: str | None = None, *, lease: object | None = None
    ) -> Acted:
        """Take ``step`` for ``key`` (the caller holds its lease): the one path that writes."""
        return take_step(self.step_context(key, lease), step, attempt)

    # ------------------------------------------------------------------ passes

    def plan(self, keys: Sequence[str], *, force: bool = False) -> list[tuple[str, Decision]]:
        """What each key needs now and why; writes nothing."""
        out = []
        for key in keys:
            try:
                out.append((key, decide(self.observe(key, force=force))))
            except RotatorError as exc:
                out.append((key, Fail(str(exc))))
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
        self, key: str, *, force: bool = False, stop_before: Collection[str] = (), emergency: bool = False
    ) -> KeyResult:
        """:meth:`reconcile` for a caller that already holds the key's lease (emergency: its
        consumers are told the roll is an emergency's)."""
        return self._reconcile(key, force, False, None, None, stop_before, None, emergency=emergency)

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
        emergency: bool = False,
    ) -> KeyResult:
        run = _Run(key, force, wait, wait_timeout, self.clock() + wait_timeout, emergency=emergency)
        while True:
            stop = self._interrupted(run, lease)
            if stop is not None:
                run.decision = stop
                break
            try:
                if not self._step(run, progress, attempt, stop_before, lease):
                    break
            except Held as exc:
                run.decision = Hold(str(exc))
                break
            except RotatorError as exc:
                run.decision = Fail(str(exc))
                if not (wait and isinstance(exc, Transient)):
                    break
                if not self._back_off(key, exc, run.backoff, run.give_up):
                    break
                run.backoff = min(run.backoff * 2, BACKOFF_MAX)
        decision = run.decision
        if isinstance(decision, Hold | Fail):
            self.journal.append(
                "held" if decision.action == "hold" else "failed", key=key, reason=decision.reason
            )
            log.warning("%s: %s", key, decision.reason, extra={"key": key, "phase": decision.phase})
        return KeyResult(
            key, _outcome(decision), decision.phase, decision.reason, run.steps, decision.until, run.reset_at
        )

    def _interrupted(self, run: _Run, lease: object | None) -> Decision | None:
        """Why the pass stops before its next step, if it does."""
        if _lease_lost(lease):  # a lease that could not be renewed: another runner may act
            return Fail("lost the lease on this key; stopped between steps")
        if self.stopping.is_set():
            last = run.decision
            return Wait(
                last.phase if run.steps or isinstance(last, Wait) else "current",
                "stopped before the next step; the next pass resumes",
                until=last.until,
            )
        return None

    def _step(
        self,
        run: _Run,
        progress: Progress | None,
        attempt: str | None,
        stop_before: Collection[str],
        lease: object | None,
    ) -> bool:
        """Observe, decide and (unless the pass ends here) act once; False when the pass ends."""
        obs = self.observe(run.key, force=run.force, emergency=run.emergency)
        run.decision = decision = decide(obs)
        if progress:
            progress(run.key, decision)
        if run.wait and isinstance(decision, Fail) and _unreadable_for_now(obs):
            raise _TargetsDown(decision.reason)
        if isinstance(decision, Wait) and run.wait:
            if self.clock() >= run.give_up:
                run.decision = _gave_up(run.key, decision, run.limit)
                return False
            run.backoff = BACKOFF_FIRST
            self._sleep_until(decision.until, run.give_up)
            return True
        if decision.terminal or decision.action in stop_before:
            return False
        if len(run.steps) - run.retries >= MAX_STEPS:  # only acting steps count: no wait is one
            run.decision = Fail(f"no rest after {MAX_STEPS} steps; next: {decision.reason}")
            return False
        return self._take(run, decision, progress, attempt, lease)

    def _take(
        self,
        run: _Run,
        decision: Decision,
        progress: Progress | None,
        attempt: str | None,
        lease: object | None,
    ) -> bool:
        """Act on ``decision``; False when the pass ends."""
        acted = self.act(run.key, decision, attempt, lease=lease)
        if acted.reset_at is not None:
            run.reset_at = acted.reset_at
        if acted.error is not None:
            raise acted.error
        run.steps.append(decision.action)
        if isinstance(decision, Roll) and acted.roll_failures:
            return self._roll_later(run, decision, acted.roll_failures, progress)
        if isinstance(decision, Mint | Reset):
            run.force = False  # a requested rotation is served once
        return True

    def _roll_later(
        self, run: _Run, roll: Roll, failures: Sequence[tuple[str, str]], progress: Progress | None
    ) -> bool:
        """Some consumers failed to roll: the old key is alive and nothing is broken, so the pass
        waits (phase ``rolling``) and tries them again after ``roll_retry``: ``--wait`` here,
        else the next pass. False when the pass ends."""
        run.retries += 1
        until = self.clock() + timedelta(seconds=self.settings.roll_retry)
        errors = "; ".join(error for _, error in failures)
        run.decision = wait = Wait(
            "rolling",
            f"not rolled to {roll.key_id} ({roll.prefix}…): {errors}; trying again at {when(until)}",
            until=until,
            key_id=roll.key_id,
        )
        if progress:
            progress(run.key, wait)
        if not run.wait:
            return False
        end = min(until, run.give_up)
        while (left := (end - self.clock()).total_seconds()) > 0 and not self.stopping.is_set():
            self._sleep(min(left, WAIT_POLL))
        if self.clock() >= run.give_up:
            run.decision = _gave_up(run.key, wait, run.limit)
            return False
        return True

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


@dataclass
class _Run:
    """One key's pass in progress."""

    key: str
    force: bool
    wait: bool
    limit: timedelta
    """``--wait-timeout``."""
    give_up: datetime
    backoff: float = BACKOFF_FIRST
    steps: list[str] = field(default_factory=list)
    decision: Decision = field(default_factory=lambda: Fail("no step taken"))
    reset_at: float | None = None
    emergency: bool = False
    retries: int = 0
    """Rolls in ``steps`` that failed and were retried later: waits, not steps, for
    :data:`MAX_STEPS`."""


class _TargetsDown(Transient):
    """Some targets could not be read, each for a transient reason (e.g. a dropped connection)."""


def _unreadable_for_now(obs: Observation) -> bool:
    broken = [t for t in obs.targets if t.error is not None]
    return bool(broken) and all(t.transient for t in broken)


def _gave_up(key: str, decision: Wait, limit: timedelta) -> Decision:
    """The ``waiting`` result of a ``--wait`` that reached its ``--wait-timeout``."""
    return Wait(
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
    return isinstance(lease, Losable) and lease.lost.is_set()
