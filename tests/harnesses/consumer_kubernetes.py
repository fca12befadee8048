"""The kubernetes consumer for the consumer contract suite (see tests/consumer_harness.py).

Each consumer is a fresh Deployment on the fake API server (``tests/fakes/kube_api.py``) with
an ExternalSecret in front of it, so every roll force-syncs and then restarts; the fake's
controllers play the deployment controller and External Secrets. A roll is what the pod
template's ``rotator.dev/roll`` annotation said at each restart.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from providers.consumers.kubernetes import ROLL, KubernetesRoller, make_consumer
from rotator.abc import Consumer, RollEvent
from rotator.builtin.consumers import KubernetesConsumer
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_controllers import Rollout, Sync, external_secret, workload

NAMESPACE = "consumers"


class KubernetesConsumerHarness:
    name = "kubernetes"

    def __init__(self, api: FakeKubeApi, kubeconfig: Path) -> None:
        self.api = api
        self.kubeconfig = kubeconfig

    def consumer(
        self, name: str, *, external_secret: str | None = None, timeout: float = 60
    ) -> KubernetesRoller:
        spec = KubernetesConsumer.model_validate(
            {
                "type": "kubernetes",
                "namespace": NAMESPACE,
                "kind": "Deployment",
                "name": name,
                "external_secret": external_secret,
                "kubeconfig": str(self.kubeconfig),
                "timeout": timedelta(seconds=timeout),
            }
        )
        return make_consumer(spec, key="payments", base_dir=Path.cwd())

    def deployment(self, rollout: Rollout) -> str:
        name = f"app-{uuid.uuid4().hex[:10]}"
        self.api.put(workload("Deployment", NAMESPACE, name, replicas=rollout.replicas))
        self.api.controllers.rollouts[("Deployment", NAMESPACE, name)] = rollout
        return name

    def make_consumer(self) -> Consumer:
        name = self.deployment(Rollout(replicas=2, step=0.05, settle=0.03))
        es = f"{name}-key"
        self.api.put(
            external_secret(NAMESPACE, es, target=f"{name}-env", key="API_KEY", remote="prod/payments")
        )
        self.api.controllers.syncs[(NAMESPACE, es)] = Sync(source=lambda: {"API_KEY": "synced"}, delay=0.05)
        return self.consumer(name, external_secret=es)

    def declaration(self, consumer: Consumer) -> KubernetesConsumer:
        assert isinstance(consumer, KubernetesRoller)
        return consumer.spec

    def rolls(self, consumer: Consumer) -> list[RollEvent]:
        assert isinstance(consumer, KubernetesRoller)
        key = (consumer.spec.kind, consumer.spec.namespace, consumer.spec.name)
        return [RollEvent(**json.loads(a[ROLL])) for a in self.api.restart_annotations.get(key, [])]

    def failing_consumer(self) -> Consumer:
        return self.consumer(f"missing-{uuid.uuid4().hex[:10]}")

    def stuck_consumer(self, timeout_s: float) -> Consumer:
        return self.consumer(self.deployment(Rollout(stuck=True)), timeout=timeout_s)


@pytest.fixture
def consumer_kubernetes_harness(
    kube_api: FakeKubeApi, kube_configs: tuple[Path, Path]
) -> KubernetesConsumerHarness:
    """The kubernetes harness of the consumer contract suite (the admin token's kubeconfig)."""
    return KubernetesConsumerHarness(kube_api, kube_configs[0])
