"""providers/_kube.py: one cached client per (kubeconfig, context), the in-cluster fallback, and
error texts that keep the kind and never quote what a body may carry."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config

from providers import _kube

CANARY = "cny5f1e0a9b7c3d"


def _two_contexts(path: Path) -> Path:
    """A kubeconfig with contexts ``fake`` (current) and ``other`` on one unreachable server."""
    cluster = {"name": "fake", "cluster": {"server": "http://127.0.0.1:1"}}
    contexts = [
        {"name": name, "context": {"cluster": "fake", "user": "rotator", "namespace": name}}
        for name in ("fake", "other")
    ]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "rotator", "user": {"token": "t"}}],
        "contexts": contexts,
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_one_client_per_kubeconfig_and_context(tmp_path: Path) -> None:
    config = _two_contexts(tmp_path / "config")
    found: list[object] = []

    def get() -> None:
        found.append(_kube.api_client("config", None, base_dir=tmp_path))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in found}) == 1
    assert _kube.api_client(str(config), None, base_dir=Path("/")) is found[0]  # the same file, absolute
    other = _kube.api_client("config", "other", base_dir=tmp_path)
    assert other is not found[0]
    assert _kube.server(other) == "http://127.0.0.1:1"


@pytest.fixture
def no_default_client() -> Iterator[None]:
    """The process's client for no kubeconfig and no context, made afresh for the test only."""
    _kube._clients.pop((None, None), None)
    yield
    _kube._clients.pop((None, None), None)


@pytest.mark.usefixtures("no_default_client")
def test_in_cluster_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod without a mounted token and no kubeconfig: one error saying so."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    with pytest.raises(
        _kube.KubeConfigError, match="in-cluster configuration: Service token file does not exist"
    ):
        _kube.api_client(None, None, base_dir=tmp_path)
    fallback = _two_contexts(tmp_path / "fallback")
    monkeypatch.setenv("KUBECONFIG", str(fallback))
    assert _kube.server(_kube.api_client(None, None, base_dir=tmp_path)) == "http://127.0.0.1:1"


@pytest.mark.usefixtures("no_default_client")
def test_in_cluster_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the service account's token and CA mounted, the pod's own API server over https."""
    (tmp_path / "token").write_text("in-cluster-token")
    (tmp_path / "ca.crt").write_text("not checked until a request\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    assert _kube.server(_kube.api_client(None, None, base_dir=tmp_path)) == "https://10.96.0.1:443"


def _api_exception(status: int, message: str, reason: str = "Invalid") -> ApiException:
    body = {"kind": "Status", "status": "Failure", "reason": reason, "message": message, "code": status}
    if status == 422:
        body["details"] = {"causes": [{"field": "data[API_KEY]", "message": f"bad {message}"}]}
    return ApiException(status=status, reason=reason, body=json.dumps(body))


@pytest.mark.parametrize(
    ("status", "kind", "shows_message"),
    [
        (401, "denied", True),
        (403, "denied", True),
        (404, "not_found", True),
        (409, "conflict", True),
        (422, "rejected", False),
        (400, "rejected", False),
        (429, "unavailable", False),
        (500, "unavailable", False),
        (503, "unavailable", False),
    ],
)
def test_failure_kinds_and_texts(status: int, kind: str, shows_message: bool) -> None:
    failure = _kube.failure(_api_exception(status, f'Invalid value: "{CANARY}"'))
    assert failure.kind == kind and failure.status == status
    assert failure.detail.startswith(f"HTTP {status} Invalid")
    assert (CANARY in failure.detail) is shows_message
    if status == 422:
        assert failure.detail.endswith("(fields: data[API_KEY])")


def test_network_failures_are_unavailable() -> None:
    error = urllib3.exceptions.MaxRetryError(
        urllib3.HTTPConnectionPool("127.0.0.1", 1), "/api", ConnectionRefusedError("refused")
    )
    failure = _kube.failure(error)
    assert failure == _kube.Failure("unavailable", "could not reach the API server (ConnectionRefusedError)")
    assert _kube.failure(ApiException(status=502, body="<html>gateway</html>")).detail == "HTTP 502"
