"""The ecs backend for the consumer contract suite (see tests/consumer_harness.py).

Runs against moto in process (``mock_aws``), spoken to by the real boto3 ECS client. moto
records ``UpdateService(forceNewDeployment=True)`` as a new deployment id, but nothing moves
its ``rolloutState``: no scheduler starts tasks. :class:`EcsScheduler` plays that part on
moto's backend, the way ECS does it: a forced deployment becomes the ``PRIMARY`` one,
``IN_PROGRESS``, beside the previous one (now ``ACTIVE``); after ``delay`` it is either
``COMPLETED`` with its desired count running and the previous one gone, or ``FAILED`` with
the circuit breaker's reason, or it stays ``IN_PROGRESS`` for good, per service
(:attr:`EcsScheduler.modes`).

An ECS deployment carries nothing of the caller, so ``rolls`` lists, for each forced
deployment the scheduler completed, the event that was being rolled on that service when
the deployment started (the harness's consumers note it; the deployment itself is moto's).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import boto3
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ecs.models import ecs_backends

from providers.consumers.ecs import EcsServiceConsumer, make_consumer
from rotator.abc import Consumer, RollEvent
from rotator.builtin.consumers import EcsConsumer

REGION = "us-east-1"
CLUSTER = "rotator-test"
Mode = Literal["complete", "fail", "stuck", "classic"]
"""What a service's forced deployments do: complete, fail (circuit breaker), stay in progress,
or complete without any ``rolloutState`` (a service behind a Classic Load Balancer)."""
CIRCUIT_BREAKER = "ECS deployment circuit breaker: tasks failed to start."


@dataclass
class _Forced:
    """One forced deployment the scheduler saw: its id, the event in flight, its outcome."""

    id: str
    event: RollEvent | None
    outcome: str = "IN_PROGRESS"


@dataclass
class EcsScheduler:
    """ECS's service scheduler, played on moto's backend after each forced deployment."""

    backend: Any
    delay: float = 0.2
    modes: dict[str, Mode] = field(default_factory=dict)
    """Service name -> what its forced deployments do (default ``complete``)."""
    forced: dict[str, list[_Forced]] = field(default_factory=dict)
    in_flight: dict[str, RollEvent] = field(default_factory=dict)
    _timers: list[threading.Timer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> None:
        original = self.backend.update_service

        def update_service(props: dict[str, Any]) -> Any:
            forced = bool(props.get("force_new_deployment"))
            # copies: moto rewrites the primary deployment's dict in place
            before = {key: [dict(d) for d in s.deployments] for key, s in self.backend.services.items()}
            service = original(props)
            if forced:
                self._begin(service, before.get(f"{service.cluster_name}:{service.name}", []))
            return service

        self.backend.update_service = update_service

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def _begin(self, service: Any, before: list[dict[str, Any]]) -> None:
        # moto gave the primary deployment a new id: that is the new deployment
        mode = self.modes.get(service.name, "complete")
        new_id = service.deployments[0]["id"]
        new = {
            **service.deployments[0],
            "status": "PRIMARY",
            "rolloutState": "IN_PROGRESS",
            "rolloutStateReason": f"ECS deployment {new_id} in progress.",
            "runningCount": 0,
            "pendingCount": service.desired_count,
        }
        previous = [{**before[0], "status": "ACTIVE"}] if before else []
        service.deployments = [_shown(new, mode), *(_shown(d, mode) for d in previous)]
        with self._lock:
            self.forced.setdefault(service.name, []).append(_Forced(new_id, self.in_flight.get(service.name)))
        if mode != "stuck":
            timer = threading.Timer(self.delay, self._finish, (service, new_id, mode))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _finish(self, service: Any, deployment_id: str, mode: Mode) -> None:
        primary = next((d for d in service.deployments if d["id"] == deployment_id), None)
        if primary is None or primary["status"] != "PRIMARY":
            return  # a newer deployment took over
        if mode in ("complete", "classic"):
            done = {
                **primary,
                "rolloutState": "COMPLETED",
                "rolloutStateReason": f"ECS deployment {deployment_id} completed.",
                "runningCount": service.desired_count,
                "pendingCount": 0,
            }
            service.deployments = [_shown(done, mode)]
        else:
            failed = {
                **primary,
                "rolloutState": "FAILED",
                "rolloutStateReason": CIRCUIT_BREAKER,
                "failedTasks": 3,
            }
            service.deployments = [failed, *service.deployments[1:]]
        with self._lock:
            for record in self.forced.get(service.name, []):
                if record.id == deployment_id:
                    record.outcome = "FAILED" if mode == "fail" else "COMPLETED"


def _shown(deployment: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """The deployment as ECS lists it: without a rollout state behind a Classic Load Balancer."""
    if mode != "classic":
        return deployment
    return {k: v for k, v in deployment.items() if k not in ("rolloutState", "rolloutStateReason")}


class _Noted:
    """A consumer that tells the scheduler which event it is rolling (see the module doc)."""

    def __init__(self, inner: EcsServiceConsumer, scheduler: EcsScheduler) -> None:
        self.inner = inner
        self._scheduler = scheduler

    @property
    def name(self) -> str:
        return self.inner.name

    def roll(self, event: RollEvent, *, stop: threading.Event) -> None:
        self._scheduler.in_flight[self.inner.spec.service] = event
        try:
            self.inner.roll(event, stop=stop)
        finally:
            self._scheduler.in_flight.pop(self.inner.spec.service, None)


class EcsHarness:
    name = "ecs"

    def __init__(self, scheduler: EcsScheduler, *, poll: float = 0.05) -> None:
        self.scheduler = scheduler
        self.client: Any = boto3.client("ecs", region_name=REGION)
        self.poll = poll
        self.client.create_cluster(clusterName=CLUSTER)
        self.client.register_task_definition(
            family="rotator-test", containerDefinitions=[{"name": "app", "image": "app:1", "memory": 128}]
        )

    def spec(self, service: str, *, timeout: float = 30.0, **extra: Any) -> EcsConsumer:
        data = {"type": "ecs", "cluster": CLUSTER, "service": service, "region": REGION, "timeout": timeout}
        return EcsConsumer.model_validate({**data, **extra})

    def new_service(self, mode: Mode = "complete", *, desired: int = 2) -> str:
        """A running service (its first deployment complete), whose forced deployments do ``mode``."""
        name = f"svc-{uuid.uuid4().hex[:10]}"
        self.client.create_service(
            cluster=CLUSTER, serviceName=name, taskDefinition="rotator-test", desiredCount=desired
        )
        service = self.scheduler.backend.services[f"{CLUSTER}:{name}"]
        first = service.deployments[0]
        done = {**first, "rolloutState": "COMPLETED", "runningCount": desired, "pendingCount": 0}
        service.deployments = [_shown(done, mode)]
        self.scheduler.modes[name] = mode
        return name

    def consumer(self, service: str, *, timeout: float = 30.0, client: Any | None = None) -> Consumer:
        spec = self.spec(service, timeout=timeout)
        inner = make_consumer(
            spec, key="k", base_dir=Path.cwd(), client=client or self.client, poll=self.poll
        )
        return _Noted(inner, self.scheduler)

    # ------------------------------------------------------------------ ConsumerHarness

    def make_consumer(self) -> Consumer:
        return self.consumer(self.new_service())

    def declaration(self, consumer: Consumer) -> EcsConsumer:
        assert isinstance(consumer, _Noted), consumer
        return consumer.inner.spec

    def rolls(self, consumer: Consumer) -> list[RollEvent]:
        assert isinstance(consumer, _Noted), consumer
        records = self.scheduler.forced.get(consumer.inner.spec.service, [])
        return [r.event for r in records if r.outcome == "COMPLETED" and r.event is not None]

    def failing_consumer(self) -> Consumer:
        return self.consumer(f"missing-{uuid.uuid4().hex[:8]}")

    def stuck_consumer(self, timeout_s: float) -> Consumer:
        return self.consumer(self.new_service("stuck"), timeout=timeout_s)

    def deployments(self, service: str) -> list[dict[str, Any]]:
        """The service's deployments as DescribeServices shows them now."""
        out = self.client.describe_services(cluster=CLUSTER, services=[service])
        found: list[dict[str, Any]] = out["services"][0]["deployments"]
        return found


@pytest.fixture
def consumer_ecs_harness() -> Iterator[EcsHarness]:
    """The ecs consumer on in-process moto with a scheduler that completes forced deployments."""
    with mock_aws():
        scheduler = EcsScheduler(ecs_backends[DEFAULT_ACCOUNT_ID][REGION])
        scheduler.install()
        try:
            yield EcsHarness(scheduler)
        finally:
            scheduler.stop()
