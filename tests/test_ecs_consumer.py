"""The ecs consumer on moto: a forced deployment, followed until ECS says it is done.

moto records ``forceNewDeployment``; the harness's scheduler (tests/harnesses/consumer_ecs.py)
moves the deployment the way ECS does. The consumer contract suite runs these behaviours for
every consumer type; here they are checked for ecs alone, with what only ECS has (a newer
deployment taking over, a service without rollout state, a throttled DescribeServices).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.core import set_initial_no_auth_action_count

from providers.consumers.ecs import make_consumer
from rotator.abc import RollEvent
from rotator.errors import ConsumerError, ConsumerTimeout, ConsumerUnavailable
from tests.harnesses.consumer_ecs import CIRCUIT_BREAKER, CLUSTER, REGION, EcsHarness


def _event(attempt: str | None = None) -> RollEvent:
    return RollEvent(
        key="payments",
        attempt=attempt or str(uuid.uuid4()),
        phase="rotation",
        key_id=f"key_{uuid.uuid4().hex[:8]}",
        prefix="adj_live_ab",
        fingerprint=uuid.uuid4().hex[:12],
    )


def test_roll_forces_a_deployment_and_returns_once_it_completed(consumer_ecs_harness: EcsHarness) -> None:
    """The roll starts a new deployment and returns only when ECS reports it COMPLETED."""
    h = consumer_ecs_harness
    service = h.new_service()
    before = h.deployments(service)[0]["id"]
    consumer = h.consumer(service)
    assert consumer.name == f"ecs:{CLUSTER}/{service}"
    event = _event()

    t0 = time.monotonic()
    consumer.roll(event, stop=threading.Event())

    assert time.monotonic() - t0 >= h.scheduler.delay  # it waited for the rollout
    (deployment,) = h.deployments(service)
    assert deployment["id"] != before and deployment["status"] == "PRIMARY"
    assert deployment["rolloutState"] == "COMPLETED"
    assert h.rolls(consumer) == [event]


def test_each_roll_is_one_more_deployment(consumer_ecs_harness: EcsHarness) -> None:
    """Two rolls, two deployments, in order."""
    h = consumer_ecs_harness
    consumer = h.make_consumer()
    first, second = _event(), _event()
    consumer.roll(first, stop=threading.Event())
    consumer.roll(second, stop=threading.Event())
    assert h.rolls(consumer) == [first, second]


def test_a_failed_deployment_fails_the_roll_with_ecs_reason(consumer_ecs_harness: EcsHarness) -> None:
    """rolloutState FAILED (the circuit breaker) is a ConsumerError quoting rolloutStateReason."""
    h = consumer_ecs_harness
    consumer = h.consumer(h.new_service("fail"))
    with pytest.raises(ConsumerError) as info:
        consumer.roll(_event(), stop=threading.Event())
    assert not isinstance(info.value, ConsumerTimeout | ConsumerUnavailable)
    assert info.value.consumer == consumer.name and str(info.value).startswith(f"{consumer.name}: ")
    assert "failed" in str(info.value) and CIRCUIT_BREAKER in str(info.value)
    assert h.rolls(consumer) == []


def test_a_deployment_that_never_completes_times_out(consumer_ecs_harness: EcsHarness) -> None:
    """IN_PROGRESS past the consumer's timeout is ConsumerTimeout, raised near the timeout."""
    h = consumer_ecs_harness
    consumer = h.stuck_consumer(0.6)
    t0 = time.monotonic()
    with pytest.raises(ConsumerTimeout) as info:
        consumer.roll(_event(), stop=threading.Event())
    took = time.monotonic() - t0
    assert 0.6 <= took < 3, took
    assert consumer.name in str(info.value) and "IN_PROGRESS" in str(info.value)


def test_stop_ends_the_wait_and_starts_nothing_when_set_before(consumer_ecs_harness: EcsHarness) -> None:
    """A stop set while waiting ends the roll at once; a stop set before starts no deployment."""
    h = consumer_ecs_harness
    service = h.new_service("stuck")
    consumer = h.consumer(service, timeout=30)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(ConsumerError) as info:
        consumer.roll(_event(), stop=stop)
    assert time.monotonic() - t0 < 2 and "stopped" in str(info.value)
    assert not isinstance(info.value, ConsumerTimeout)
    assert len(h.scheduler.forced[service]) == 1

    with pytest.raises(ConsumerError, match="stopped before"):
        consumer.roll(_event(), stop=stop)
    assert len(h.scheduler.forced[service]) == 1  # no second deployment


def test_a_newer_deployment_taking_over_completes_the_roll(consumer_ecs_harness: EcsHarness) -> None:
    """Someone deploys during our rollout: the newer PRIMARY is followed, and its completion is ours."""
    h = consumer_ecs_harness
    h.scheduler.delay = 0.6
    service = h.new_service()
    consumer = h.consumer(service)
    errors: list[BaseException] = []

    def roll() -> None:
        try:
            consumer.roll(_event(), stop=threading.Event())
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    worker = threading.Thread(target=roll)
    worker.start()
    time.sleep(0.2)
    h.client.update_service(cluster=CLUSTER, service=service, forceNewDeployment=True)
    worker.join(10)
    assert not worker.is_alive() and errors == []
    ours, theirs = h.scheduler.forced[service]
    assert (ours.outcome, theirs.outcome) == ("IN_PROGRESS", "COMPLETED")  # ours was superseded
    assert [d["id"] for d in h.deployments(service)] == [theirs.id]


def test_without_rollout_state_steady_state_decides(consumer_ecs_harness: EcsHarness) -> None:
    """Behind a Classic Load Balancer ECS gives no rolloutState: one deployment at its desired count is done."""
    h = consumer_ecs_harness
    service = h.new_service("classic")
    consumer = h.consumer(service)
    consumer.roll(_event(), stop=threading.Event())
    (deployment,) = h.deployments(service)
    assert "rolloutState" not in deployment
    assert deployment["runningCount"] == deployment["desiredCount"] == 2


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [(CLUSTER, "no such service (UpdateService: ServiceNotFoundException"), ("nope", "no such cluster")],
)
def test_a_missing_service_or_cluster_fails_at_once(
    consumer_ecs_harness: EcsHarness, cluster: str, expected: str
) -> None:
    """ServiceNotFoundException and ClusterNotFoundException are one clear error naming the consumer."""
    h = consumer_ecs_harness
    spec = h.spec("missing", cluster=cluster)
    consumer = make_consumer(spec, key="k", base_dir=Path.cwd(), client=h.client, poll=0.05)
    with pytest.raises(ConsumerError) as info:
        consumer.roll(_event(), stop=threading.Event())
    assert not isinstance(info.value, ConsumerUnavailable)
    assert str(info.value).startswith(f"ecs:{cluster}/missing: {expected}"), str(info.value)


def test_denied_access_is_a_clear_error(consumer_ecs_harness: EcsHarness) -> None:
    """An IAM user that may only describe services cannot roll: the error names the actions needed."""
    h = consumer_ecs_harness
    service = h.new_service()
    iam = boto3.client("iam", region_name=REGION)
    user = f"ecs-reader-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ecs:DescribeServices", "Resource": "*"}],
    }
    iam.put_user_policy(UserName=user, PolicyName="describe-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    client = boto3.client(
        "ecs",
        region_name=REGION,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    consumer = h.consumer(service, client=_Enforced(client))
    with pytest.raises(ConsumerError) as info:
        consumer.roll(_event(), stop=threading.Event())
    assert not isinstance(info.value, ConsumerUnavailable)
    assert str(info.value).startswith(f"{consumer.name}: access denied (UpdateService: AccessDenied")
    assert "ecs:UpdateService" in str(info.value)
    assert service not in h.scheduler.forced


def test_an_unreachable_endpoint_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection is ConsumerUnavailable (transient), with no AWS client injected."""
    from rotator.builtin.consumers import EcsConsumer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    spec = EcsConsumer.model_validate(
        {
            "type": "ecs",
            "cluster": "c",
            "service": "s",
            "region": REGION,
            "endpoint_url": "http://127.0.0.1:9",
        }
    )
    consumer = make_consumer(spec, key="k", base_dir=Path.cwd())
    with pytest.raises(ConsumerUnavailable, match=r"^ecs:c/s: UpdateService: cannot reach ECS"):
        consumer.roll(_event(), stop=threading.Event())


def test_throttled_looks_are_retried_until_the_rollout_completes(consumer_ecs_harness: EcsHarness) -> None:
    """DescribeServices throttled for a while during the wait does not fail the roll."""
    h = consumer_ecs_harness
    service = h.new_service()
    client = _Throttled(h.client, times=3)
    consumer = h.consumer(service, client=client)
    consumer.roll(_event(), stop=threading.Event())
    assert client.throttled == 3
    assert h.deployments(service)[0]["rolloutState"] == "COMPLETED"


def test_throttled_until_the_timeout_is_unavailable(consumer_ecs_harness: EcsHarness) -> None:
    """Still throttled at the timeout: ConsumerUnavailable, so the next pass retries."""
    h = consumer_ecs_harness
    client = _Throttled(h.client, times=10_000)
    consumer = h.consumer(h.new_service(), client=client, timeout=0.5)
    with pytest.raises(ConsumerUnavailable, match="ThrottlingException"):
        consumer.roll(_event(), stop=threading.Event())


def test_through_the_endpoint_of_a_moto_server(consumer_ecs_harness: EcsHarness, moto_server: str) -> None:
    """The consumer built from its declaration alone (endpoint_url, region) rolls over real HTTP."""
    h = consumer_ecs_harness
    service = h.new_service()
    spec = h.spec(service, endpoint_url=moto_server)
    consumer = make_consumer(spec, key="k", base_dir=Path.cwd(), poll=0.05)
    consumer.roll(_event(), stop=threading.Event())
    assert [r.outcome for r in h.scheduler.forced[service]] == ["COMPLETED"]


class _Enforced:
    """An ECS client whose calls moto checks against IAM (signature, then policy)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return set_initial_no_auth_action_count(0)(found)(*args, **kwargs)

        return call


class _Throttled:
    """An ECS client whose next ``times`` DescribeServices answer ThrottlingException."""

    def __init__(self, client: Any, *, times: int) -> None:
        self._client = client
        self._left = times
        self.throttled = 0

    def update_service(self, **kwargs: Any) -> Any:
        return self._client.update_service(**kwargs)

    def describe_services(self, **kwargs: Any) -> Any:
        if self._left > 0:
            self._left -= 1
            self.throttled += 1
            response: Any = {
                "Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            }
            raise ClientError(response, "DescribeServices")
        return self._client.describe_services(**kwargs)
