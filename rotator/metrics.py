"""Prometheus metrics of reconcile passes, kept on a registry of their own.

========================================================  ===========================================
``rotator_rotations_total{key,result}``                   passes in which a rotation moved or stopped:
                                                          ``completed`` (old key revoked after its
                                                          drain, or a reset verified), else the pass
                                                          outcome ``ok``, ``waiting``, ``held``,
                                                          ``failed``
``rotator_key_age_seconds{key}``                          age of the key now current
``rotator_key_max_age_seconds{key}``                      the key's ``max_age`` from the rotation file
``rotator_key_phase{key,phase}``                          1 for the key's phase, 0 for the others
``rotator_last_success_timestamp_seconds{key}``           end of the last pass that left the key
                                                          ``ok`` or ``waiting``
``rotator_phase_duration_seconds{key,phase}``             seconds the latest rotation spent in each
                                                          phase that has ended, from the journal
``rotator_pass_duration_seconds``                         histogram of pass durations
========================================================  ===========================================

Labels carry key names, phases and outcomes only: never a key's value.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rotator.abc import parse_time
from rotator.engine.model import Phase
from rotator.errors import RotatorError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from rotator.engine.runner import Engine, KeyResult

log = logging.getLogger("rotator.metrics")

PHASES: Final = get_args(Phase)
# (phase, entry that starts it, entry that ends it), in the order of a rotation
_SPANS: Final = (
    ("minted", "minted", "staged"),
    ("staged", "staged", "promoted"),
    ("draining", "promoted", "revoked"),
    ("reset", "reset-started", "reset"),
    ("promoted", "reset", "verified"),
)
_SPAN_PHASES: Final = tuple(dict.fromkeys(p for p, _, _ in _SPANS))
_PASS_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))


def _ts(entry: dict[str, Any]) -> float:
    return parse_time(str(entry["ts"])).timestamp()


def phase_durations(entries: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Seconds the latest rotation in ``entries`` (one key's journal, in order) spent per phase.

    Overlap: ``minted`` (minted -> first staged), ``staged`` (-> promoted), ``draining``
    (promoted -> the old key revoked). Cutover: ``reset`` (reset-started -> reset) and
    ``promoted`` (reset -> verified). Phases that have not ended yet are absent.
    """
    start = None
    for i, e in enumerate(entries):
        if e.get("event") in ("minted", "reset-started"):
            start = i
    if start is None:
        return {}
    attempt = entries[start].get("attempt")
    marks = {str(entries[start]["event"]): _ts(entries[start])}
    for e in entries[start + 1 :]:
        event = str(e.get("event"))
        if event in marks:
            continue
        if event in ("staged", "promoted", "reset", "verified") and e.get("attempt") == attempt:
            marks[event] = _ts(e)
        elif event == "revoked" and "promoted" in marks:
            marks[event] = _ts(e)  # the revoke names the old key, not the attempt
    return {phase: marks[b] - marks[a] for phase, a, b in _SPANS if a in marks and b in marks}


def key_birth(entries: Sequence[dict[str, Any]]) -> float | None:
    """When the key now current was minted or reset (epoch seconds), if the journal knows."""
    for e in reversed(entries):
        if e.get("event") == "reset":
            return _ts(e)
        if e.get("event") == "promoted":
            for m in entries:
                if m.get("event") == "minted" and m.get("attempt") == e.get("attempt"):
                    return _ts(m)
            return None  # an adopted key: minted before the rotator knew it
    return None


class _AgeCollector(Collector):
    """Ages computed when scraped, so they keep growing between passes."""

    def __init__(self, born: dict[str, float], lock: threading.Lock) -> None:
        self._born, self._lock = born, lock

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("rotator_key_age_seconds", "Age of the key now current.", labels=["key"])
        now = time.time()
        with self._lock:
            for key, born in sorted(self._born.items()):
                family.add_metric([key], max(0.0, now - born))
        yield family


class Metrics:
    """The rotator's metrics on their own :class:`CollectorRegistry` (not the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.rotations = Counter(
            "rotator_rotations_total",
            "Passes in which a key's rotation moved or stopped, by result.",
            ["key", "result"],
            registry=reg,
        )
        self.phase = Gauge(
            "rotator_key_phase",
            "1 for the phase a key is in, 0 for the others.",
            ["key", "phase"],
            registry=reg,
        )
        self.max_age = Gauge(
            "rotator_key_max_age_seconds",
            "The key's max_age from the rotation file: older than this, the key is overdue.",
            ["key"],
            registry=reg,
        )
        self.last_success = Gauge(
            "rotator_last_success_timestamp_seconds",
            "End of the last pass that left the key ok or waiting.",
            ["key"],
            registry=reg,
        )
        self.phase_duration = Gauge(
            "rotator_phase_duration_seconds",
            "Seconds the key's latest rotation spent in each phase that has ended.",
            ["key", "phase"],
            registry=reg,
        )
        self.reload_failures = Counter(
            "rotator_config_reload_failures",
            "SIGHUP reloads refused because the rotation file was invalid (the previous one runs on).",
            registry=reg,
        )
        self.pass_duration = Histogram(
            "rotator_pass_duration_seconds",
            "Duration of reconcile passes.",
            buckets=_PASS_BUCKETS,
            registry=reg,
        )
        self._lock = threading.Lock()
        self._born: dict[str, float] = {}
        reg.register(_AgeCollector(self._born, self._lock))

    def observe_results(
        self, engine: Engine, results: Iterable[KeyResult], *, started: float | None = None
    ) -> None:
        """Update the metrics after a pass; ``started`` (epoch seconds) times the pass."""
        now = time.time()
        if started is not None:
            self.pass_duration.observe(max(0.0, now - started))
        read = [r for r in results if self._observe_one(engine, r, now)]
        if read:
            by_key = self._journal_by_key(engine, {r.key for r in read})
            for r in read:
                self._from_journal(engine, r, started, by_key.get(r.key, []))

    def _observe_one(self, engine: Engine, r: KeyResult, now: float) -> bool:
        """Set what ``r`` alone tells; True when its journal entries are needed too."""
        if r.key in engine.spec.keys:
            self.max_age.labels(r.key).set(engine.spec.max_age(r.key).total_seconds())
        if r.outcome == "busy":
            return False  # another runner holds the key: its pass is not ours to report
        if r.phase in PHASES:
            for p in PHASES:
                self.phase.labels(r.key, p).set(1 if p == r.phase else 0)
        if r.outcome in ("ok", "waiting"):
            self.last_success.labels(r.key).set(now)
        with self._lock:
            known = r.key in self._born
        return bool(r.steps) or not known or r.outcome in ("held", "failed")

    @staticmethod
    def _journal_by_key(engine: Engine, keys: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The journal entries of ``keys``, by key, in order: the journal is read once per pass."""
        by_key: dict[str, list[dict[str, Any]]] = {}
        try:
            for e in engine.journal.entries():
                key = e.get("key")
                if key in keys:
                    by_key.setdefault(key, []).append(e)
        except RotatorError as exc:
            log.warning("metrics of %s: cannot read the journal: %s", ", ".join(sorted(keys)), exc)
            return {}
        return by_key

    def _from_journal(
        self, engine: Engine, r: KeyResult, started: float | None, entries: list[dict[str, Any]]
    ) -> None:
        done = [e for e in entries if e.get("event") in ("revoked", "verified")]
        if started is not None:
            completed = sum(1 for e in done if _ts(e) >= started)
        else:  # without the pass's start, only its last entry can tell
            last = entries[-1] if entries else None
            completed = int(bool({"revoke", "reset"} & set(r.steps)) and last in done)
        if completed:
            self.rotations.labels(r.key, "completed").inc(completed)
        elif r.steps or r.outcome in ("held", "failed"):
            self.rotations.labels(r.key, r.outcome).inc()
        spans = phase_durations(entries)
        for phase in _SPAN_PHASES:
            if phase in spans:
                self.phase_duration.labels(r.key, phase).set(spans[phase])
            else:
                self.phase_duration.remove(r.key, phase)
        born = key_birth(entries)
        if born is None:
            born = self._vendor_birth(engine, r.key)
        if born is not None:
            with self._lock:
                self._born[r.key] = born

    @staticmethod
    def _vendor_birth(engine: Engine, key: str) -> float | None:
        """The newest active key's creation time, asked of the vendor (an adopted key)."""
        try:
            obs = engine.observe(key)
        except RotatorError as exc:
            log.warning("metrics of %s: cannot read the key's age: %s", key, exc)
            return None
        born = [k.created_at.timestamp() for k in obs.vendor if k.active]
        return max(born) if born else None

    def forget(self, key: str) -> None:
        """Drop the gauges of a key no longer declared (its counters stay: they only grow)."""
        with self._lock:
            self._born.pop(key, None)
        self.last_success.remove(key)
        self.max_age.remove(key)
        for phase in PHASES:
            self.phase.remove(key, phase)
        for phase in _SPAN_PHASES:
            self.phase_duration.remove(key, phase)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def push(self, gateway_url: str, job: str = "rotator", *, timeout: float = 10) -> None:
        """PUT the registry to a Prometheus Pushgateway.

        :raises RotatorError: the push failed; the message is one line naming the gateway.
        """
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(gateway_url, job=job, registry=self.registry, timeout=timeout)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RotatorError(f"cannot push metrics to {gateway_url}: {reason}") from None
