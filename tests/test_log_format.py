"""`--log-format json` / ``ROTATOR_LOG_FORMAT=json``: one JSON object per stderr line, with the
same redaction as text logs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from rotator.logs import JSON_FIELDS, JsonFormatter
from rotator.sandbox.emulator import EmulatorServer
from tests.conftest import run_cli
from tests.e2e_helpers import ADMIN_ENV, read_dotenv_key, write_spec

FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}
FIELDS = {"time", "level", "logger", *JSON_FIELDS, "message"}


def _json_lines(stderr: str) -> list[dict[str, object]]:
    lines = stderr.splitlines()
    assert lines, "expected log lines on stderr"
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    for obj in parsed:
        assert isinstance(obj, dict) and set(obj) >= FIELDS, obj
    return parsed


def test_apply_emits_only_json_lines_without_raw_keys(tmp_path: Path, emulator: EmulatorServer) -> None:
    """`rotator --log-format json apply` (debug logs on): every stderr line parses, has the
    fields, and no raw key is in any of them."""
    admin = emulator.emulator.bootstrap_workspace_key()
    env = {ADMIN_ENV: admin, **FAST_ENV, "ROTATOR_LOG_LEVEL": "DEBUG"}
    write_spec(tmp_path, emulator, drain="0s", propagation="0s")
    first = run_cli("--log-format", "json", "--debug", "apply", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    second = run_cli("rotate", "payments", "--wait", cwd=tmp_path, env={**env, "ROTATOR_LOG_FORMAT": "json"})
    assert second.returncode == 0, second.stderr
    new = read_dotenv_key(tmp_path / "secrets/a.env")
    records = _json_lines(first.stderr) + _json_lines(second.stderr)
    assert any(str(r["logger"]).startswith("rotator.") for r in records)
    assert any(r["level"] == "DEBUG" for r in records)
    for value in (admin, old, new):
        assert value and value not in first.stderr + second.stderr


def test_failed_key_is_named_in_its_json_line(tmp_path: Path, emulator: EmulatorServer) -> None:
    """A failed key's warning carries the key and phase as fields, not only in the message."""
    write_spec(tmp_path, emulator)
    proc = run_cli("--log-format", "json", "apply", cwd=tmp_path, env={**FAST_ENV, ADMIN_ENV: ""})
    assert proc.returncode == 1
    warnings = [r for r in _json_lines(proc.stderr) if r["level"] == "WARNING"]
    assert warnings and warnings[0]["key"] == "payments" and warnings[0]["phase"] == "failed"


def test_json_formatter_redacts_every_field() -> None:
    """A key-shaped string in the message, an extra field or a traceback is masked."""
    raw = "adj_agent_" + "ab" * 24
    record = logging.LogRecord("rotator.x", logging.ERROR, __file__, 1, "leak %s", (raw,), None)
    record.key = raw
    error = ValueError(raw)
    record.exc_info = (ValueError, error, None)
    line = JsonFormatter().format(record)
    obj = json.loads(line)
    assert raw not in line and obj["message"].startswith("leak adj_agent_ab")
    assert obj["attempt"] is None and "ValueError" in obj["exception"]


def test_lambda_and_deploy_manifests_default_to_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambda handler logs JSON unless told otherwise; the k8s workloads and the SAM
    function set ``ROTATOR_LOG_FORMAT=json``."""
    from rotator.lambda_handler import settings

    monkeypatch.delenv("ROTATOR_LOG_FORMAT", raising=False)
    assert settings().log_format == "json"
    monkeypatch.setenv("ROTATOR_LOG_FORMAT", "text")
    assert settings().log_format == "text"

    deploy = Path(__file__).parent.parent / "deploy"
    for name in ("cronjob.yaml", "deployment.yaml"):
        doc = yaml.safe_load((deploy / "k8s" / name).read_text())
        pod = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        containers = pod["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for c in containers for e in c.get("env", [])}
        assert env.get("ROTATOR_LOG_FORMAT") == "json", name
    template = (deploy / "lambda" / "template.yaml").read_text()
    assert re.search(r"^ {10}ROTATOR_LOG_FORMAT: json$", template, re.M)
