"""The controllers of the fake API server (``tests/fakes/kube_api.py``): what moves status over
time in a real cluster.

* Workloads: when a Deployment's, StatefulSet's or DaemonSet's ``metadata.generation`` moves
  past ``status.observedGeneration``, the rollout is observed after ``observe_delay``, then
  one replica is updated every ``step`` seconds, then old pods terminate and the last new one
  becomes available (``settle`` each), the states ``kubectl rollout status`` walks through.
  A ``stuck`` rollout never gets past its first new pod; with ``deadline`` its Progressing
  condition turns False with reason ``ProgressDeadlineExceeded``, as the deployment
  controller does past ``progressDeadlineSeconds``.
* ExternalSecrets: when an ExternalSecret's labels or annotations (or generation) no longer
  match ``status.syncedResourceVersion`` (External Secrets' own rule), it syncs after
  ``delay``: the provider's values (``source()``) are written to the target Secret, then
  ``status.refreshTime`` (RFC 3339, whole seconds, as the real field), the synced version and
  a ``Ready`` condition. A ``fail`` provider sets ``Ready=False`` with ``SecretSyncedError``;
  a ``down`` controller does nothing at all.

Errors inside a controller are collected in :attr:`Controllers.errors` (the fixtures fail the
test on any), never swallowed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.kube_api import FakeKubeApi

TICK = 0.02


@dataclass
class Rollout:
    """How a workload's rollout moves."""

    replicas: int = 2
    observe_delay: float = 0.05
    step: float = 0.1
    settle: float = 0.05
    stuck: bool = False
    deadline: float | None = None
    """With ``stuck``: seconds until ProgressDeadlineExceeded (Deployments only)."""


@dataclass
class Sync:
    """How an ExternalSecret's controller and provider behave."""

    source: Callable[[], dict[str, str]]
    """The provider's values now: the target Secret's keys and their values."""
    delay: float = 0.1
    fail: bool = False
    down: bool = False


@dataclass
class _Progress:
    generation: int
    since: float
    done: bool = False


@dataclass
class Controllers:
    api: FakeKubeApi
    rollouts: dict[tuple[str, str, str], Rollout] = field(default_factory=dict)
    """``(kind, namespace, name)`` -> how it rolls out."""
    syncs: dict[tuple[str, str], Sync] = field(default_factory=dict)
    """``(namespace, name)`` of an ExternalSecret -> how it syncs."""
    completed: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    """Monotonic times at which each workload's rollouts completed."""
    synced: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """Monotonic times of each ExternalSecret's successful syncs."""
    errors: list[str] = field(default_factory=list)
    _progress: dict[tuple[str, str, str], _Progress] = field(default_factory=dict)
    _due: dict[tuple[str, str], float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fake-kube-controllers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - kept for the test to fail on, not swallowed
                self.errors.append(traceback.format_exc())

    def tick(self) -> None:
        for key, rollout in list(self.rollouts.items()):
            self._roll(key, rollout)
        for key, sync in list(self.syncs.items()):
            if not sync.down:
                self._sync(key, sync)

    # ------------------------------------------------------------------ workloads

    def _roll(self, key: tuple[str, str, str], rollout: Rollout) -> None:
        kind, ns, name = key
        obj = self.api.get(kind, ns, name)
        if obj is None:
            return
        generation = int(obj["metadata"].get("generation", 1))
        progress = self._progress.get(key)
        if progress is None or progress.generation != generation:
            if int((obj.get("status") or {}).get("observedGeneration", 0)) >= generation:
                return
            progress = self._progress[key] = _Progress(generation, time.monotonic())
        if progress.done:
            return
        elapsed = time.monotonic() - progress.since - rollout.observe_delay
        if elapsed < 0:
            return
        status, done = _STATUS[kind](obj, rollout, elapsed, generation)
        self.api.update_status(kind, ns, name, status)
        if done:
            progress.done = True
            self.completed.setdefault(key, []).append(time.monotonic())

    # ------------------------------------------------------------------ external secrets

    def _sync(self, key: tuple[str, str], sync: Sync) -> None:
        ns, name = key
        es = self.api.get("ExternalSecret", ns, name)
        if es is None:
            return
        wanted = synced_version(es)
        status = es.get("status") or {}
        if status.get("syncedResourceVersion") == wanted:
            self._due.pop(key, None)
            return
        due = self._due.setdefault(key, time.monotonic() + sync.delay)
        if time.monotonic() < due:
            return
        if sync.fail:
            condition = _condition("False", "SecretSyncedError", "could not get secret data from provider")
            self.api.update_status("ExternalSecret", ns, name, {**status, "conditions": [condition]})
            return
        target = ((es.get("spec") or {}).get("target") or {}).get("name") or name
        self._write_target(ns, target, sync.source())
        refreshed = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = _condition("True", "SecretSynced", "secret synced")
        self.api.update_status(
            "ExternalSecret",
            ns,
            name,
            {"refreshTime": refreshed, "syncedResourceVersion": wanted, "conditions": [condition]},
        )
        self._due.pop(key, None)
        self.synced.setdefault(key, []).append(time.monotonic())

    def _write_target(self, ns: str, name: str, values: dict[str, str]) -> None:
        existing = self.api.get("Secret", ns, name)
        secret = existing or {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
        }
        secret["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        self.api.put(secret)


def synced_version(es: dict[str, Any]) -> str:
    """What External Secrets writes to ``status.syncedResourceVersion``: the generation and a
    hash of the labels and annotations."""
    meta = es["metadata"]
    digest = hashlib.sha256(
        json.dumps([meta.get("annotations") or {}, meta.get("labels") or {}], sort_keys=True).encode()
    ).hexdigest()[:16]
    return f"{meta.get('generation', 1)}-{digest}"


def _condition(status: str, reason: str, message: str) -> dict[str, str]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }


def _phase(rollout: Rollout, elapsed: float) -> tuple[int, int]:
    """(replicas updated, phase past the updates: 0 updating, 1 old terminating, 2 last not
    yet available, 3 done)."""
    r = rollout.replicas
    if rollout.stuck:
        return min(1, r), 0
    updated = min(r, math.floor(elapsed / rollout.step)) if rollout.step > 0 else r
    if updated < r:
        return updated, 0
    past = elapsed - r * rollout.step
    return r, 1 if past < rollout.settle else 2 if past < 2 * rollout.settle else 3


def _deployment(
    obj: dict[str, Any], rollout: Rollout, elapsed: float, generation: int
) -> tuple[dict[str, Any], bool]:
    r = rollout.replicas
    updated, phase = _phase(rollout, elapsed)
    progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
    if rollout.stuck and rollout.deadline is not None and elapsed >= rollout.deadline:
        progressing = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    if phase == 3:
        progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    status = {
        "observedGeneration": generation,
        "replicas": r + 1 if phase <= 1 else r,
        "updatedReplicas": updated,
        "availableReplicas": r - 1 if phase == 2 else r,
        "readyReplicas": r - 1 if phase == 2 else r,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            progressing,
        ],
    }
    return status, phase == 3


def _statefulset(
    obj: dict[str, Any], rollout: Rollout, elapsed: float, generation: int
) -> tuple[dict[str, Any], bool]:
    r = rollout.replicas
    updated, phase = _phase(rollout, elapsed)
    name = obj["metadata"]["name"]
    old = (obj.get("status") or {}).get("currentRevision") or f"{name}-0"
    new = f"{name}-{generation}"
    status = {
        "observedGeneration": generation,
        "replicas": r,
        "readyReplicas": r if phase == 3 else r - 1,
        "updatedReplicas": updated,
        "currentReplicas": r if phase == 3 else r - updated,
        "currentRevision": new if phase == 3 else old,
        "updateRevision": new,
    }
    return status, phase == 3


def _daemonset(
    obj: dict[str, Any], rollout: Rollout, elapsed: float, generation: int
) -> tuple[dict[str, Any], bool]:
    r = rollout.replicas
    updated, phase = _phase(rollout, elapsed)
    status = {
        "observedGeneration": generation,
        "desiredNumberScheduled": r,
        "currentNumberScheduled": r,
        "updatedNumberScheduled": updated,
        "numberAvailable": r if phase == 3 else r - 1,
        "numberReady": r if phase == 3 else r - 1,
    }
    return status, phase == 3


_STATUS = {"Deployment": _deployment, "StatefulSet": _statefulset, "DaemonSet": _daemonset}


def workload(
    kind: str,
    namespace: str,
    name: str,
    *,
    replicas: int = 2,
    strategy: str = "RollingUpdate",
    paused: bool = False,
) -> dict[str, Any]:
    """A workload as ``kubectl apply`` would leave it once rolled out."""
    labels = {"app": name}
    spec: dict[str, Any] = {
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
        },
    }
    status: dict[str, Any] = {"observedGeneration": 1}
    if kind == "Deployment":
        spec |= {"replicas": replicas, "strategy": {"type": strategy}, "progressDeadlineSeconds": 600}
        if paused:
            spec["paused"] = True
        status |= {
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
            "readyReplicas": replicas,
        }
    elif kind == "StatefulSet":
        rolling = {"rollingUpdate": {"partition": 0}} if strategy == "RollingUpdate" else {}
        spec |= {"replicas": replicas, "serviceName": name, "updateStrategy": {"type": strategy, **rolling}}
        status |= {
            "replicas": replicas,
            "readyReplicas": replicas,
            "updatedReplicas": replicas,
            "currentReplicas": replicas,
            "currentRevision": f"{name}-0",
            "updateRevision": f"{name}-0",
        }
    else:
        spec |= {"updateStrategy": {"type": strategy}}
        status |= {
            "desiredNumberScheduled": replicas,
            "currentNumberScheduled": replicas,
            "updatedNumberScheduled": replicas,
            "numberAvailable": replicas,
            "numberReady": replicas,
        }
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
        "status": status,
    }


def external_secret(
    namespace: str, name: str, *, target: str, key: str, remote: str, refresh_policy: str | None = None
) -> dict[str, Any]:
    """An ExternalSecret syncing ``remote`` into ``target``'s ``key``."""
    spec: dict[str, Any] = {
        "refreshInterval": "1h",
        "secretStoreRef": {"kind": "ClusterSecretStore", "name": "vault"},
        "target": {"name": target, "creationPolicy": "Owner"},
        "data": [{"secretKey": key, "remoteRef": {"key": remote}}],
    }
    if refresh_policy is not None:
        spec["refreshPolicy"] = refresh_policy
    return {
        "apiVersion": "external-secrets.io/v1",
        "kind": "ExternalSecret",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
