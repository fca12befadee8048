"""deploy/ checked offline: cfn-lint on the SAM template, kubernetes-validate on the manifests,
checkov on all three kinds of file, plus the facts that tie them to the code.

The checkers live in a virtual environment of their own (checkov pins an older boto3):
``ROTATOR_TOOLS_BIN`` names its ``bin`` (``make test`` sets it), else ``.venv-tools/bin``.
Missing checkers fail these tests: a check that cannot run has not passed.

Every checker runs behind a guard that refuses and records any DNS lookup or socket
connection, so "offline" is checked, not assumed. Each run also gets a known-bad control
file, so a checker that silently checks nothing fails the test too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from providers import aws as aws_provider
from rotator.engine import lease_dynamodb
from rotator.spec import DynamoDBLeaseSpec, parse_rotation_file

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
MANIFESTS = sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
SELF_TEST = "guard-self-test.invalid"

# Runs a console script of the tools venv with the network refused: every lookup and
# connection attempt is appended to a file (forked workers inherit the guard).
GUARD = f"""
import runpy, socket, sys
log, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
def record(what):
    with open(log, "a") as out:
        out.write(what + "\\n")
def lookup(host, *a, **k):
    record(f"resolve {{host}}")
    raise socket.gaierror(socket.EAI_NONAME, "network refused by the test")
real_connect = socket.socket.connect
def connect(self, address):
    if self.family == socket.AF_UNIX:
        return real_connect(self, address)
    record(f"connect {{address}}")
    raise OSError("network refused by the test")
socket.getaddrinfo, socket.socket.connect = lookup, connect
socket.socket.connect_ex = lambda self, address: connect(self, address)
try:
    socket.getaddrinfo("{SELF_TEST}", 443)
except socket.gaierror:
    pass
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def tools() -> Path:
    """The checkers' bin directory; fails (never skips) when a checker is missing."""
    found = Path(os.environ.get("ROTATOR_TOOLS_BIN") or REPO / ".venv-tools" / "bin")
    missing = [
        n for n in ("python", "checkov", "cfn-lint", "kubernetes-validate") if not (found / n).exists()
    ]
    if missing:
        pytest.fail(
            f"deploy checkers missing in {found}: {', '.join(missing)}; "
            "`make test` installs them (.venv-tools), or set ROTATOR_TOOLS_BIN"
        )
    return found


def offline(tools: Path, tmp: Path, tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``tool`` with the network refused; fail if it tried to reach anything."""
    log = tmp / f"{tool}.network.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    proc = subprocess.run(
        [str(tools / "python"), "-c", GUARD, str(log), str(tools / tool), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    attempts = log.read_text().splitlines() if log.exists() else []
    assert attempts[:1] == [f"resolve {SELF_TEST}"], f"the network guard did not run: {proc.stderr[-2000:]}"
    assert attempts[1:] == [], f"{tool} tried to reach the network: {attempts[1:]}"
    return proc


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: short-form intrinsics (!Ref, !Sub...) become ``{"Fn": value}``."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def _template() -> dict[str, Any]:
    data: dict[str, Any] = yaml.load((DEPLOY / "lambda/template.yaml").read_text(), Loader=_CfnLoader)  # noqa: S506
    return data


# --------------------------------------------------------------------------- the three checkers


def test_sam_template_passes_cfn_lint(tools: Path, tmp_path: Path) -> None:
    """cfn-lint (SAM transform included) finds nothing in the template, and flags a broken copy."""
    template = DEPLOY / "lambda/template.yaml"
    control = tmp_path / "control.yaml"
    control.write_text(template.read_text().replace("BillingMode: PAY_PER_REQUEST", "BillingMode: WRONG"))
    proc = offline(
        tools, tmp_path, "cfn-lint", "--format", "parseable", str(template), str(control), cwd=REPO
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode != 0 and any(":E3030:" in line and "WRONG" in line for line in lines), proc.stdout
    assert [line for line in lines if not line.startswith(str(control))] == [], proc.stdout


def test_manifests_pass_kubernetes_validate(tools: Path, tmp_path: Path) -> None:
    """Every manifest validates strictly against the schemas of Kubernetes 1.30 and the newest known."""
    control = tmp_path / "control.yaml"
    cron = (DEPLOY / "k8s/cronjob.yaml").read_text()
    control.write_text(cron.replace("runAsNonRoot: true", "runAsNonRoot: sure", 1))
    files = [str(DEPLOY / "k8s" / name) for name in MANIFESTS]
    for version in ([], ["--kubernetes-version", "1.30.0"]):
        proc = offline(
            tools, tmp_path, "kubernetes-validate", "--strict", *version, *files, str(control), cwd=REPO
        )
        out = proc.stdout + proc.stderr
        for f in files:
            assert re.search(rf"INFO {re.escape(f)} passed", out), out
        errors = [line for line in out.splitlines() if line.startswith(("ERROR", "WARN"))]
        assert errors and all(str(control) in line for line in errors), out
        assert proc.returncode != 0


def test_checkov_passes_offline_with_every_skip_explained(tools: Path, tmp_path: Path) -> None:
    """checkov fails nothing in deploy/ (each skip carries its reason) and catches the bad controls."""
    tree = tmp_path / "deploy"
    shutil.copytree(DEPLOY, tree, ignore=shutil.ignore_patterns("package", "__pycache__"))
    bad = tree / "control"
    bad.mkdir()
    (bad / "Dockerfile").write_text('FROM python:latest\nRUN pip install rotator\nCMD ["rotator"]\n')
    (bad / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n"
        "    - {name: c, image: 'rotator:latest', securityContext: {privileged: true}}\n"
    )
    (bad / "template.yaml").write_text(
        "AWSTemplateFormatVersion: '2010-09-09'\nResources:\n  T:\n    Type: AWS::DynamoDB::Table\n"
        "    Properties:\n      BillingMode: PAY_PER_REQUEST\n"
        "      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]\n"
        "      KeySchema: [{AttributeName: pk, KeyType: HASH}]\n"
    )
    proc = offline(
        tools, tmp_path, "checkov", "-d", str(tree),
        "--framework", "cloudformation", "kubernetes", "dockerfile",
        "--skip-download", "--output", "json", cwd=tmp_path,
    )  # fmt: skip
    reports = json.loads(proc.stdout)
    by_kind = {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}
    assert set(by_kind) == {"cloudformation", "kubernetes", "dockerfile"}, proc.stderr[-2000:]
    for kind, report in by_kind.items():
        results = report["results"]
        failed = [(c["check_id"], c["file_path"]) for c in results["failed_checks"]]
        assert failed and all(path.startswith("/control/") for _, path in failed), (kind, failed)
        assert any(not c["file_path"].startswith("/control/") for c in results["passed_checks"]), kind
        assert report["summary"]["parsing_errors"] == 0, kind
        for skipped in results["skipped_checks"]:
            reason = skipped["check_result"].get("suppress_comment", "")
            assert len(reason) > 20 and reason != "No comment provided", (kind, skipped["check_id"])


# --------------------------------------------------------------------------- what ties deploy/ to the code


def test_kustomization_lists_every_manifest_and_the_image() -> None:
    """kustomization.yaml names each manifest once and rewrites the image the workloads use."""
    kustomization = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == MANIFESTS
    images = {i["name"] for i in kustomization["images"]}
    for name in ("cronjob.yaml", "deployment.yaml"):
        doc = yaml.safe_load((DEPLOY / "k8s" / name).read_text())
        pod = (
            doc["spec"]["jobTemplate"]["spec"]["template"]
            if doc["kind"] == "CronJob"
            else doc["spec"]["template"]
        )
        (container,) = pod["spec"]["containers"]
        assert container["image"].split(":")[0] in images
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/rotator", "/var/lib/rotator", "/tmp"} <= mounts  # the only writable places
    deployment = yaml.safe_load((DEPLOY / "k8s/deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 1 and container["args"][0] == "serve"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == 9464


def test_configmap_holds_a_valid_rotation_file_sharing_the_lambda_lease_table() -> None:
    """The ConfigMap's rotation file parses, and its DynamoDB lease is the table the SAM template makes."""
    configmap = yaml.safe_load((DEPLOY / "k8s/configmap.yaml").read_text())
    spec = parse_rotation_file(configmap["data"]["rotations.yaml"], "configmap.yaml")
    assert isinstance(spec.lease, DynamoDBLeaseSpec)
    assert spec.lease.table == _template()["Parameters"]["LeaseTableName"]["Default"]


def test_sam_template_matches_the_code() -> None:
    """Handler, runtime, lease table shape and the policy's actions match what the code calls."""
    template = _template()
    resources = template["Resources"]
    function = resources["RotatorFunction"]["Properties"]
    assert function["Handler"] == "rotator.lambda_handler.handler" and function["Runtime"] == "python3.11"
    assert function["Events"]["Pass"]["Type"] == "Schedule"
    permission = resources["SecretsManagerInvoke"]["Properties"]
    assert permission["Principal"] == "secretsmanager.amazonaws.com"
    table = resources["LeaseTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True

    statements = {s["Sid"]: s for s in function["Policies"][0]["Statement"] if "Sid" in s}
    granted = set(statements["RotateTheNamedSecrets"]["Action"])
    assert statements["RotateTheNamedSecrets"]["Resource"] == {"Ref": "SecretArns"}
    called = _calls(Path(aws_provider.__file__), "self._client")
    assert {f"secretsmanager:{_camel(c)}" for c in called} == granted
    leases = set(statements["HoldKeyLeases"]["Action"])
    assert leases == {f"dynamodb:{_camel(c)}" for c in _calls(Path(lease_dynamodb.__file__), "self.client()")}
    assert statements["HoldKeyLeases"]["Resource"] == {"GetAtt": "LeaseTable.Arn"}


def _calls(source: Path, receiver: str) -> set[str]:
    return set(re.findall(re.escape(receiver) + r"\.([a-z_]+)\b", source.read_text()))


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def test_dockerfile_shape() -> None:
    """Two python:3.11-slim stages, '.[all]' installed, a numeric non-root user, rotator apply by default."""
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith(("#", " "))
    ]
    froms = [rest for op, rest in instructions if op == "FROM"]
    assert froms == ["python:3.11-slim AS build", "python:3.11-slim"]
    assert "pip install '.[all]'" in text
    users = [rest for op, rest in instructions if op == "USER"]
    assert users == ["10001:10001"]
    assert ("ENTRYPOINT", '["rotator"]') in [tuple(i) for i in instructions]
    assert ("CMD", '["apply"]') in [tuple(i) for i in instructions]
    sources = [rest.split()[:-1] for op, rest in instructions if op == "COPY" and "--from" not in rest]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for src in (s for group in sources for s in group):
        assert (REPO / src).exists(), src
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is not let through the .dockerignore"
