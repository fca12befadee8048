"""Shards: ``--shard I/N`` (or an Indexed Job's environment) splits the keys between runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rotator.errors import ConfigError
from rotator.sandbox.emulator import EmulatorServer
from rotator.scheduler import Daemon
from rotator.shard import Shard, from_env, parse, shard_of
from rotator.spec import Settings
from tests.conftest import run_cli
from tests.e2e_helpers import ADMIN_ENV, journal, read_dotenv_key

NAMES = [f"svc-{i:02d}" for i in range(24)]
NO_SHARD_ENV = {"ROTATOR_SHARD": "", "JOB_COMPLETION_INDEX": "", "JOB_COMPLETIONS": ""}


def fleet_spec(tmp: Path, server: EmulatorServer, names: list[str]) -> Path:
    """One agent key per name, each with a dotenv and a JSON file target."""
    keys = "".join(
        f"""\
  {name}:
    issuer: emu
    kind: agent
    agent_id: {name}
    targets:
      - {{type: file, path: secrets/{name}.env, format: dotenv, field: ADJUDON_API_KEY}}
      - {{type: file, path: secrets/{name}.json, format: json, field: api_key}}
"""
        for name in names
    )
    text = f"""\
version: 1
state_dir: state
defaults:
  max_age: 30d
  verify: {{drain: 1s, propagation: 1s, timeout: 60s}}
issuers:
  emu:
    type: adjudon
    base_url: {server.url}
    credential: {{env: {ADMIN_ENV}}}
keys:
{keys}"""
    (tmp / "secrets").mkdir(exist_ok=True)
    path = tmp / "rotations.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the selection


def test_shard_of_is_the_sha256_prefix_mod_n() -> None:
    """The documented hash: the first 8 bytes of SHA-256 of the name, big-endian, mod N."""
    import hashlib

    for name in NAMES:
        expected = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % 7
        assert shard_of(name, 7) == expected
    assert {shard_of(n, 1) for n in NAMES} == {0}


def test_shards_partition_the_keys() -> None:
    """Every key is in exactly one of the N shards, whatever N, and each shard gets some."""
    for count in (1, 2, 4, 5):
        chosen = [Shard(i, count).select(NAMES) for i in range(count)]
        assert sorted(k for part in chosen for k in part) == sorted(NAMES)
        assert all(chosen), f"an empty shard of {count} over {len(NAMES)} keys"
    assert Shard(1, 4).select(reversed(NAMES)) == list(reversed(Shard(1, 4).select(NAMES)))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("4/4", "I must be below N"),
        ("1/0", "N must be at least 1"),
        ("-1/4", "is not I/N"),
        ("1", "is not I/N"),
        ("a/b", "is not I/N"),
        ("1/4/2", "is not I/N"),
    ],
)
def test_bad_shard_spec(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse(text)


def test_shard_from_environment() -> None:
    """ROTATOR_SHARD first, then an Indexed Job's index with JOB_COMPLETIONS; nothing: None."""
    assert from_env({}) is None
    assert from_env({"ROTATOR_SHARD": "2/3"}) == Shard(2, 3)
    assert from_env({"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "4"}) == Shard(1, 4)
    both = {"ROTATOR_SHARD": "0/2", "JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "4"}
    assert from_env(both) == Shard(0, 2)
    with pytest.raises(ConfigError, match="JOB_COMPLETIONS is not"):
        from_env({"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(ConfigError, match=r"JOB_COMPLETION_INDEX/JOB_COMPLETIONS: '4/4'"):
        from_env({"JOB_COMPLETION_INDEX": "4", "JOB_COMPLETIONS": "4"})


# --------------------------------------------------------------------------- the command line


def test_plan_runs_only_its_shard(tmp_path: Path, emulator: EmulatorServer) -> None:
    """plan --shard, ROTATOR_SHARD and an Indexed Job's env each plan the same shard's keys."""
    env = {**NO_SHARD_ENV, ADMIN_ENV: emulator.emulator.bootstrap_workspace_key()}
    fleet_spec(tmp_path, emulator, NAMES)
    mine = Shard(3, 4).select(NAMES)
    ways = [
        (["--shard", "3/4"], {}),
        ([], {"ROTATOR_SHARD": "3/4"}),
        ([], {"JOB_COMPLETION_INDEX": "3", "JOB_COMPLETIONS": "4"}),
    ]
    for args, extra in ways:
        proc = run_cli("plan", "--output", "json", *args, cwd=tmp_path, env={**env, **extra})
        assert proc.returncode == 0, proc.stderr
        assert [row["key"] for row in json.loads(proc.stdout)] == mine
    named = run_cli("plan", "--output", "json", "--shard", "3/4", NAMES[0], *mine[:1], cwd=tmp_path, env=env)
    assert named.returncode == 0, named.stderr
    assert [row["key"] for row in json.loads(named.stdout)] == [n for n in [NAMES[0], *mine[:1]] if n in mine]


@pytest.mark.parametrize(
    ("command", "args", "extra", "expected"),
    [
        ("plan", ["--shard", "4/4"], {}, "I must be below N"),
        ("apply", ["--shard", "x"], {}, "is not I/N"),
        ("serve", ["--shard", "1/0"], {}, "N must be at least 1"),
        ("apply", [], {"ROTATOR_SHARD": "2"}, "ROTATOR_SHARD: '2' is not I/N"),
        ("plan", [], {"JOB_COMPLETION_INDEX": "0"}, "JOB_COMPLETIONS is not"),
    ],
)
def test_bad_shard_is_one_usage_error(
    tmp_path: Path,
    emulator: EmulatorServer,
    command: str,
    args: list[str],
    extra: dict[str, str],
    expected: str,
) -> None:
    """A bad shard spec, given or from the environment: one line, exit 2, nothing written."""
    fleet_spec(tmp_path, emulator, NAMES[:3])
    env = {**NO_SHARD_ENV, ADMIN_ENV: "unused", **extra}
    proc = run_cli(command, *args, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rotator: error: ") and expected in lines[0]
    assert not (tmp_path / "state").exists()
    assert emulator.emulator.request_log() == []


def test_daemon_schedules_only_its_shard(tmp_path: Path, emulator: EmulatorServer) -> None:
    """serve --shard: the daemon's jobs and ticks cover its shard's keys, no other."""
    path = fleet_spec(tmp_path, emulator, NAMES)
    mine = Shard(0, 4).select(NAMES)
    daemon = Daemon(path, settings=Settings(retry_initial=0.01), shard=Shard(0, 4))
    daemon.start(paused=True)
    try:
        jobs = {job.id for job in daemon.scheduler.get_jobs()}
        assert {j for j in jobs if j.startswith("key:")} == {f"key:{k}" for k in mine}
        assert daemon.in_flight() == mine
    finally:
        daemon.stop()


def test_four_shard_processes_handle_each_key_once(tmp_path: Path, emulator: EmulatorServer) -> None:
    """Four `apply --shard i/4` processes at once on one file and one state dir: one mint per
    key, every key handled by exactly one of them, the union is the whole file."""
    admin = emulator.emulator.bootstrap_workspace_key()
    fleet_spec(tmp_path, emulator, NAMES)
    env = {**os.environ, **NO_SHARD_ENV, ADMIN_ENV: admin}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rotator.cli", "apply", "--shard", f"{i}/4", "--output", "json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    handled: dict[int, list[str]] = {}
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        rows = json.loads(out)
        assert all(r["outcome"] == "ok" and r["steps"] == ["mint", "stage", "promote"] for r in rows), rows
        handled[i] = [r["key"] for r in rows]
        assert handled[i] == Shard(i, 4).select(NAMES)
    every = [k for keys in handled.values() for k in keys]
    assert sorted(every) == sorted(NAMES) and len(every) == len(set(every))

    minted = Counter(e["key"] for e in journal(tmp_path) if e["event"] == "minted")
    assert minted == Counter(NAMES)
    mints = [r for r in emulator.emulator.request_log() if r[0] == "POST" and r[1] == "/api/v1/api-keys"]
    assert [status for _, _, status in mints] == [201] * len(NAMES)
    agents = Counter(k["agent_id"] for k in emulator.emulator.adjudon_keys() if k["type"] == "agent")
    assert agents == Counter(NAMES)
    for name in NAMES:
        raw = read_dotenv_key(tmp_path / "secrets" / f"{name}.env")
        assert raw is not None and emulator.emulator.key_accepted(raw)
    verify = run_cli("audit", "verify", cwd=tmp_path, env=env)
    assert verify.returncode == 0 and f"{len(journal(tmp_path))} entries" in verify.stdout
