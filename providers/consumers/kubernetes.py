"""A Kubernetes workload behind :class:`rotator.abc.Consumer`: restarted the way
``kubectl rollout restart`` does it, after External Secrets has synced the new key.

With ``external_secret``, the roll first asks External Secrets to sync that ExternalSecret now,
the way its documentation says: a new value of the ``force-sync`` annotation (any change of
an ExternalSecret's annotations makes the controller sync it). It then waits until the
status shows a sync after that moment: ``Ready`` True and either a later ``refreshTime`` than
before the annotation, or a new ``syncedResourceVersion`` (External Secrets writes it from
the annotations it synced, which tells a sync within the same second of ``refreshTime``
apart). A ``Ready=False`` condition with reason ``SecretSyncedError`` appearing after the
annotation is a failure. The API version is the one the cluster serves (``v1`` from External
Secrets 0.17, ``v1beta1`` before), read from discovery. ``refreshPolicy: CreatedOnce`` is
refused: such an ExternalSecret never updates its Secret.

The restart is kubectl's: a strategic merge patch of
``spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]`` with the time
now (RFC 3339), plus ``rotator.dev/roll`` naming the rotation (ids and fingerprint, never
the value) in the same patch. The roll then waits as ``kubectl rollout status`` does
(:mod:`providers.consumers._rollout`): ``ProgressDeadlineExceeded`` is a
:class:`ConsumerError`, past ``timeout`` a :class:`ConsumerTimeout`, ``stop`` set a
:class:`ConsumerError`. Status is polled every 0.5 s, backing off to 2 s.

Idempotence: the engine journals each completed roll and never repeats one. A crash (or a
stop) after the patch and before the journal entry makes the next pass restart the
workload again, which is harmless: a second rolling restart replaces the pods once more,
and they read the same new key.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from providers import _kube
from providers.consumers._rollout import RolloutFailed, progress, refusal
from rotator.abc import RollEvent, format_time, parse_time
from rotator.builtin.consumers import KubernetesConsumer
from rotator.errors import ConsumerError, ConsumerTimeout, ConsumerUnavailable
from rotator.spec.durations import format_duration

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
ROLL = "rotator.dev/roll"
"""Beside restartedAt: the roll's event (key, attempt, phase, key id, prefix, fingerprint;
never the value), so ``kubectl rollout history`` and the pods tell which rotation restarted them."""
FORCE_SYNC = "force-sync"
ESO_GROUP = "external-secrets.io"
ESO_VERSIONS = ("v1", "v1beta1")
POLL = (0.5, 2.0)
"""First and longest pause between two status reads, in seconds."""

_log = logging.getLogger(__name__)


def make_consumer(
    spec: KubernetesConsumer, *, key: str, base_dir: Path, api: k8s.ApiClient | None = None
) -> KubernetesRoller:
    """The consumer for ``spec``; ``api`` (an ``ApiClient``) may be injected."""
    del key  # the event names the key when it rolls
    return KubernetesRoller(spec, base_dir=base_dir, api=api)


@dataclass
class _Wait:
    """One roll's clock: its deadline and the event that stops it."""

    deadline: float
    stop: threading.Event
    timeout: timedelta


class KubernetesRoller:
    """One Deployment, StatefulSet or DaemonSet (and optionally its ExternalSecret)."""

    def __init__(
        self,
        spec: KubernetesConsumer,
        *,
        base_dir: Path,
        api: k8s.ApiClient | None = None,
        poll: tuple[float, float] = POLL,
    ) -> None:
        self.spec = spec
        self._base_dir = base_dir
        self._api_client = api
        self._poll = poll
        self._name = spec.label()

    @property
    def name(self) -> str:
        return self._name

    def roll(self, event: RollEvent, *, stop: threading.Event) -> None:
        if stop.is_set():
            raise ConsumerError(self.name, "stopped before the roll began")
        wait = _Wait(time.monotonic() + self.spec.timeout.total_seconds(), stop, self.spec.timeout)
        extra = {"key": event.key, "attempt": event.attempt, "phase": event.phase}
        if self.spec.external_secret:
            self._force_sync(self.spec.external_secret, wait)
            _log.info("%s: ExternalSecret %s synced", self.name, self.spec.external_secret, extra=extra)
        generation = self._restart(event, wait)
        _log.info(
            "%s: restarted (generation %d); waiting for the rollout", self.name, generation, extra=extra
        )
        self._wait("the rollout", lambda: self._rollout_progress(generation), wait)
        _log.info("%s: rolled out", self.name, extra=extra)

    # ------------------------------------------------------------------ the restart

    def _restart(self, event: RollEvent, wait: _Wait) -> int:
        obj = self._call("read", self._apps_method("read"), self.spec.name, self.spec.namespace)
        refused = refusal(self.spec.kind, obj)
        if refused:
            raise ConsumerError(self.name, refused)
        previous = _template_annotations(obj).get(RESTARTED_AT)
        now = _rfc3339_seconds()
        while now == previous:  # kubectl's value has whole seconds: the same one would roll nothing
            if wait.stop.wait(0.2):
                raise ConsumerError(self.name, "stopped before the restart")
            now = _rfc3339_seconds()
        roll = json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=True)
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now, ROLL: roll}}}}}
        patched = self._call(
            "restart",
            self._apps_method("patch"),
            self.spec.name,
            self.spec.namespace,
            body,
            _content_type=_kube.STRATEGIC_MERGE_PATCH,
        )
        return int((patched.get("metadata") or {}).get("generation") or 0)

    def _rollout_progress(self, generation: int) -> str | None:
        obj = self._call("read", self._apps_method("read"), self.spec.name, self.spec.namespace)
        try:
            return progress(self.spec.kind, obj, generation)
        except RolloutFailed as exc:
            raise ConsumerError(self.name, str(exc)) from None

    def _apps_method(self, verb: str) -> Callable[..., Any]:
        suffix = {"Deployment": "deployment", "StatefulSet": "stateful_set", "DaemonSet": "daemon_set"}
        method: Callable[..., Any] = getattr(
            k8s.AppsV1Api(self._api()), f"{verb}_namespaced_{suffix[self.spec.kind]}"
        )
        return method

    # ------------------------------------------------------------------ External Secrets

    def _force_sync(self, name: str, wait: _Wait) -> None:
        version = self._eso_version()
        custom = k8s.CustomObjectsApi(self._api())
        where = (ESO_GROUP, version, self.spec.namespace, "externalsecrets", name)
        what = f"ExternalSecret {name}"
        before = self._call(f"read {what}", custom.get_namespaced_custom_object, *where)
        policy = (before.get("spec") or {}).get("refreshPolicy")
        if policy == "CreatedOnce":
            raise ConsumerError(
                self.name, f"{what} has refreshPolicy CreatedOnce: it never updates its Secret"
            )
        body = {"metadata": {"annotations": {FORCE_SYNC: format_time(datetime.now(UTC))}}}
        self._call(
            f"force-sync {what}",
            custom.patch_namespaced_custom_object,
            *where,
            body,
            _content_type=_kube.MERGE_PATCH,
        )

        def synced() -> str | None:
            now = self._call(f"read {what}", custom.get_namespaced_custom_object, *where)
            return self._sync_progress(what, before.get("status") or {}, now.get("status") or {})

        self._wait(f"the sync of {what}", synced, wait)

    def _sync_progress(self, what: str, before: dict[str, Any], now: dict[str, Any]) -> str | None:
        ready, was = _ready(now), _ready(before)
        if ready.get("status") == "True" and _refreshed_since(before, now):
            return None
        if ready.get("status") == "False" and ready.get("reason") == "SecretSyncedError" and ready != was:
            raise ConsumerError(
                self.name, f"{what}: sync failed (SecretSyncedError); see kubectl describe externalsecret"
            )
        shown = f"Ready={ready.get('status', 'Unknown')}" + (
            f" {ready['reason']}" if ready.get("reason") else ""
        )
        return f"waiting for a sync after the force-sync ({shown})"

    def _eso_version(self) -> str:
        groups = self._call("discover External Secrets", k8s.ApisApi(self._api()).get_api_versions)
        for group in groups.get("groups") or []:
            if group.get("name") == ESO_GROUP:
                served = [v.get("version") for v in group.get("versions") or []]
                preferred = (group.get("preferredVersion") or {}).get("version")
                for version in (preferred, *ESO_VERSIONS):
                    if version in ESO_VERSIONS and version in served:
                        return str(version)
                raise ConsumerError(
                    self.name, f"External Secrets serves {', '.join(map(str, served))}; known: v1, v1beta1"
                )
        raise ConsumerError(self.name, "External Secrets is not installed (no external-secrets.io API)")

    # ------------------------------------------------------------------ the API

    def _api(self) -> k8s.ApiClient:
        if self._api_client is None:
            try:
                self._api_client = _kube.api_client(
                    self.spec.kubeconfig, self.spec.context, base_dir=self._base_dir
                )
            except _kube.KubeConfigError as exc:
                raise ConsumerError(self.name, str(exc)) from None
        return self._api_client

    def _call(self, action: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return _kube.call(method, *args, **kwargs)
        except _kube.KUBE_ERRORS as exc:
            failure = _kube.failure(exc)
            kind = ConsumerUnavailable if failure.kind == "unavailable" else ConsumerError
            raise kind(self.name, f"{action}: {failure.detail}") from None

    def _wait(self, what: str, check: Callable[[], str | None], wait: _Wait) -> None:
        """Call ``check`` until it returns ``None`` (done); it returns what it waits for."""
        pause, last = self._poll[0], "not checked yet"
        unreachable: ConsumerUnavailable | None = None
        while True:
            try:
                state = check()
            except ConsumerUnavailable as exc:  # a blip while polling: keep trying until the deadline
                unreachable = exc
            else:
                unreachable = None
                if state is None:
                    return
                last = state
            remaining = wait.deadline - time.monotonic()
            if remaining <= 0:
                if unreachable is not None:
                    raise unreachable
                limit = format_duration(wait.timeout)
                raise ConsumerTimeout(self.name, f"{what} did not finish within {limit}: {last}")
            if wait.stop.wait(min(pause, remaining)):
                raise ConsumerError(self.name, f"stopped while waiting for {what}: {last}")
            pause = min(pause * 1.5, self._poll[1])


def _template_annotations(obj: dict[str, Any]) -> dict[str, Any]:
    template = (obj.get("spec") or {}).get("template") or {}
    return dict((template.get("metadata") or {}).get("annotations") or {})


def _rfc3339_seconds() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return dict(condition)
    return {}


def _refreshed_since(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """True when ``now`` shows a sync later than the one ``before`` showed."""
    if now.get("syncedResourceVersion") and now.get("syncedResourceVersion") != before.get(
        "syncedResourceVersion"
    ):
        return True
    then, latest = before.get("refreshTime"), now.get("refreshTime")
    if not latest:
        return False
    if not then:
        return True
    try:
        return parse_time(str(latest)) > parse_time(str(then))
    except ValueError:
        return bool(latest != then)
