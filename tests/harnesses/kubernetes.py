"""The kubernetes backend for the store contract suite (see tests/store_harness.py).

Runs against the fake API server (``tests/fakes/kube_api.py``) through the real client, with
a kubeconfig per token: ``admin`` may do anything, ``intruder`` nothing.

A Secret is a map of fields, so the suite's two shapes map onto it like this:

* without ``field``: the target's default field ``value``; the raw text is that field's;
* with ``field``: the raw text is the JSON object of every field of the Secret. Text that is
  not a JSON object of strings cannot be a Secret's data; such text is planted as the field's
  bytes followed by ``0xFF``, which is not UTF-8: the one way a Secret's field can fail to
  hold a key (the store's :class:`StoreFormatError`).

Another writer replaces ``data`` and keeps the annotations (and so the rotator's stamps,
which must then no longer be believed).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.kubernetes import KubernetesStore, open_store
from rotator.abc import SecretStore
from rotator.builtin.stores import KubernetesTarget
from tests.fakes.kube_api import FakeKubeApi, serve

ADMIN_TOKEN = "admin-token-7f3a"
DENIED_TOKEN = "intruder-token-19c2"
NAMESPACE = "contract"


class KubernetesHarness:
    name = "kubernetes"

    def __init__(self, api: FakeKubeApi, admin: Path, denied: Path) -> None:
        self.api = api
        self.admin = admin
        self.denied = denied
        self._json_shaped: set[str] = set()

    def target(
        self, secret: str, *, field: str = "value", kubeconfig: Path | None = None
    ) -> KubernetesTarget:
        return KubernetesTarget.model_validate(
            {
                "type": "kubernetes",
                "namespace": NAMESPACE,
                "secret": secret,
                "field": field,
                "kubeconfig": str(kubeconfig or self.admin),
            }
        )

    def make_store(self, *, field: str | None = None) -> KubernetesStore:
        secret = f"contract-{uuid.uuid4().hex[:12]}"
        if field is not None:
            self._json_shaped.add(secret)
        return open_store(self.target(secret, field=field or "value"), base_dir=Path.cwd())

    def reopen(self, store: SecretStore) -> KubernetesStore:
        assert isinstance(store, KubernetesStore)
        return open_store(store.target, base_dir=Path.cwd())

    def denied_store(self, store: SecretStore) -> KubernetesStore:
        assert isinstance(store, KubernetesStore)
        target = self.target(store.target.secret, field=store.target.field, kubeconfig=self.denied)
        return open_store(target, base_dir=Path.cwd())

    def external_write(self, store: SecretStore, raw: str) -> None:
        assert isinstance(store, KubernetesStore)
        secret = store.target.secret
        existing = self.api.get("Secret", NAMESPACE, secret)
        obj = existing or {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret, "namespace": NAMESPACE},
        }
        obj["data"] = self._data(secret, store.target.field, raw)
        self.api.put(obj)

    def _data(self, secret: str, field: str, raw: str) -> dict[str, str]:
        if secret not in self._json_shaped:
            return {field: _b64(raw.encode())}
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and all(isinstance(v, str) for v in parsed.values()):
            return {k: _b64(v.encode()) for k, v in parsed.items()}
        return {field: _b64(raw.encode() + b"\xff")}

    def read_raw(self, store: SecretStore) -> str | None:
        assert isinstance(store, KubernetesStore)
        obj = self.api.get("Secret", NAMESPACE, store.target.secret)
        if obj is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        if store.target.secret in self._json_shaped:
            return json.dumps(data, sort_keys=True)
        return data.get(store.target.field)

    def delete(self, store: SecretStore) -> None:
        assert isinstance(store, KubernetesStore)
        self.api.delete("Secret", NAMESPACE, store.target.secret)
        self.api.delete("Secret", NAMESPACE, store.sibling)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def kube_api() -> Iterator[FakeKubeApi]:
    """The fake Kubernetes API server on 127.0.0.1, with the ``admin`` and ``intruder`` tokens."""
    for server in serve():
        server.add_token(ADMIN_TOKEN, "admin")
        server.add_token(DENIED_TOKEN, "system:serviceaccount:rotator:intruder", rules=[])
        yield server
        assert not server.controllers.errors, server.controllers.errors


@pytest.fixture(scope="session")
def kube_configs(kube_api: FakeKubeApi, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Kubeconfig files for the admin and the intruder token."""
    where = tmp_path_factory.mktemp("kubeconfig")
    return (
        kube_api.kubeconfig(where / "admin.yaml", ADMIN_TOKEN),
        kube_api.kubeconfig(where / "intruder.yaml", DENIED_TOKEN),
    )


@pytest.fixture
def kubernetes_harness(kube_api: FakeKubeApi, kube_configs: tuple[Path, Path]) -> KubernetesHarness:
    """The kubernetes harness of the store contract suite."""
    return KubernetesHarness(kube_api, *kube_configs)
