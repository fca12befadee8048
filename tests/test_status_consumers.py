"""`rotator status` and `rotator plan` show the write-only targets and consumers of a key and
where each stands for its attempt: pending before the roll, rolled (with its time) after it,
failed with the journalled error, nothing for a key without them.

The real command line in this process, the vendor emulator over loopback, a file target, a
GitHub Actions secret on the fake GitHub API and real `command` consumers. The steps before a
roll are taken by the engine one at a time (as a pass would), so each state can be seen.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rotator.abc import parse_time
from rotator.engine.decide import decide
from rotator.engine.model import Publish, Roll
from rotator.engine.runner import Engine
from rotator.sandbox.emulator import EmulatorServer
from rotator.secret import fingerprint
from rotator.spec import Settings, load_rotation_file
from tests.chaos.invariants import RAW_KEY
from tests.conftest import Outcome
from tests.e2e_helpers import (
    VENDOR_CLOCK_SLACK_S,
    adjudon_issuer,
    journal,
    read_dotenv_key,
    rotation_yaml,
    write_rotation_file,
)
from tests.harnesses.write_only_github import TOKEN_ENV as GITHUB_TOKEN_ENV
from tests.harnesses.write_only_github import GithubHarness

RECORD = "sh -c echo $ROTATOR_FINGERPRINT >> rolled.log"
FLAKY = "sh -c test -e restart-ok || { echo restart refused >&2; exit 3; }"
CONSUMERS = [f"command:{RECORD}", f"command:{FLAKY}"]
RFC3339_Z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"

Cli = Callable[..., Outcome]


def _file(tmp: Path, server: EmulatorServer, github: GithubHarness | None, timeout: str = "60s") -> Path:
    targets = ["{type: file, path: secrets/payments.env, format: dotenv, field: ADJUDON_API_KEY}"]
    keys: dict[str, Any] = {}
    if github is not None:
        repo = github.new_repo()
        targets.append(
            f'{{type: github, repository: {repo}, secret_name: ADJUDON_API_KEY, api_url: "{github.api.url}", '
            f"token: {{env: {GITHUB_TOKEN_ENV}}}}}"
        )
        keys["plain"] = {
            "issuer": "emu",
            "kind": "agent",
            "agent_id": "plain",
            "targets": ["{type: file, path: secrets/plain.env, format: dotenv, field: ADJUDON_API_KEY}"],
        }
    keys["payments"] = {
        "issuer": "emu",
        "kind": "agent",
        "agent_id": "payments",
        "targets": targets,
        "consumers": [
            '{type: command, argv: [sh, -c, "echo $ROTATOR_FINGERPRINT >> rolled.log"]}',
            '{type: command, argv: [sh, -c, "test -e restart-ok || { echo restart refused >&2; exit 3; }"]}',
        ],
    }
    text = rotation_yaml(
        defaults={"verify": f"{{drain: 1s, propagation: 1s, timeout: {timeout}}}"},
        issuers={"emu": adjudon_issuer(server.url)},
        keys=keys,
    )
    return write_rotation_file(tmp, text)


def _status(cli: Cli, path: Path) -> dict[str, dict[str, Any]]:
    done = cli("-f", str(path), "status", "--output", "json")
    assert done.code == 0, done.out + done.err
    _no_secret(done.out + done.err)
    return {row["key"]: row for row in json.loads(done.out)}


def _plan(cli: Cli, path: Path) -> dict[str, dict[str, Any]]:
    done = cli("-f", str(path), "plan", "--output", "json")
    assert done.code == 0, done.out + done.err
    return {row["key"]: row for row in json.loads(done.out)}


def _text(cli: Cli, path: Path, command: str) -> str:
    done = cli("-f", str(path), command)
    assert done.code == 0, done.out + done.err
    _no_secret(done.out + done.err)
    return done.out


def _no_secret(text: str) -> None:
    assert not RAW_KEY.search(text.encode()), text


def _section(text: str, key: str) -> list[str]:
    """The lines of ``key``'s block in a text view (its header line and the indented ones)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{key}: "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return lines[start:end]


def _step_until(path: Path, key: str, stop: type, *, force: bool = False) -> Any:
    """Take ``key``'s steps with the real plugins, one at a time, until ``decide`` asks for a
    ``stop`` step; return that decision, not taken."""
    engine = Engine(load_rotation_file(path), base_dir=path.parent, settings=Settings(retry_initial=0.01))
    with engine:
        for _ in range(10):
            d = decide(engine.observe(key, force=force))
            if isinstance(d, stop):
                return d
            assert d.action in ("mint", "stage", "promote", "publish"), d
            with engine.lease.acquire(key) as lease:
                engine.act(key, d, lease=lease)
            force = False
    raise AssertionError(f"{key} never reached {stop.__name__}")


def test_status_and_plan_follow_the_consumers_through_a_rotation(
    cli: Cli,
    emulator: EmulatorServer,
    admin: str,
    tmp_path: Path,
    write_only_github_harness: GithubHarness,
) -> None:
    path = _file(tmp_path, emulator, write_only_github_harness)
    env_file = tmp_path / "secrets/payments.env"

    # nothing stored yet: the mint's attempt will roll every consumer; the plain key rolls none
    planned = _plan(cli, path)
    assert planned["payments"]["action"] == "mint" and planned["payments"]["will_roll"] == CONSUMERS
    assert planned["plain"]["will_roll"] == []
    text = _text(cli, path, "plan")
    assert [line for line in _section(text, "payments") if "will roll" in line] == [
        f"  will roll  {name}" for name in CONSUMERS
    ]
    assert _section(text, "plain") == [_section(text, "plain")[0]]
    assert cli("-f", str(path), "apply", "plain").code == 0

    # stored, promoted and published: the consumers are pending for the mint's attempt
    roll = _step_until(path, "payments", Roll)
    key = read_dotenv_key(env_file)
    assert key is not None
    [minted] = [e["attempt"] for e in journal(tmp_path) if e["event"] == "minted" and e["key"] == "payments"]
    assert roll.attempt == minted
    rows = _status(cli, path)
    payments, plain = rows["payments"], rows["plain"]
    assert payments["consumers"] == [
        {"name": name, "state": "pending", "attempt": minted, "rolled_at": None, "error": None}
        for name in CONSUMERS
    ]
    [github] = payments["write_only"]
    assert set(github) == {"name", "published", "current"}
    assert github["name"].startswith("github:acme/app-") and github["name"].endswith("#ADJUDON_API_KEY")
    assert set(github["published"]) == {"fingerprint", "attempt", "at"}
    assert github["published"]["fingerprint"] == fingerprint(key) and github["current"] is True
    assert github["published"]["attempt"] == minted
    assert re.match(RFC3339_Z, github["published"]["at"])
    assert plain["consumers"] == [] and plain["write_only"] == []
    planned = _plan(cli, path)
    assert (planned["payments"]["phase"], planned["payments"]["action"]) == ("rolling", "roll")
    assert planned["payments"]["will_roll"] == CONSUMERS
    assert cli("-f", str(path), "plan", "--detailed-exitcode").code == 2
    text = _text(cli, path, "status")
    assert f"  target  {github['name']} (write-only): fp {fingerprint(key)} written at " in text
    for name in CONSUMERS:
        assert f"  consumer  {name}: pending" in _section(text, "payments")
    assert not [line for line in _section(text, "plain") if "consumer" in line or "write-only" in line]

    # the roll: the first consumer rolls, the second fails; the pass waits (exit 0)
    applied = cli("-f", str(path), "apply", "payments")
    assert applied.code == 0, applied.out + applied.err
    assert (tmp_path / "rolled.log").read_text().split() == [fingerprint(key)]
    first, second = _status(cli, path)["payments"]["consumers"]
    assert first["state"] == "rolled" and first["error"] is None
    assert re.match(RFC3339_Z, first["rolled_at"])
    assert second["state"] == "failed" and second["rolled_at"] is None
    [failed] = [e for e in journal(tmp_path) if e["event"] == "roll-failed"]
    assert second["error"] == failed["details"]["error"]
    assert "exited with status 3" in second["error"] and "restart refused" in second["error"]
    [rolled] = [e for e in journal(tmp_path) if e["event"] == "rolled"]
    assert first["rolled_at"] == rolled["details"]["rolled_at"][:19] + "Z"
    [promoted] = [e for e in journal(tmp_path) if e["event"] == "promoted" and e["key"] == "payments"]
    promoted_at = parse_time(promoted["details"]["promoted_at"]).replace(microsecond=0)
    assert parse_time(first["rolled_at"]) >= promoted_at
    assert _plan(cli, path)["payments"]["will_roll"] == [CONSUMERS[1]]
    text = _section(_text(cli, path, "status"), "payments")
    assert f"  consumer  {CONSUMERS[0]}: rolled at {first['rolled_at']}" in text
    assert second["error"].startswith(f"{CONSUMERS[1]}: ")
    assert f"  consumer  {CONSUMERS[1]}: FAILED {second['error'].removeprefix(CONSUMERS[1] + ': ')}" in text
    text = _text(cli, path, "plan")
    assert [line for line in _section(text, "payments") if "will roll" in line] == [
        f"  will roll  {CONSUMERS[1]}"
    ]

    # fixed: the next pass rolls the second only; both rolled, nothing left to roll
    (tmp_path / "restart-ok").touch()
    assert cli("-f", str(path), "apply", "payments").code == 0
    assert (tmp_path / "rolled.log").read_text().split() == [fingerprint(key)]  # once per attempt
    states = [(c["state"], c["error"]) for c in _status(cli, path)["payments"]["consumers"]]
    assert states == [("rolled", None), ("rolled", None)]
    assert _plan(cli, path)["payments"]["will_roll"] == []
    assert cli("-f", str(path), "plan", "--detailed-exitcode", "payments").code == 0

    # a new rotation, stopped before its publish: the secret holds the old key, the consumers
    # are pending for the new attempt
    _step_until(path, "payments", Publish, force=True)
    new = read_dotenv_key(env_file)
    assert new is not None and new != key
    attempts = [e["attempt"] for e in journal(tmp_path) if e["event"] == "minted" and e["key"] == "payments"]
    payments = _status(cli, path)["payments"]
    [github] = payments["write_only"]
    assert github["published"]["fingerprint"] == fingerprint(key) and github["current"] is False
    assert github["published"]["attempt"] == minted
    assert [(c["state"], c["attempt"]) for c in payments["consumers"]] == [("pending", attempts[-1])] * 2
    text = _text(cli, path, "status")
    assert f"fp {fingerprint(key)} written at {github['published']['at']}, not the current key" in text
    planned = _plan(cli, path)["payments"]
    assert (planned["action"], planned["will_roll"]) == ("publish", CONSUMERS)


def test_a_roll_the_journal_lost_is_unrecorded_not_pending(
    cli: Cli, emulator: EmulatorServer, admin: str, tmp_path: Path
) -> None:
    """Past verify.timeout with no roll on record (the state directory was not kept) the rotator
    rolls nothing on a guess: status says so, and plan rolls nothing."""
    path = _file(tmp_path, emulator, None, timeout="3s")
    (tmp_path / "restart-ok").touch()
    assert cli("-f", str(path), "apply").code == 0
    assert [c["state"] for c in _status(cli, path)["payments"]["consumers"]] == ["rolled", "rolled"]
    [promoted] = [e for e in journal(tmp_path) if e["event"] == "promoted"]
    # promoted_at is in the vendor's clock: wait out the timeout and the clocks' slack
    late = parse_time(promoted["details"]["promoted_at"]) + timedelta(seconds=3 + VENDOR_CLOCK_SLACK_S)
    shutil.rmtree(tmp_path / "state")
    time.sleep(max(0.0, (late - datetime.now(UTC)).total_seconds()))
    row = _status(cli, path)["payments"]
    assert (row["phase"], [c["state"] for c in row["consumers"]]) == ("current", ["unrecorded"] * 2)
    assert _plan(cli, path)["payments"]["will_roll"] == []
    assert f"  consumer  {CONSUMERS[0]}: no roll on record" in _text(cli, path, "status")


@pytest.mark.parametrize("command", ["plan", "status"])
def test_help_names_the_consumers(cli: Cli, command: str) -> None:
    done = cli(command, "--help")
    assert done.code == 0 and "consumer" in done.out


def test_validate_counts_consumers_and_write_only_targets(
    cli: Cli, emulator: EmulatorServer, tmp_path: Path, write_only_github_harness: GithubHarness
) -> None:
    path = _file(tmp_path, emulator, write_only_github_harness)
    done = cli("-f", str(path), "validate")
    assert done.code == 0, done.err
    assert done.out == f"{path}: ok (2 keys, 1 issuers, 2 consumers, 1 write-only targets)\n"
