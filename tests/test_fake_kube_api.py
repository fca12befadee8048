"""The fake API server (``tests/fakes/kube_api.py``) is as strict as the real one where the
rotator's code relies on it, checked through the official client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from tests.fakes.kube_api import FakeKubeApi, Rule
from tests.fakes.kube_controllers import external_secret, workload

NS = "fake"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeKubeApi]:
    server = FakeKubeApi().start()
    server.add_token("admin", "admin")
    try:
        yield server
    finally:
        server.stop()


def _client(api: FakeKubeApi, tmp_path: Path, token: str = "admin") -> k8s.ApiClient:  # noqa: S107 - a fake token
    path = api.kubeconfig(tmp_path / f"{token}.yaml", token)
    return k8s_config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]


def _status(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def _secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def test_resource_versions_and_conflicts(api: FakeKubeApi, tmp_path: Path) -> None:
    """Every write bumps resourceVersion; a stale one in a PUT or a patch is 409 Conflict; a
    no-op patch writes nothing; creating an existing name is 409 AlreadyExists."""
    core = k8s.CoreV1Api(_client(api, tmp_path))
    created = core.create_namespaced_secret(NS, _secret("s", a="1"))
    first = created.metadata.resource_version
    patched = core.patch_namespaced_secret(
        "s", NS, {"metadata": {"labels": {"x": "y"}}}, _content_type="application/merge-patch+json"
    )
    assert int(patched.metadata.resource_version) > int(first)
    same = core.patch_namespaced_secret(
        "s", NS, {"metadata": {"labels": {"x": "y"}}}, _content_type="application/merge-patch+json"
    )
    assert same.metadata.resource_version == patched.metadata.resource_version
    stale = {"metadata": {"resourceVersion": first, "labels": {"x": "z"}}}
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_secret("s", NS, stale, _content_type="application/merge-patch+json")
    assert info.value.status == 409 and _status(info.value)["reason"] == "Conflict"
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "resourceVersion": first},
        "data": {},
    }
    with pytest.raises(ApiException) as info:
        core.replace_namespaced_secret("s", NS, body)
    assert info.value.status == 409
    with pytest.raises(ApiException) as info:
        core.create_namespaced_secret(NS, _secret("s"))
    assert info.value.status == 409 and _status(info.value)["reason"] == "AlreadyExists"


def test_merge_patch_semantics(api: FakeKubeApi, tmp_path: Path) -> None:
    """RFC 7386: maps merge, null deletes; Secret data must be base64 with valid keys."""
    core = k8s.CoreV1Api(_client(api, tmp_path))
    core.create_namespaced_secret(NS, _secret("m", a="1", b="2"))
    patch = {"data": {"a": None, "c": "Mw=="}, "metadata": {"annotations": {"k": "v"}}}
    out = core.patch_namespaced_secret("m", NS, patch, _content_type="application/merge-patch+json")
    stored = api.get("Secret", NS, "m")
    assert stored is not None and stored["data"] == {"b": "Mg==", "c": "Mw=="}
    assert out.metadata.annotations == {"k": "v"}
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_secret(
            "m", NS, {"data": {"bad key": "YQ=="}}, _content_type="application/merge-patch+json"
        )
    assert info.value.status == 422
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_secret(
            "m", NS, {"data": {"d": "not base64!"}}, _content_type="application/merge-patch+json"
        )
    assert info.value.status == 400


def test_generation_and_status_of_workloads(api: FakeKubeApi, tmp_path: Path) -> None:
    """A spec change bumps generation; metadata changes do not; status is not writable here."""
    api.put(workload("Deployment", NS, "d"))
    apps = k8s.AppsV1Api(_client(api, tmp_path))
    meta = apps.patch_namespaced_deployment("d", NS, {"metadata": {"labels": {"a": "b"}}})
    assert meta.metadata.generation == 1
    restart = {
        "spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "t1"}}}}
    }
    bumped = apps.patch_namespaced_deployment("d", NS, restart)  # the client sends strategic merge
    assert bumped.metadata.generation == 2
    sneaky = apps.patch_namespaced_deployment("d", NS, {"status": {"observedGeneration": 99}})
    assert sneaky.status.observed_generation == 1
    assert api.restarts[("Deployment", NS, "d")] == ["t1"]
    with pytest.raises(ApiException) as info:
        apps.patch_namespaced_deployment(
            "d", NS, {"spec": {"template": {"spec": {"containers": [{"name": "x"}]}}}}
        )
    assert info.value.status == 500  # the fake refuses list merges it does not implement


def test_custom_resources_refuse_strategic_merge(api: FakeKubeApi, tmp_path: Path) -> None:
    api.put(external_secret(NS, "es", target="t", key="k", remote="r"))
    custom = k8s.CustomObjectsApi(_client(api, tmp_path))
    where = ("external-secrets.io", "v1", NS, "externalsecrets", "es")
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(
            *where,
            {"metadata": {"annotations": {"a": "b"}}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert info.value.status == 415
    custom.patch_namespaced_custom_object(
        *where, {"metadata": {"annotations": {"a": "b"}}}, _content_type="application/merge-patch+json"
    )
    with pytest.raises(ApiException) as info:
        custom.get_namespaced_custom_object("external-secrets.io", "v1beta1", NS, "externalsecrets", "es")
    assert info.value.status == 404  # not served


def test_dry_run_stores_nothing(api: FakeKubeApi, tmp_path: Path) -> None:
    core = k8s.CoreV1Api(_client(api, tmp_path))
    core.create_namespaced_secret(NS, _secret("dry"), dry_run="All")
    assert api.get("Secret", NS, "dry") is None
    core.create_namespaced_secret(NS, _secret("dry", a="1"))
    before = api.get("Secret", NS, "dry")
    core.patch_namespaced_secret(
        "dry", NS, {"data": {"a": None}}, dry_run="All", _content_type="application/merge-patch+json"
    )
    assert api.get("Secret", NS, "dry") == before
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_secret(
            "dry", NS, {}, dry_run="Some", _content_type="application/merge-patch+json"
        )
    assert info.value.status == 400


def test_authentication_and_rbac(api: FakeKubeApi, tmp_path: Path) -> None:
    """Unknown tokens are 401; rules limit verbs and names; resourceNames never grant create."""
    api.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": NS}})
    api.add_token("sa", "system:serviceaccount:rotator:rotator", rules=[])
    api.grant("sa", Rule(frozenset({"get", "create"}), "secrets", NS, frozenset({"mine"})))
    core = k8s.CoreV1Api(_client(api, tmp_path, "sa"))
    core.read_namespaced_secret("mine", NS)
    with pytest.raises(ApiException) as info:
        core.read_namespaced_secret("other", NS)
    assert info.value.status == 403
    assert _status(info.value)["message"] == (
        'secrets "other" is forbidden: User "system:serviceaccount:rotator:rotator" cannot get resource '
        f'"secrets" in API group "" in the namespace "{NS}"'
    )
    with pytest.raises(ApiException) as info:
        core.create_namespaced_secret(NS, _secret("mine2"))
    assert info.value.status == 403
    with pytest.raises(ApiException) as info:
        k8s.CoreV1Api(_client(api, tmp_path, "nobody")).read_namespaced_secret("mine", NS)
    assert info.value.status == 401
