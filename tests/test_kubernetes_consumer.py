"""The kubernetes consumer against the fake API server (``tests/fakes/kube_api.py``), spoken to
by the official client: a restart exactly like ``kubectl rollout restart``, a wait judged like
``kubectl rollout status``, and External Secrets force-synced first."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from providers.consumers._rollout import progress
from providers.consumers.kubernetes import FORCE_SYNC, RESTARTED_AT, ROLL, KubernetesRoller, _refreshed_since
from rotator.abc import RollEvent
from rotator.builtin.consumers import KubernetesConsumer
from rotator.errors import ConsumerError, ConsumerTimeout, ConsumerUnavailable
from tests.fakes.kube_api import FakeKubeApi, Rule
from tests.fakes.kube_controllers import Rollout, Sync, external_secret, workload
from tests.harnesses.consumer_kubernetes import NAMESPACE, KubernetesConsumerHarness
from tests.harnesses.kubernetes import ADMIN_TOKEN

EVENT = RollEvent(
    key="payments",
    attempt="a-1f2e",
    phase="rotation",
    key_id="key_8c1d",
    prefix="adj_live_8c1d",
    fingerprint="5d41402abc4b",
)


@pytest.fixture
def harness(consumer_kubernetes_harness: KubernetesConsumerHarness) -> KubernetesConsumerHarness:
    return consumer_kubernetes_harness


def _roll(consumer: KubernetesRoller, stop: threading.Event | None = None) -> float:
    """Roll ``consumer`` with :data:`EVENT`; the seconds it took."""
    began = time.monotonic()
    consumer.roll(EVENT, stop=stop or threading.Event())
    return time.monotonic() - began


def _key(consumer: KubernetesRoller) -> tuple[str, str, str]:
    return (consumer.spec.kind, consumer.spec.namespace, consumer.spec.name)


def _with_es(harness: KubernetesConsumerHarness, value: list[str], **sync: object) -> tuple[str, str]:
    """A Deployment and an ExternalSecret syncing ``value[0]`` into its Secret."""
    name = harness.deployment(Rollout(step=0.05, settle=0.03))
    es = f"{name}-key"
    harness.api.put(
        external_secret(NAMESPACE, es, target=f"{name}-env", key="API_KEY", remote="prod/payments")
    )
    harness.api.controllers.syncs[(NAMESPACE, es)] = Sync(source=lambda: {"API_KEY": value[0]}, delay=0.05)
    deadline = time.monotonic() + 5  # the first sync, as after `kubectl apply`
    while not harness.api.controllers.synced.get((NAMESPACE, es)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for attribute, setting in sync.items():
        setattr(harness.api.controllers.syncs[(NAMESPACE, es)], attribute, setting)
    return name, es


# --------------------------------------------------------------------------- the restart


def test_restarts_once_and_returns_when_rolled_out(harness: KubernetesConsumerHarness) -> None:
    """One restartedAt patch, then the roll returns only after the rollout completed."""
    name = harness.deployment(Rollout(replicas=3, step=0.15, settle=0.1))
    consumer = harness.consumer(name)
    took = _roll(consumer)
    key = _key(consumer)
    assert len(harness.api.restarts[key]) == 1
    (done,) = harness.api.controllers.completed[key]
    assert done <= time.monotonic()
    assert took >= 3 * 0.15 + 2 * 0.1
    obj = harness.api.get("Deployment", NAMESPACE, name)
    assert obj is not None and progress("Deployment", obj, obj["metadata"]["generation"]) is None
    assert obj["metadata"]["generation"] == 2
    restarted = harness.api.restarts[key][0]
    assert datetime.strptime(restarted, "%Y-%m-%dT%H:%M:%SZ")  # kubectl's RFC 3339, whole seconds
    (annotations,) = harness.api.restart_annotations[key]
    assert RollEvent(**json.loads(annotations[ROLL])) == EVENT
    patches = [
        r for r in harness.api.requests if r.method == "PATCH" and r.path.endswith(f"/deployments/{name}")
    ]
    assert [p.content_type for p in patches] == ["application/strategic-merge-patch+json"]


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_statefulset_and_daemonset(harness: KubernetesConsumerHarness, kind: str) -> None:
    """StatefulSets and DaemonSets restart the same way and are waited for by their own fields."""
    name = f"sts-{uuid.uuid4().hex[:8]}"
    harness.api.put(workload(kind, NAMESPACE, name, replicas=3))
    harness.api.controllers.rollouts[(kind, NAMESPACE, name)] = Rollout(replicas=3, step=0.1, settle=0.05)
    spec = harness.consumer(name).spec.model_copy(update={"kind": kind})
    consumer = KubernetesRoller(spec, base_dir=Path.cwd())
    took = _roll(consumer)
    assert len(harness.api.restarts[(kind, NAMESPACE, name)]) == 1
    assert len(harness.api.controllers.completed[(kind, NAMESPACE, name)]) == 1
    assert took >= 3 * 0.1


def test_two_rolls_in_one_second_restart_twice(harness: KubernetesConsumerHarness) -> None:
    """restartedAt has whole seconds: a second roll within the same second waits for the next
    one instead of writing the same value (which would roll nothing out)."""
    consumer = harness.consumer(harness.deployment(Rollout(replicas=1, step=0.01, settle=0.01)))
    _roll(consumer)
    _roll(consumer)
    first, second = harness.api.restarts[_key(consumer)]
    assert first != second
    assert len(harness.api.controllers.completed[_key(consumer)]) == 2


def test_progress_deadline_exceeded_is_an_error_not_a_timeout(harness: KubernetesConsumerHarness) -> None:
    """A Progressing condition with ProgressDeadlineExceeded fails the roll at once."""
    consumer = harness.consumer(harness.deployment(Rollout(stuck=True, deadline=0.3)), timeout=30)
    with pytest.raises(ConsumerError) as info:
        _roll(consumer)
    assert type(info.value) is ConsumerError
    assert "ProgressDeadlineExceeded" in str(info.value)
    assert str(info.value).startswith(consumer.name)


def test_timeout(harness: KubernetesConsumerHarness) -> None:
    """A rollout that never completes is a ConsumerTimeout once the timeout has passed."""
    consumer = harness.consumer(harness.deployment(Rollout(stuck=True)), timeout=1.5)
    began = time.monotonic()
    with pytest.raises(ConsumerTimeout) as info:
        _roll(consumer)
    took = time.monotonic() - began
    assert 1.5 <= took < 3.5
    assert "1 of 2 new replicas updated" in str(info.value) and consumer.name in str(info.value)


def test_stop_ends_the_wait(harness: KubernetesConsumerHarness) -> None:
    """stop set while waiting ends the roll with a ConsumerError, promptly."""
    consumer = harness.consumer(harness.deployment(Rollout(stuck=True)), timeout=60)
    stop = threading.Event()
    threading.Timer(0.4, stop.set).start()
    began = time.monotonic()
    with pytest.raises(ConsumerError) as info:
        _roll(consumer, stop)
    assert type(info.value) is ConsumerError and "stopped" in str(info.value)
    assert time.monotonic() - began < 2.5
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(ConsumerError, match="stopped before the roll began"):
        _roll(consumer, stopped)
    assert len(harness.api.restarts[_key(consumer)]) == 1


def test_a_retry_after_an_interrupted_roll_restarts_again(harness: KubernetesConsumerHarness) -> None:
    """A roll cut short after its patch and retried restarts a second time (harmless, documented)."""
    name = harness.deployment(Rollout(stuck=True))
    consumer = harness.consumer(name, timeout=60)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(ConsumerError):
        _roll(consumer, stop)
    harness.api.controllers.rollouts[("Deployment", NAMESPACE, name)] = Rollout(step=0.02, settle=0.02)
    _roll(consumer)
    assert len(harness.api.restarts[_key(consumer)]) == 2


@pytest.mark.parametrize(
    ("kind", "strategy", "paused", "refusal"),
    [
        ("Deployment", "RollingUpdate", True, "paused"),
        ("StatefulSet", "OnDelete", False, "OnDelete"),
        ("DaemonSet", "OnDelete", False, "OnDelete"),
    ],
)
def test_workloads_a_restart_would_not_roll_are_refused(
    harness: KubernetesConsumerHarness, kind: str, strategy: str, paused: bool, refusal: str
) -> None:
    """A paused Deployment or an OnDelete strategy: refused before any patch, as kubectl does."""
    name = f"w-{uuid.uuid4().hex[:8]}"
    harness.api.put(workload(kind, NAMESPACE, name, strategy=strategy, paused=paused))
    spec = harness.consumer(name).spec.model_copy(update={"kind": kind})
    with pytest.raises(ConsumerError, match=refusal):
        _roll(KubernetesRoller(spec, base_dir=Path.cwd()))
    assert (kind, NAMESPACE, name) not in harness.api.restarts


def test_missing_workload(harness: KubernetesConsumerHarness) -> None:
    consumer = harness.failing_consumer()
    assert isinstance(consumer, KubernetesRoller)
    with pytest.raises(ConsumerError) as info:
        _roll(consumer)
    assert type(info.value) is ConsumerError
    assert str(info.value).startswith(f"{consumer.name}: read: HTTP 404 NotFound")


# --------------------------------------------------------------------------- External Secrets


def test_force_sync_then_restart(harness: KubernetesConsumerHarness) -> None:
    """The ExternalSecret is annotated, synced (the new value in its Secret), and only then
    is the workload restarted."""
    value = ["old-value"]
    name, es = _with_es(harness, value)
    value[0] = "new-value"
    consumer = harness.consumer(name, external_secret=es)
    _roll(consumer)
    secret = harness.api.get("Secret", NAMESPACE, f"{name}-env")
    assert secret is not None and secret["data"]["API_KEY"] == "bmV3LXZhbHVl"  # base64 of new-value
    synced = harness.api.controllers.synced[(NAMESPACE, es)]
    assert len(synced) == 2  # at creation, and the forced one
    (restart,) = [
        r for r in harness.api.requests if r.method == "PATCH" and r.path.endswith(f"/deployments/{name}")
    ]
    (annotate,) = [
        r for r in harness.api.requests if r.method == "PATCH" and r.path.endswith(f"/externalsecrets/{es}")
    ]
    assert annotate.at < synced[1] < restart.at
    assert annotate.content_type == "application/merge-patch+json"  # custom resources refuse strategic merge
    assert annotate.path.startswith("/apis/external-secrets.io/v1/")
    obj = harness.api.get("ExternalSecret", NAMESPACE, es)
    assert obj is not None and FORCE_SYNC in obj["metadata"]["annotations"]


def test_external_secrets_v1beta1(harness: KubernetesConsumerHarness, kube_api: FakeKubeApi) -> None:
    """A cluster serving only v1beta1 (External Secrets before 0.16) is spoken to in v1beta1."""
    name, es = _with_es(harness, ["v"])
    kube_api.eso_versions = ("v1beta1",)
    try:
        _roll(harness.consumer(name, external_secret=es))
    finally:
        kube_api.eso_versions = ("v1",)
    (annotate,) = [
        r for r in kube_api.requests if r.method == "PATCH" and r.path.endswith(f"/externalsecrets/{es}")
    ]
    assert annotate.path.startswith("/apis/external-secrets.io/v1beta1/")


def test_sync_error_fails_before_any_restart(harness: KubernetesConsumerHarness) -> None:
    """Ready=False with SecretSyncedError after the annotation fails the roll; nothing restarts."""
    name, es = _with_es(harness, ["v"], fail=True)
    consumer = harness.consumer(name, external_secret=es)
    with pytest.raises(ConsumerError, match="SecretSyncedError") as info:
        _roll(consumer)
    assert type(info.value) is ConsumerError
    assert _key(consumer) not in harness.api.restarts


def test_a_sync_that_never_comes_times_out(harness: KubernetesConsumerHarness) -> None:
    name, es = _with_es(harness, ["v"], down=True)
    consumer = harness.consumer(name, external_secret=es, timeout=1.2)
    with pytest.raises(ConsumerTimeout, match=f"the sync of ExternalSecret {es}"):
        _roll(consumer)
    assert _key(consumer) not in harness.api.restarts


def test_created_once_is_refused(harness: KubernetesConsumerHarness) -> None:
    """An ExternalSecret that never updates its Secret cannot bring the new key: refused."""
    name = harness.deployment(Rollout())
    es = f"{name}-once"
    doc = external_secret(
        NAMESPACE, es, target=f"{name}-env", key="K", remote="r", refresh_policy="CreatedOnce"
    )
    harness.api.put(doc)
    with pytest.raises(ConsumerError, match="CreatedOnce"):
        _roll(harness.consumer(name, external_secret=es))


def test_external_secrets_not_installed(harness: KubernetesConsumerHarness, kube_api: FakeKubeApi) -> None:
    name = harness.deployment(Rollout())
    kube_api.eso_versions = ()
    try:
        with pytest.raises(ConsumerError, match="External Secrets is not installed"):
            _roll(harness.consumer(name, external_secret="anything"))
    finally:
        kube_api.eso_versions = ("v1",)


def test_refresh_is_judged_by_time_or_synced_version() -> None:
    """refreshTime has whole seconds: a sync in the same second shows in syncedResourceVersion."""
    before = {"refreshTime": "2026-05-01T10:00:00Z", "syncedResourceVersion": "1-aaa"}
    assert not _refreshed_since(before, dict(before))
    assert _refreshed_since(before, {**before, "syncedResourceVersion": "1-bbb"})
    assert _refreshed_since(before, {**before, "refreshTime": "2026-05-01T10:00:01Z"})
    assert not _refreshed_since(before, {**before, "refreshTime": "2026-05-01T09:59:59Z"})
    assert _refreshed_since({}, {"refreshTime": "2026-05-01T10:00:00Z"})
    assert not _refreshed_since({}, {})


# --------------------------------------------------------------------------- access, errors, secrets


def test_403_names_the_consumer_and_restarts_nothing(
    harness: KubernetesConsumerHarness, kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    """A token that may read but not patch the Deployment: one ConsumerError naming the consumer
    and the verb refused."""
    name = harness.deployment(Rollout())
    token = f"reader-{uuid.uuid4().hex}"
    kube_api.add_token(token, "system:serviceaccount:rotator:rotator", rules=[])
    kube_api.grant(token, Rule(frozenset({"get"}), "deployments.apps", NAMESPACE, frozenset({name})))
    consumer = KubernetesConsumerHarness(kube_api, kube_api.kubeconfig(tmp_path / "k", token)).consumer(name)
    with pytest.raises(ConsumerError) as info:
        _roll(consumer)
    message = str(info.value)
    assert message.startswith(f"kubernetes:{NAMESPACE}/Deployment/{name}: restart: HTTP 403 Forbidden")
    assert "cannot patch resource" in message
    assert token not in message
    assert _key(consumer) not in kube_api.restarts


def test_token_never_printed(
    harness: KubernetesConsumerHarness,
    kube_api: FakeKubeApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Neither the bearer token nor a Secret's data reach an error or a log line, at DEBUG."""
    token = f"tok-{uuid.uuid4().hex}"
    kube_api.add_token(token, "someone", rules=[])
    config = kube_api.kubeconfig(tmp_path / "k", token)
    wrong = kube_api.kubeconfig(tmp_path / "wrong", f"{token}-unknown")
    name = harness.deployment(Rollout())
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for kubeconfig in (config, wrong):
        consumer = KubernetesConsumerHarness(kube_api, kubeconfig).consumer(name, external_secret="es")
        with pytest.raises(ConsumerError) as info:
            _roll(consumer)
        seen.append(repr(info.value) + str(info.value))
    assert "HTTP 403" in seen[0] and "HTTP 401" in seen[1]
    assert all(token not in text for text in [*seen, caplog.text])


def test_unreachable_api_server_is_transient(tmp_path: Path) -> None:
    """Nothing listening: ConsumerUnavailable, which the engine retries on its next pass."""
    fake = FakeKubeApi().start()
    kubeconfig = fake.kubeconfig(tmp_path / "k", "t")
    fake.stop()
    consumer = KubernetesConsumerHarness(fake, kubeconfig).consumer("api")
    with pytest.raises(ConsumerUnavailable, match="could not reach the API server"):
        _roll(consumer)


def test_blips_while_polling_are_ridden_out(harness: KubernetesConsumerHarness) -> None:
    """503s while waiting do not fail the roll; a 503 on the restart itself is transient."""
    consumer = harness.consumer(harness.deployment(Rollout(replicas=2, step=0.3, settle=0.1)))

    def blip_once_restarted() -> None:
        while _key(consumer) not in harness.api.restarts:
            time.sleep(0.01)
        harness.api.inject(503, times=2)

    threading.Thread(target=blip_once_restarted, daemon=True).start()
    _roll(consumer)
    assert len(harness.api.restarts[_key(consumer)]) == 1
    polls = [
        r.code for r in harness.api.requests if r.method == "GET" and r.path.endswith(consumer.spec.name)
    ]
    assert polls.count(503) == 2 and polls[-1] == 200
    other = harness.consumer(harness.deployment(Rollout()))
    harness.api.inject(503, times=1)
    with pytest.raises(ConsumerUnavailable, match="503"):
        _roll(other)


def test_plain_http_to_a_remote_server_is_refused(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k"
    FakeKubeApi().kubeconfig(kubeconfig, "t")
    kubeconfig.write_text(kubeconfig.read_text().replace("server: ''", "server: http://kube.example.com"))
    consumer = KubernetesConsumerHarness(FakeKubeApi(), kubeconfig).consumer("api")
    with pytest.raises(ConsumerError, match="only https, or plain http to a loopback address"):
        _roll(consumer)


def test_from_the_rotation_file_model(harness: KubernetesConsumerHarness, tmp_path: Path) -> None:
    """The model's factory resolves a relative kubeconfig against the rotation file's directory."""
    name = harness.deployment(Rollout(step=0.02, settle=0.02))
    (tmp_path / "kube").mkdir()
    harness.api.kubeconfig(tmp_path / "kube" / "config", ADMIN_TOKEN)
    spec = KubernetesConsumer.model_validate(
        {
            "type": "kubernetes",
            "namespace": NAMESPACE,
            "name": name,
            "kubeconfig": "kube/config",
            "timeout": "30s",
        }
    )
    consumer = spec.make_consumer(key="payments", base_dir=tmp_path)
    assert consumer.name == f"kubernetes:{NAMESPACE}/Deployment/{name}"
    consumer.roll(EVENT, stop=threading.Event())
    assert len(harness.api.restarts[("Deployment", NAMESPACE, name)]) == 1
    assert spec.timeout == timedelta(seconds=30)
    assert RESTARTED_AT in harness.api.restart_annotations[("Deployment", NAMESPACE, name)][0]


def test_restarted_at_is_utc_now(harness: KubernetesConsumerHarness) -> None:
    consumer = harness.consumer(harness.deployment(Rollout(step=0.02, settle=0.02)))
    before = datetime.now(UTC).replace(microsecond=0)
    _roll(consumer)
    (value,) = harness.api.restarts[_key(consumer)]
    written = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= written <= datetime.now(UTC)
