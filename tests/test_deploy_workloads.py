"""deploy/k8s/workloads: the Role the kubernetes target and consumer need, checked offline like the
rest of deploy/, and against the code: with exactly its rules a roll and a rotation of the
Secret succeed on the fake API server, and without any one of its verbs something fails."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from providers.consumers.kubernetes import make_consumer
from providers.kubernetes import open_store
from rotator.abc import RollEvent, Stamp
from rotator.builtin.consumers import KubernetesConsumer
from rotator.builtin.stores import KubernetesTarget
from rotator.errors import ConsumerError, StoreAccessDenied
from rotator.secret import Secret
from tests.fakes.kube_api import FakeKubeApi, Rule
from tests.fakes.kube_controllers import Rollout, Sync, external_secret, workload
from tests.test_deploy import DEPLOY, REPO, offline, tools  # noqa: F401 - tools is a fixture

ROLE = DEPLOY / "k8s/workloads/role.yaml"


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(ROLE.read_text()) if d}


def _rules(role: dict[str, Any], without: tuple[int, str] | None = None) -> list[Rule]:
    """The Role's rules as the fake's, leaving out verb ``without[1]`` of rule ``without[0]``."""
    rules = []
    for i, rule in enumerate(role["rules"]):
        verbs = frozenset(v for v in rule["verbs"] if without != (i, v))
        names = frozenset(rule["resourceNames"]) if "resourceNames" in rule else None
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                full = f"{resource}.{group}" if group else resource
                rules.append(Rule(verbs, full, role["metadata"]["namespace"], names))
    return rules


def test_role_binding_and_names() -> None:
    """Bound to the rotator's ServiceAccount; create is the only rule without resourceNames."""
    docs = _docs()
    role, binding = docs["Role"], docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rotator"}
    account = yaml.safe_load((DEPLOY / "k8s/serviceaccount.yaml").read_text())
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "pay"
    unnamed = [r for r in role["rules"] if "resourceNames" not in r]
    assert unnamed == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    assert all("*" not in json.dumps(r) for r in role["rules"])


# --------------------------------------------------------------------------- against the code


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeKubeApi]:
    api = FakeKubeApi().start()
    api.add_token("admin", "admin")
    try:
        yield api
    finally:
        api.stop()
    assert not api.controllers.errors


def _scene(api: FakeKubeApi) -> None:
    """The README's example: Deployment api, ExternalSecret payments-adjudon, in namespace pay."""
    api.put(workload("Deployment", "pay", "api"))
    api.controllers.rollouts[("Deployment", "pay", "api")] = Rollout(step=0.02, settle=0.02)
    api.put(external_secret("pay", "payments-adjudon", target="payments-adjudon", key="K", remote="r"))
    api.controllers.syncs[("pay", "payments-adjudon")] = Sync(source=lambda: {"K": "v"}, delay=0.02)


def _exercise(api: FakeKubeApi, kubeconfig: Path) -> None:
    """What the README example does: roll the consumer, rotate the Secret, check access."""
    consumer = KubernetesConsumer.model_validate(
        {
            "type": "kubernetes",
            "namespace": "pay",
            "name": "api",
            "external_secret": "payments-adjudon",
            "kubeconfig": str(kubeconfig),
            "timeout": "20s",
        }
    )
    event = RollEvent("payments", "a1", "rotation", "k1", "adj_live_0000", "000000000000")
    make_consumer(consumer, key="payments", base_dir=REPO).roll(event, stop=threading.Event())
    target = KubernetesTarget.model_validate(
        {
            "type": "kubernetes",
            "namespace": "pay",
            "secret": "adjudon-key",
            "field": "ADJUDON_API_KEY",
            "kubeconfig": str(kubeconfig),
        }
    )
    store = open_store(target, base_dir=REPO)
    store.check_access()
    value = Secret(f"adj_live_{uuid.uuid4().hex}")
    stamp = Stamp("k1", value.fingerprint, "a1")
    store.stage(value, stamp, expected=store.read().revision)
    store.promote("a1", datetime.now(UTC))
    current = store.read().current
    assert current is not None and current.value == value


def test_the_role_grants_what_the_code_uses(cluster: FakeKubeApi, tmp_path: Path) -> None:
    """With the Role's rules and nothing else, the consumer and the store do all they do."""
    _scene(cluster)
    cluster.add_token("rotator", "system:serviceaccount:rotator:rotator", _rules(_docs()["Role"]))
    _exercise(cluster, cluster.kubeconfig(tmp_path / "k", "rotator"))
    assert len(cluster.restarts[("Deployment", "pay", "api")]) == 1
    assert not {r.code for r in cluster.requests} & {401, 403}


def test_every_verb_of_the_role_is_needed(cluster: FakeKubeApi, tmp_path: Path) -> None:
    """Leaving out any one verb makes the example fail with access denied."""
    role = _docs()["Role"]
    _scene(cluster)
    for i, rule in enumerate(role["rules"]):
        for verb in rule["verbs"]:
            token = f"without-{i}-{verb}"
            cluster.add_token(token, "system:serviceaccount:rotator:rotator", _rules(role, (i, verb)))
            for name in ("adjudon-key", "adjudon-key-rotator-pending"):
                cluster.delete("Secret", "pay", name)
            with pytest.raises((ConsumerError, StoreAccessDenied), match="403 Forbidden"):
                _exercise(cluster, cluster.kubeconfig(tmp_path / token, token))


# --------------------------------------------------------------------------- offline checkers


def test_role_passes_kubernetes_validate(tools: Path, tmp_path: Path) -> None:  # noqa: F811
    control = tmp_path / "control.yaml"
    control.write_text(ROLE.read_text().replace('resourceNames: ["api"]', 'resourceNames: "api"', 1))
    for version in ([], ["--kubernetes-version", "1.30.0"]):
        proc = offline(
            tools, tmp_path, "kubernetes-validate", "--strict", *version, str(ROLE), str(control), cwd=REPO
        )
        out = proc.stdout + proc.stderr
        assert len(re.findall(rf"INFO {re.escape(str(ROLE))} passed", out)) == 2, out
        errors = [line for line in out.splitlines() if line.startswith(("ERROR", "WARN"))]
        assert errors and all(str(control) in line for line in errors), out


def test_role_passes_checkov(tools: Path, tmp_path: Path) -> None:  # noqa: F811
    """checkov fails nothing in the Role, and fails a copy that grants every verb on the Deployment."""
    control = tmp_path / "control.yaml"
    control.write_text(ROLE.read_text().replace('verbs: ["get", "patch"]', 'verbs: ["*"]', 1))
    for path, clean in ((ROLE, True), (control, False)):
        proc = offline(
            tools, tmp_path, "checkov", "-f", str(path), "--framework", "kubernetes",
            "--skip-download", "--output", "json", cwd=tmp_path,
        )  # fmt: skip
        report = json.loads(proc.stdout)
        failed = [c["check_id"] for c in report["results"]["failed_checks"]]
        assert (failed == []) is clean, failed
        assert report["summary"]["parsing_errors"] == 0


def test_kustomize_keeps_the_workloads_namespace() -> None:
    """`kubectl kustomize deploy/k8s/workloads` renders the Role in pay, not in rotator."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s/workloads")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert sorted((d["kind"], d["metadata"]["namespace"]) for d in docs) == [
        ("Role", "pay"),
        ("RoleBinding", "pay"),
    ]
