"""deploy/k8s/indexed: the shards as an Indexed Job, checked offline like the rest of deploy/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy import DEPLOY, REPO, offline, tools  # noqa: F401 - tools is a fixture

INDEXED = DEPLOY / "k8s/indexed/cronjob-indexed.yaml"


def _doc(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_indexed_job_shape() -> None:
    """One pod per shard, all at once, each told the shard count; the pod as safe as the CronJob's."""
    doc = _doc(INDEXED)
    assert doc["kind"] == "CronJob"
    job = doc["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] >= 2
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JOB_COMPLETIONS"] == str(job["completions"])  # Kubernetes does not set it
    assert "JOB_COMPLETION_INDEX" not in env and "ROTATOR_SHARD" not in env  # the index is the pod's
    assert container["args"][0] == "apply" and "--shard" not in container["args"]
    assert [r["onExitCodes"]["values"] for r in job["podFailurePolicy"]["rules"]] == [[2, 3]]
    base = _doc(DEPLOY / "k8s/cronjob.yaml")
    base_pod = base["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == base_pod["securityContext"]
    assert container["securityContext"] == base_pod["containers"][0]["securityContext"]
    assert container["volumeMounts"] == base_pod["containers"][0]["volumeMounts"]
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    assert doc["metadata"]["name"] != base["metadata"]["name"]


def test_the_component_replaces_the_cronjob_and_deployment_and_is_off_by_default() -> None:
    kustomization = _doc(DEPLOY / "k8s/kustomization.yaml")
    assert "components" not in kustomization  # the plain CronJob stays the default
    assert "# components: [indexed]" in (DEPLOY / "k8s/kustomization.yaml").read_text()
    component = _doc(DEPLOY / "k8s/indexed/kustomization.yaml")
    assert component["kind"] == "Component" and component["resources"] == [INDEXED.name]
    deleted = [yaml.safe_load(p["patch"]) for p in component["patches"]]
    existing = {
        (d["kind"], d["metadata"]["name"])
        for d in map(_doc, (DEPLOY / "k8s").glob("*.yaml"))
        if "metadata" in d
    }
    assert all(d["$patch"] == "delete" for d in deleted)
    assert (
        {(d["kind"], d["metadata"]["name"]) for d in deleted}
        == {
            ("CronJob", "rotator"),
            ("Deployment", "rotator"),
        }
        <= existing
    )


def test_kustomize_renders_the_shards_in_place_of_the_cronjob(tmp_path: Path) -> None:
    """With the component on, `kubectl kustomize` (offline) yields the Indexed Job, not the others."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    tree = tmp_path / "k8s"
    shutil.copytree(DEPLOY / "k8s", tree)
    kustomization = tree / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace("# components: [indexed]", "components: [indexed]")
    )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(tree)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("CronJob", "rotator-shards") in kinds
    assert ("CronJob", "rotator") not in kinds and ("Deployment", "rotator") not in kinds
    assert {"Namespace", "ServiceAccount", "ConfigMap", "NetworkPolicy"} <= {k for k, _ in kinds}
    (shards,) = [d for d in docs if d["metadata"]["name"] == "rotator-shards"]
    image = shards["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("ghcr.io/example/rotator:")  # the base's image rewrite applies


def test_indexed_job_passes_kubernetes_validate(tools: Path, tmp_path: Path) -> None:  # noqa: F811
    control = tmp_path / "control.yaml"
    control.write_text(INDEXED.read_text().replace("completions: 4 ", "completions: four "))
    for version in ([], ["--kubernetes-version", "1.30.0"]):
        proc = offline(
            tools, tmp_path, "kubernetes-validate", "--strict", *version, str(INDEXED), str(control), cwd=REPO
        )
        out = proc.stdout + proc.stderr
        assert re.search(rf"INFO {re.escape(str(INDEXED))} passed", out), out
        errors = [line for line in out.splitlines() if line.startswith(("ERROR", "WARN"))]
        assert errors and all(str(control) in line for line in errors), out


def test_indexed_job_passes_checkov(tools: Path, tmp_path: Path) -> None:  # noqa: F811
    """checkov fails nothing in the Indexed Job; each skip carries its reason."""
    proc = offline(
        tools, tmp_path, "checkov", "-f", str(INDEXED), "--framework", "kubernetes",
        "--skip-download", "--output", "json", cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    results = report["results"]
    assert results["failed_checks"] == [], [c["check_id"] for c in results["failed_checks"]]
    assert len(results["passed_checks"]) > 20 and report["summary"]["parsing_errors"] == 0
    for skipped in results["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > 20 and reason != "No comment provided", skipped["check_id"]
