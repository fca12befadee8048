"""`rotator emergency`: revoke the leaked key first, mint, roll out, audit the chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rotator.engine.runner import Engine
from rotator.sandbox.demo import Consumer
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import Settings, load_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import (
    ADMIN_ENV,
    adjutor_app_yaml,
    agent_keys,
    journal,
    read_dotenv_key,
    read_json_key,
    write_rotation_file,
    write_spec,
)

FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}


@pytest.fixture
def setup(tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    admin = emulator.emulator.bootstrap_workspace_key()
    monkeypatch.setenv(ADMIN_ENV, admin)
    path = write_spec(tmp_path, emulator, drain="10m", propagation="1m", timeout="1h")
    Engine(load_rotation_file(path), base_dir=tmp_path, settings=Settings(retry_initial=0.01)).apply(
        ["payments"]
    )
    return {ADMIN_ENV: admin, **FAST_ENV}


def _traffic(url: str, env_file: Path, seconds: float, interval: float = 0.05) -> Consumer:
    consumer = Consumer(env_file, url, interval=interval)
    consumer.start()
    time.sleep(seconds)
    return consumer


def test_revoke_first_then_mint_and_audit(
    tmp_path: Path, emulator: EmulatorServer, setup: dict[str, str]
) -> None:
    """The leaked key is dead, every target holds a working key, and the report counts its traces."""
    leaked = read_dotenv_key(tmp_path / "secrets/a.env")
    assert leaked is not None
    consumer = _traffic(emulator.url, tmp_path / "secrets/a.env", 1.2)
    consumer.stop()
    proc = run_cli(
        "emergency", "payments", "--reason", "pasted in a chat", "--output", "json", cwd=tmp_path, env=setup
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["order"] == "revoke-first"
    assert not emulator.emulator.key_accepted(leaked)
    new = read_dotenv_key(tmp_path / "secrets/a.env")
    assert new is not None and new != leaked and read_json_key(tmp_path / "secrets/b.json") == new
    assert emulator.emulator.key_accepted(new)
    assert report["leaked_key_traces"] >= consumer.requests - 1 > 5
    assert report["chain_valid"] is True
    assert 0 < report["time_to_revoke_s"] < report["total_s"]
    events = [e["event"] for e in journal(tmp_path)]
    assert events.index("emergency-revoked") < events.index("minted", events.index("emergency-started"))
    saved = json.loads(Path(report["report_path"]).read_text())
    assert saved["leaked_key_id"] == report["leaked_key_id"]
    assert leaked not in Path(report["report_path"]).read_text() and new not in proc.stdout


def test_keep_serving_limits_consumer_failures(
    tmp_path: Path, emulator: EmulatorServer, setup: dict[str, str]
) -> None:
    """With --keep-serving the new key is out before the revoke: a live consumer sees little or no failure."""
    consumer = _traffic(emulator.url, tmp_path / "secrets/a.env", 0.5)
    proc = run_cli("emergency", "payments", "--reason", "x", "--keep-serving", cwd=tmp_path, env=setup)
    time.sleep(1.5)
    consumer.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(mint-then-revoke)" in proc.stdout
    assert consumer.auth_failures * consumer.interval <= 1.5  # at most one re-read period
    assert len(agent_keys(emulator, active=True)) == 1
    events = [e["event"] for e in journal(tmp_path)]
    start = events.index("emergency-started")
    assert events.index("promoted", start) < events.index("emergency-revoked")


def test_without_keep_serving_revoke_comes_first(
    tmp_path: Path, emulator: EmulatorServer, setup: dict[str, str]
) -> None:
    """Without --keep-serving, a live consumer is cut off until it re-reads: the revoke came first."""
    consumer = _traffic(emulator.url, tmp_path / "secrets/a.env", 0.5)
    proc = run_cli("emergency", "payments", "--reason", "x", cwd=tmp_path, env=setup)
    time.sleep(1.5)
    consumer.stop()
    assert proc.returncode == 0, proc.stderr
    assert consumer.auth_failures >= 1
    assert len(consumer.prefixes_seen) == 2


def test_emergency_on_reset_vendor(tmp_path: Path, emulator: EmulatorServer) -> None:
    """On a reset vendor the emergency is an immediate reset; the leaked key answers 401."""
    raw = emulator.emulator.create_app("app_5")
    (tmp_path / "app.key").write_text(raw + "\n")
    text = adjutor_app_yaml(emulator.url, "app_5", ["{type: file, path: app.key}"], state_dir=None)
    write_rotation_file(tmp_path, text, secrets=False)
    proc = run_cli("emergency", "app", "--reason", "leak", "--output", "json", cwd=tmp_path, env=FAST_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["order"] == "reset"
    assert 0 < report["time_to_revoke_s"] < report["total_s"]  # the reset's answer, not the store writes
    new = (tmp_path / "app.key").read_text().strip()
    assert not emulator.emulator.key_accepted(raw) and emulator.emulator.key_accepted(new)


def test_emergency_imports_no_unused_sdk(tmp_path: Path, setup: dict[str, str]) -> None:
    """A key with only file targets: the emergency path imports no cloud SDK and no scheduler."""
    code = (
        "import sys\n"
        "from rotator.cli import main\n"
        "try:\n"
        "    main(['emergency', 'payments', '--reason', 'x'])\n"
        "except SystemExit as e:\n"
        "    heavy = ('boto3', 'botocore', 'hvac', 'google', 'grpc', 'apscheduler', 'prometheus_client', 'apprise')\n"
        "    bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "    print('IMPORTED', bad, 'EXIT', e.code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **setup},
        check=False,
        timeout=60,
    )
    assert "IMPORTED [] EXIT 0" in out.stdout, out.stdout + out.stderr
