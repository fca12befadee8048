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
from rotator.secret import fingerprint
from tests.conftest import run_cli
from tests.doubles import DIE_IN_ROLL, read_record
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


# --------------------------------------------------------------------------- consumers

ROLL_CHECKPOINTS = [
    "before-publish",
    "after-publish",
    "before-roll",
    "after-roll",
    "before-roll#2",
    "after-roll#2",
    "in-roll",  # killed inside the first roll, after it took effect, before it was journalled
]
ROLL_SPEC = """\
version: 1
state_dir: state
defaults:
  verify: {{drain: 1s, propagation: 1s, timeout: 60s}}
issuers:
  emu: {{type: adjudon, base_url: "{url}", credential: {{env: {admin}}}}}
keys:
  payments:
    issuer: emu
    kind: agent
    agent_id: payments
    targets:
      - {{type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}}
      - {{type: github, repository: acme/pay, secret_name: ADJUDON_API_KEY}}
    consumers:
      - {{type: command, argv: [restart, api]}}
      - {{type: command, argv: [restart, worker]}}
"""


def _child(tmp: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """One `--wait` pass in a fresh process, with consumers and a write-only target that record
    to a file (tests/doubles.py)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.doubles", str(tmp), "payments", *args],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("checkpoint", ROLL_CHECKPOINTS)
def test_sigkill_around_publish_and_rolls_converges(
    tmp_path: Path, emulator: EmulatorServer, checkpoint: str
) -> None:
    """Killed around a write to a write-only target or a consumer's roll, the next pass
    finishes: the target holds the new key, each consumer is rolled at least once and at most
    twice for the attempt (twice only when killed inside its roll, before its journal entry),
    exactly once when killed after it was journalled; the journal shows one roll each; the
    old key is revoked after the last roll plus propagation and drain."""
    env = {ADMIN_ENV: emulator.emulator.bootstrap_workspace_key(), **FAST_ENV}
    (tmp_path / "secrets").mkdir()
    (tmp_path / "rotations.yaml").write_text(ROLL_SPEC.format(url=emulator.url, admin=ADMIN_ENV))
    first = _child(tmp_path, env)
    assert first.returncode == 0, first.stdout + first.stderr
    old = read_dotenv_key(tmp_path / "secrets/a.env")

    crash = (
        {DIE_IN_ROLL: "command:restart api"} if checkpoint == "in-roll" else {"ROTATOR_CRASH_AT": checkpoint}
    )
    crashed = _child(tmp_path, {**env, **crash}, "--force")
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    fresh = _child(tmp_path, env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr

    new = read_dotenv_key(tmp_path / "secrets/a.env")
    assert new is not None and new != old and emulator.emulator.key_accepted(new)
    assert not emulator.emulator.key_accepted(old or "")
    assert len(agent_keys(emulator, active=True)) == 1
    events = journal(tmp_path)
    attempt = [e["attempt"] for e in events if e["event"] == "minted"][-1]
    record = [r for r in read_record(tmp_path) if r.get("attempt") == attempt]
    fp = fingerprint(new)
    assert [e["details"]["fingerprint"] for e in events if e["event"] == "minted"][-1] == fp
    assert [(r["target"], r["fingerprint"]) for r in record if "target" in r] == [
        ("github:acme/pay#ADJUDON_API_KEY", fp)
    ]
    rolls = {
        name: sum(r.get("consumer") == name for r in record)
        for name in ("command:restart api", "command:restart worker")
    }
    assert all(1 <= n <= 2 for n in rolls.values()), rolls
    # exactly once, but for the consumer killed inside its roll (rolled, not yet journalled)
    twice = "command:restart api" if checkpoint == "in-roll" else None
    assert rolls == {name: 2 if name == twice else 1 for name in rolls}, rolls
    journalled = [
        e["details"]["consumer"] for e in events if e["event"] == "rolled" and e["attempt"] == attempt
    ]
    assert sorted(journalled) == ["command:restart api", "command:restart worker"]
    last_roll = max(
        parse_time(e["details"]["rolled_at"])
        for e in events
        if e["event"] == "rolled" and e["attempt"] == attempt
    )
    revoked = max(parse_time(e["ts"]) for e in events if e["event"] == "revoked")
    assert (revoked - last_roll).total_seconds() >= 2.0  # propagation + drain, from the last roll
