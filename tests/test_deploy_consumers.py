"""The AWS permissions of the ecs consumer and the lambda_env target, in deploy/: the SAM
template's opt-in statements and the standalone policy example (deploy/iam/), tied to the calls
the code makes and checked offline by cfn-lint and checkov (the guard of tests/test_deploy.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from providers import lambda_env
from providers.consumers import ecs
from tests.test_deploy import DEPLOY, _calls, _camel, _template, offline, tools

__all__ = ["tools"]  # the checkers' fixture, shared with tests/test_deploy.py

POLICY = DEPLOY / "iam/consumers-policy.json"
NEEDED = {
    "RollEcsServices": {f"ecs:{_camel(c)}" for c in _calls(Path(ecs.__file__), "self._client")},
    "WriteLambdaEnvironments": {
        f"lambda:{_camel(c)}" for c in _calls(Path(lambda_env.__file__), "self._client")
    },
}


def test_the_code_calls_what_the_policies_name() -> None:
    """The calls found in the code are the ones the README and the policies are about."""
    assert {
        "RollEcsServices": {"ecs:UpdateService", "ecs:DescribeServices"},
        "WriteLambdaEnvironments": {"lambda:GetFunctionConfiguration", "lambda:UpdateFunctionConfiguration"},
    } == NEEDED


def test_sam_template_grants_them_only_for_the_named_resources() -> None:
    """Each statement exists only when its parameter names resources (default: none), on those only."""
    template = _template()
    params, conditions = template["Parameters"], template["Conditions"]
    policy = template["Resources"]["RotatorFunction"]["Properties"]["Policies"][0]
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for statement in policy["Statement"]:
        if "If" in statement:
            condition, granted, otherwise = statement["If"]
            assert otherwise == {"Ref": "AWS::NoValue"}
            found[granted["Sid"]] = (condition, granted)
    for sid, parameter, condition in (
        ("RollEcsServices", "EcsServiceArns", "HasEcsServices"),
        ("WriteLambdaEnvironments", "LambdaEnvFunctionArns", "HasLambdaEnvFunctions"),
    ):
        assert params[parameter]["Type"] == "CommaDelimitedList" and params[parameter]["Default"] == ""
        assert conditions[condition] == {"Not": [{"Equals": [{"Join": ["", {"Ref": parameter}]}, ""]}]}
        used, statement = found[sid]
        assert used == condition and statement["Effect"] == "Allow"
        assert set(statement["Action"]) == NEEDED[sid]
        assert statement["Resource"] == {"Ref": parameter}


def test_policy_example_names_exactly_what_the_code_calls_on_named_resources() -> None:
    """deploy/iam/consumers-policy.json: one statement per part, its actions, no wildcard anywhere."""
    policy = json.loads(POLICY.read_text())
    assert policy["Version"] == "2012-10-17"
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert set(statements) == set(NEEDED)
    for sid, statement in statements.items():
        assert statement["Effect"] == "Allow" and set(statement["Action"]) == NEEDED[sid]
        assert statement["Resource"] and all("*" not in r for r in statement["Resource"])
    assert all(
        r.startswith("arn:aws:ecs:") and ":service/" in r for r in statements["RollEcsServices"]["Resource"]
    )
    assert all(
        r.startswith("arn:aws:lambda:") and ":function:" in r
        for r in statements["WriteLambdaEnvironments"]["Resource"]
    )


def _as_template(policy: dict[str, Any]) -> str:
    resource = {"Type": "AWS::IAM::ManagedPolicy", "Properties": {"PolicyDocument": policy}}
    return yaml.safe_dump(
        {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {"ConsumersPolicy": resource}}
    )


def test_policy_example_passes_cfn_lint_and_checkov_offline(tools: Path, tmp_path: Path) -> None:
    """Wrapped in a managed policy, the example passes cfn-lint (actions are real) and checkov; a
    copy with a misspelt action and a wildcard resource fails both."""
    policy = json.loads(POLICY.read_text())
    good = tmp_path / "policy" / "template.yaml"
    good.parent.mkdir()
    good.write_text(_as_template(policy))
    bad_policy = json.loads(json.dumps(policy).replace("ecs:UpdateService", "ecs:UpdateServices"))
    for statement in bad_policy["Statement"]:
        statement["Resource"] = "*"
    bad = tmp_path / "control" / "template.yaml"
    bad.parent.mkdir()
    bad.write_text(_as_template(bad_policy))

    lint = offline(tools, tmp_path, "cfn-lint", "--format", "parseable", str(good), str(bad), cwd=tmp_path)
    lines = [line for line in lint.stdout.splitlines() if line.strip()]
    assert any(":W3037:" in line and "updateservices" in line for line in lines), lint.stdout
    assert [line for line in lines if not line.startswith(str(bad))] == [], lint.stdout

    scan = offline(
        tools, tmp_path, "checkov", "-d", str(tmp_path), "--framework", "cloudformation",
        "--skip-download", "--output", "json", cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(scan.stdout)
    results = report["results"]
    failed = {(c["check_id"], c["file_path"]) for c in results["failed_checks"]}
    assert ("CKV_AWS_111", "/control/template.yaml") in failed, failed
    assert all(path.startswith("/control/") for _, path in failed), failed
    assert any(c["file_path"] == "/policy/template.yaml" for c in results["passed_checks"])
    assert report["summary"]["parsing_errors"] == 0
