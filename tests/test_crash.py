"""Crash safety and one writer per key, with real ``rotator`` processes.

A subprocess is SIGKILLed at each step boundary (``ROTATOR_CRASH_AT``); a fresh pass must
converge: no orphan key left active, every target holding a key the vendor accepts, and the
old key revoked only after the drain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rotator.abc import parse_time
from rotator.sandbox.emulator import EmulatorServer
from tests.conftest import run_cli
from tests.e2e_helpers import (
    ADMIN_ENV,
    VENDOR_CLOCK_SLACK_S,
    agent_keys,
    journal,
    read_dotenv_key,
    read_json_key,
    write_spec,
)

CHECKPOINTS = ["after-mint", "after-stage-first", "after-stage", "after-promote", "after-revoke"]
FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_sigkill_then_fresh_pass_converges(tmp_path: Path, emulator: EmulatorServer, checkpoint: str) -> None:
    """Killed at a step boundary, the next pass finishes safely and leaves no orphan."""
    admin = emulator.emulator.bootstrap_workspace_key()
    env = {ADMIN_ENV: admin, **FAST_ENV}
    write_spec(tmp_path, emulator, drain="1s", propagation="1s")
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    old = read_dotenv_key(tmp_path / "secrets/a.env")

    crashed = run_cli(
        "rotate", "payments", "--wait", cwd=tmp_path, env={**env, "ROTATOR_CRASH_AT": checkpoint}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr

    fresh = run_cli("apply", "--wait", cwd=tmp_path, env=env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr

    a, b = read_dotenv_key(tmp_path / "secrets/a.env"), read_json_key(tmp_path / "secrets/b.json")
    assert a is not None and a == b
    assert emulator.emulator.key_accepted(a)
    active = agent_keys(emulator, active=True)
    assert len(active) == 1, f"orphan or undrained key left active: {active}"
    assert active[0]["prefix"] == a[:13]
    events = journal(tmp_path)
    if checkpoint == "after-mint":
        assert a == old  # the forced rotation died with its process; the orphan is gone
        assert any(e["event"] == "orphan-revoked" for e in events)
    else:
        assert a != old and not emulator.emulator.key_accepted(old or "")
        promoted = max(parse_time(e["details"]["promoted_at"]) for e in events if e["event"] == "promoted")
        revoked = max(parse_time(e["ts"]) for e in events if e["event"] == "revoked")
        assert (revoked - promoted).total_seconds() >= 2.0  # propagation + drain


def test_two_processes_one_mint(tmp_path: Path, emulator: EmulatorServer) -> None:
    """Two ``rotator apply`` started together on a due key: exactly one mint."""
    admin = emulator.emulator.bootstrap_workspace_key()
    env = {**os.environ, ADMIN_ENV: admin, **FAST_ENV}
    write_spec(tmp_path, emulator, max_age="1s", drain="30s")
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    minted_before = len(agent_keys(emulator))
    emulator.emulator.faults.path_delays["POST /api/v1/api-keys"] = 0.5  # widen the race
    import time

    time.sleep(1.1 + VENDOR_CLOCK_SLACK_S)  # the key is now due, in the vendor's clock too
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rotator.cli", "apply"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(agent_keys(emulator)) == minted_before + 1
    assert sum(e["event"] == "minted" for e in journal(tmp_path)) == 2  # first run + this one
    stdout = "".join(o[0] for o in outs)
    assert "held by" in stdout or "draining" in stdout


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_canary_never_leaks(tmp_path: Path, emulator: EmulatorServer, log_format: str) -> None:
    """No raw key in anything printed or written under state_dir, even with --debug, in text
    and in JSON logs."""
    admin = emulator.emulator.bootstrap_workspace_key()
    env = {ADMIN_ENV: admin, **FAST_ENV, "ROTATOR_LOG_LEVEL": "DEBUG", "ROTATOR_LOG_FORMAT": log_format}
    write_spec(tmp_path, emulator, drain="0s", propagation="0s")
    outputs, stderrs = [], []
    for args in (
        ["--debug", "apply"],
        ["--debug", "rotate", "payments", "--wait"],
        ["--debug", "status"],
        ["--debug", "status", "--output", "json"],
        ["--debug", "status", "--detailed-exitcode"],
        ["--debug", "plan", "--output", "json"],
        ["--debug", "audit", "verify"],
        ["--debug", "report", "--output", "json"],
        ["--debug", "report", "--output", "html"],
    ):
        proc = run_cli(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
        stderrs.append(proc.stderr)
        if args[1] == "apply":
            first = read_dotenv_key(tmp_path / "secrets/a.env")
    second = read_dotenv_key(tmp_path / "secrets/a.env")
    assert first and second and first != second
    written = [p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert written, "state_dir should hold the journal"
    assert any("rotator.vendors" in o or "DEBUG" in o for o in outputs)
    if log_format == "json":  # stderr is log lines only, each one JSON
        assert all(json.loads(line) for o in stderrs for line in o.splitlines())
    for canary in (admin, first, second):
        for text in outputs + written:
            assert canary not in text
