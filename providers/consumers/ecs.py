"""An ECS service behind :class:`rotator.abc.Consumer`.

Tasks read their secrets (the task definition's ``secrets``, or the application itself at
start) once, when they start. A roll therefore starts new tasks: ``UpdateService`` with
``forceNewDeployment`` makes a new deployment of the same task definition, and ECS replaces
the running tasks with tasks that read the new key.

The roll then polls ``DescribeServices`` until that deployment is done:

* the deployment the update returned as ``PRIMARY`` is followed by its id. ``rolloutState``
  ``COMPLETED`` is success; ``FAILED`` (the deployment circuit breaker gave up) fails the
  roll with ECS's ``rolloutStateReason``;
* a newer ``PRIMARY`` deployment (someone deployed meanwhile) is followed instead: its tasks
  start after ours and read the new key too. An older one in first place is a stale read;
* ECS reports no ``rolloutState`` for services behind a Classic Load Balancer: those are
  done at steady state, when the primary deployment is the only one and runs its desired
  count (what ``aws ecs wait services-stable`` checks);
* past the consumer's ``timeout`` the roll fails with :class:`ConsumerTimeout`; ``stop`` set
  ends the wait with a :class:`ConsumerError` (the deployment itself goes on).

Errors name the consumer (``ecs:<cluster>/<service>``): a missing cluster or service and
denied access fail at once; throttling, server errors and connection failures are
:class:`ConsumerUnavailable`. A transient failure while waiting is retried until the timeout.
No key value ever reaches this module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotator.abc import RollEvent
from rotator.aws_errors import BotoKind, Kind, classify, classify_botocore
from rotator.aws_session import client as aws_client
from rotator.errors import ConsumerError, ConsumerTimeout, ConsumerUnavailable

if TYPE_CHECKING:
    from mypy_boto3_ecs.client import ECSClient

    from rotator.builtin.consumers import EcsConsumer

log = logging.getLogger("rotator.consumers")

POLL_SECONDS = 5.0
"""Between two ``DescribeServices`` while a deployment rolls out (they take minutes)."""

_MISSING = {
    "ClusterNotFoundException": "no such cluster",
    "ServiceNotFoundException": "no such service",
    "ServiceNotActiveException": "the service is not active (deleted or draining)",
}


def make_consumer(
    spec: EcsConsumer,
    *,
    key: str,
    base_dir: Path,
    client: Any | None = None,
    poll: float = POLL_SECONDS,
) -> EcsServiceConsumer:
    """The consumer for ``spec``; ``client`` (an ECS client) replaces the one built from it."""
    del key, base_dir  # one service whatever the key; nothing of it is a local path
    if client is None:
        with _translated(spec.label(), "connect"):
            client = _build_client(spec)
    return EcsServiceConsumer(spec, client, poll=poll)


def _build_client(spec: EcsConsumer) -> ECSClient:
    """The process's shared ecs client for this spec's region, endpoint and credentials."""
    built: ECSClient = aws_client(
        "ecs",
        region=spec.region,
        endpoint_url=spec.endpoint_url,
        profile=spec.profile,
        role_arn=spec.role_arn,
        attempts=3,
    )
    return built


@dataclass(frozen=True)
class _Deployment:
    """The deployment a roll started: its id and creation time."""

    id: str
    created_at: datetime | None


@dataclass(frozen=True)
class _Progress:
    """One look at the service: done, or what it is waiting for."""

    done: bool
    detail: str


class EcsServiceConsumer:
    """One ECS service, redeployed to roll it."""

    def __init__(
        self,
        spec: EcsConsumer,
        client: ECSClient,
        *,
        poll: float = POLL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self._client = client
        self._name = spec.label()
        self._timeout = spec.timeout.total_seconds()
        self._poll = poll
        self._clock = clock

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"EcsServiceConsumer({self._name})"

    def roll(self, event: RollEvent, *, stop: threading.Event) -> None:
        if stop.is_set():
            raise ConsumerError(self._name, "stopped before the deployment was started")
        deadline = self._clock() + self._timeout
        started = self._start()
        log.info(
            "%s: deployment %s started for key %s (attempt %s, new key %s)",
            self._name, started.id, event.key, event.attempt, event.key_id,
        )  # fmt: skip
        self._wait(started, deadline, stop)
        log.info("%s: deployment %s completed", self._name, started.id)

    def _start(self) -> _Deployment:
        with _translated(self._name, "UpdateService"):
            out = self._client.update_service(
                cluster=self.spec.cluster, service=self.spec.service, forceNewDeployment=True
            )
        primary = _primary(out.get("service", {}).get("deployments", []))
        if primary is None:
            raise ConsumerError(self._name, "UpdateService: ECS returned no PRIMARY deployment")
        return _Deployment(str(primary["id"]), primary.get("createdAt"))

    def _wait(self, started: _Deployment, deadline: float, stop: threading.Event) -> None:
        last = "waiting for the first look"
        unavailable: ConsumerUnavailable | None = None
        while True:
            try:
                progress = self._look(started)
            except ConsumerUnavailable as exc:
                unavailable, last = exc, f"last look failed: {exc}"
            else:
                if progress.done:
                    return
                unavailable, last = None, progress.detail
            remaining = deadline - self._clock()
            if remaining <= 0:
                if unavailable is not None:
                    raise unavailable
                raise ConsumerTimeout(
                    self._name,
                    f"deployment {started.id} not complete after {self._timeout:g}s ({last})",
                )
            if stop.wait(min(self._poll, remaining)):
                raise ConsumerError(self._name, f"stopped while waiting for deployment {started.id} ({last})")

    def _look(self, started: _Deployment) -> _Progress:
        with _translated(self._name, "DescribeServices"):
            out = self._client.describe_services(cluster=self.spec.cluster, services=[self.spec.service])
        services = out.get("services", [])
        if not services:
            reasons = ", ".join(str(f.get("reason", "?")) for f in out.get("failures", []))
            raise ConsumerError(self._name, f"DescribeServices: no such service ({reasons or 'not listed'})")
        return _progress(self._name, started, services[0])


def _primary(deployments: list[Any]) -> Mapping[str, Any] | None:
    return next((d for d in deployments if d.get("status") == "PRIMARY"), None)


def _progress(name: str, started: _Deployment, service: Mapping[str, Any]) -> _Progress:
    """Where the roll that started ``started`` stands, from one ``DescribeServices`` answer."""
    deployments = list(service.get("deployments", []))
    ours = next((d for d in deployments if d.get("id") == started.id), None)
    if ours is not None and ours.get("rolloutState") == "FAILED":
        raise ConsumerError(name, f"deployment {started.id} failed: {_reason(ours)}")
    primary = _primary(deployments)
    if primary is None:
        return _Progress(False, "no PRIMARY deployment listed")
    if primary.get("id") != started.id and _older(primary, started):
        return _Progress(False, f"deployment {started.id} not listed yet")
    which = "deployment" if primary.get("id") == started.id else "newer deployment"
    state = primary.get("rolloutState")
    if state == "FAILED":
        raise ConsumerError(name, f"{which} {primary.get('id')} failed: {_reason(primary)}")
    if state == "COMPLETED":
        return _Progress(True, "completed")
    if state is None:  # no rollout state behind a Classic Load Balancer: steady state decides
        steady = len(deployments) == 1 and primary.get("runningCount") == primary.get("desiredCount")
        counts = f"{primary.get('runningCount')}/{primary.get('desiredCount')} tasks running"
        return _Progress(steady, f"{which} {primary.get('id')}: {counts}, {len(deployments)} deployments")
    return _Progress(False, f"{which} {primary.get('id')}: {state}: {_reason(primary)}")


def _older(deployment: Mapping[str, Any], started: _Deployment) -> bool:
    created = deployment.get("createdAt")
    return created is not None and started.created_at is not None and created < started.created_at


def _reason(deployment: Mapping[str, Any]) -> str:
    reason = str(deployment.get("rolloutStateReason") or "no reason given")
    return reason[:300]


# --------------------------------------------------------------------------- errors


@contextmanager
def _translated(name: str, action: str) -> Iterator[None]:
    """Raise boto3 and botocore errors as :class:`ConsumerError` kinds naming ``name``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        raise _from_client_error(name, action, exc.response) from None
    except BotoCoreError as exc:
        raise _from_botocore_error(name, action, exc) from None


def _from_client_error(name: str, action: str, response: Any) -> ConsumerError:
    failure = classify(response)
    text = failure.text(action)
    if failure.code in _MISSING:
        return ConsumerError(name, f"{_MISSING[failure.code]} ({text})")
    if failure.kind is Kind.DENIED:
        return ConsumerError(
            name, f"access denied ({text}); the rotator needs ecs:UpdateService and ecs:DescribeServices"
        )
    if failure.kind.transient:
        return ConsumerUnavailable(name, text)
    return ConsumerError(name, text)


def _from_botocore_error(name: str, action: str, exc: Exception) -> ConsumerError:
    kind, name_of = classify_botocore(exc), type(exc).__name__
    if kind in (BotoKind.NOT_SENT, BotoKind.LOST):
        return ConsumerUnavailable(name, f"{action}: cannot reach ECS ({name_of})")
    if kind is BotoKind.CREDENTIALS:
        return ConsumerError(name, f"{action}: no usable AWS credentials ({name_of})")
    if kind is BotoKind.NO_REGION:
        return ConsumerError(name, f"{action}: no AWS region (set region: in the consumer or AWS_REGION)")
    return ConsumerError(name, f"{action}: {name_of}")
