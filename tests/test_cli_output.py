"""What a terminal user and a script see: exit codes, one error format, JSON output,
read-only commands that write nothing, the journal's head record and the daemon's health.

Each test drives the real command line (in this process, or in a subprocess where a pipe
matters) against the vendor emulator over loopback HTTP and file targets.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rotator.audit import Journal
from rotator.sandbox.emulator import EmulatorServer
from rotator.scheduler import Daemon, serve_http
from rotator.spec import Settings
from tests.chaos.invariants import RAW_KEY
from tests.conftest import run_cli
from tests.e2e_helpers import (
    ADMIN_ENV,
    adjutor_app,
    agent_keys,
    journal,
    read_dotenv_key,
    write_spec,
)
from tests.test_bad_input import BASE, assert_one_clear_error

FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def admin(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> str:
    key = emulator.emulator.bootstrap_workspace_key()
    monkeypatch.setenv(ADMIN_ENV, key)
    for name, value in FAST_ENV.items():
        monkeypatch.setenv(name, value)
    return key


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert not RAW_KEY.search(text.encode()), text


def _hold(tmp_path: Path, emulator: EmulatorServer, cli: Any) -> Path:
    """A key held: a newer active key, minted by hand, sits beside the one the rotator holds."""
    path = write_spec(tmp_path, emulator, targets=1)
    assert cli("-f", str(path), "apply").code == 0
    emulator.emulator.create_agent_key("payments", name="by hand")
    return path


# --------------------------------------------------------------------------- settings (2)


def test_invalid_setting_is_one_line_exit_2(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad ROTATOR_* variable: one line naming it, exit 2, no traceback, nothing written."""
    path = tmp_path / "rotations.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("ROTATOR_LOG_LEVEL", "chatty")
    result = cli("-f", str(path), "validate")
    assert_one_clear_error(result, "ROTATOR_LOG_LEVEL", "'chatty'", code=2)
    assert result.err_lines[0].startswith("rotator: error: invalid setting ROTATOR_LOG_LEVEL: ")
    monkeypatch.setenv("ROTATOR_LOG_LEVEL", "debug")  # lowercase is simply accepted
    monkeypatch.setenv("ROTATOR_PARALLEL", "lots")
    result = cli("-f", str(path), "apply")
    assert_one_clear_error(result, "ROTATOR_PARALLEL", code=2)
    monkeypatch.setenv("ROTATOR_DEBUG", "perhaps")  # even --debug's own variable: one line
    assert cli("-f", str(path), "validate").err_lines[0].startswith("rotator: error: invalid setting")
    assert _tree(tmp_path) == ["rotations.yaml"]


def test_lowercase_log_level_is_accepted(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ROTATOR_LOG_LEVEL=debug means DEBUG."""
    path = tmp_path / "rotations.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("ROTATOR_LOG_LEVEL", "debug")
    result = cli("-f", str(path), "validate")
    assert result.code == 0, result.err
    assert Settings().log_level == "DEBUG"


# --------------------------------------------------------------------------- read-only (6)


def test_plan_writes_nothing(tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any) -> None:
    """validate, plan, status, apply --dry-run and audit verify create no state_dir, no file."""
    path = write_spec(tmp_path, emulator)
    before = _tree(tmp_path)
    for args in (["validate"], ["plan"], ["status"], ["apply", "--dry-run"], ["audit", "verify"]):
        result = cli("-f", str(path), *args)
        assert result.code == 0, (args, result.err)
        assert _tree(tmp_path) == before, args
    assert not (tmp_path / "state").exists()
    assert agent_keys(emulator) == []  # nothing minted either


def test_unwritable_state_dir_is_one_line_naming_it(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """A state_dir that cannot be created: one line naming it, exit 1, nothing minted or stored."""
    path = write_spec(tmp_path, emulator)
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    path.write_text(path.read_text().replace("state_dir: state", "state_dir: blocker/state"))
    before = emulator.emulator.adjudon_keys()
    result = cli("-f", str(path), "apply")
    assert_one_clear_error(result, f"state_dir {tmp_path / 'blocker' / 'state'} cannot be written", code=1)
    assert "Not a directory" in result.err and "unexpected" not in result.err
    assert emulator.emulator.adjudon_keys() == before
    assert read_dotenv_key(tmp_path / "secrets/a.env") is None


def test_full_state_dir_is_one_line_naming_it(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """A state_dir on a full disk (its writes go to /dev/full): one line, nothing minted."""
    path = write_spec(tmp_path, emulator)
    state = tmp_path / "state"
    state.mkdir()
    (state / ".rotator-write-check").symlink_to("/dev/full")
    before = emulator.emulator.adjudon_keys()
    result = cli("-f", str(path), "rotate", "payments")
    assert_one_clear_error(result, f"state_dir {state} cannot be written", "No space left on device", code=1)
    assert emulator.emulator.adjudon_keys() == before
    assert read_dotenv_key(tmp_path / "secrets/a.env") is None


def test_serve_refuses_an_unwritable_state_dir(tmp_path: Path, emulator: EmulatorServer, cli: Any) -> None:
    """serve journals every pass: it does not start on a state_dir it cannot write."""
    path = write_spec(tmp_path, emulator)
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    path.write_text(path.read_text().replace("state_dir: state", "state_dir: blocker/state"))
    result = cli("-f", str(path), "serve", "--port", "0")
    assert_one_clear_error(result, f"state_dir {tmp_path / 'blocker' / 'state'} cannot be written", code=1)


def test_full_journal_is_one_line_naming_it(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """The journal itself cannot take a write: one line naming the file, not an OSError."""
    path = write_spec(tmp_path, emulator)
    state = tmp_path / "state"
    state.mkdir()
    (state / "audit.jsonl").symlink_to("/dev/full")
    result = cli("-f", str(path), "apply")
    assert result.code == 1, result.err
    assert result.out.startswith("payments: failed (failed): ")
    assert f"{state / 'audit.jsonl'}: cannot append (No space left on device)" in result.out
    assert "OSError" not in result.out + result.err and "Traceback" not in result.err
    _no_secret(result.out, result.err)


# --------------------------------------------------------------------------- journal head (9)


def _rotated_journal(tmp_path: Path, emulator: EmulatorServer, cli: Any) -> Path:
    path = write_spec(tmp_path, emulator)
    assert cli("-f", str(path), "apply").code == 0
    return path


def test_truncated_journal_fails_verify(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """Lines cut from the end, or the whole journal deleted: audit verify exits 1 naming it."""
    path = _rotated_journal(tmp_path, emulator, cli)
    log = tmp_path / "state/audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    ok = cli("-f", str(path), "audit", "verify")
    assert ok.code == 0 and f"journal intact: {len(lines)} entries" in ok.out

    log.write_bytes(b"".join(lines[:-1]))  # the tail cut at a line boundary: a valid chain
    cut = cli("-f", str(path), "audit", "verify")
    assert_one_clear_error(cut, "cut from the end", f"counts {len(lines)}", code=1)

    log.unlink()
    gone = cli("-f", str(path), "audit", "verify")
    assert_one_clear_error(gone, "the journal is missing", code=1)


def test_truncated_journal_refuses_appends(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """A pass does not write over a cut: appending to a journal shorter than its head fails."""
    _rotated_journal(tmp_path, emulator, cli)
    log = tmp_path / "state/audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(Exception, match="was cut"):
        Journal(tmp_path / "state").append("note", key="payments")
    assert log.read_bytes() == b"".join(lines[:-1])


def test_replaced_tail_fails_verify(tmp_path: Path) -> None:
    """A journal cut and re-chained to the same length: the head's hash no longer matches."""
    state = tmp_path / "state"
    first = Journal(state)
    for n in range(3):
        first.append("note", key="payments", n=n)
    head = first.read_head()
    log = state / "audit.jsonl"
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:2]))
    (state / "audit.head").rename(state / "kept.head")
    Journal(state).append("note", key="payments", n=99)  # a forged third entry
    (state / "kept.head").rename(state / "audit.head")
    result = Journal(state).verify()
    assert head is not None and not result.ok and result.first_bad == 3
    assert "head record" in (result.reason or "")


def test_damaged_head_fails_verify(tmp_path: Path) -> None:
    """A head record that is not one: verify says so, and no append goes past it."""
    state = tmp_path / "state"
    Journal(state).append("one")
    (state / "audit.head").write_text("{not json")
    result = Journal(state).verify()
    assert not result.ok and result.reason == f"{state / 'audit.head'}: the head record is damaged"
    with pytest.raises(Exception, match="head record is damaged"):
        Journal(state).append("two")
    assert len(journal(tmp_path)) == 1


def test_head_lagging_one_entry_after_a_crash_is_accepted(tmp_path: Path) -> None:
    """A crash between the journal write and the head write leaves the head one behind: intact."""
    state = tmp_path / "state"
    journal_ = Journal(state)
    journal_.append("one")
    saved = (state / "audit.head").read_bytes()
    journal_.append("two")
    (state / "audit.head").write_bytes(saved)
    assert journal_.verify().ok
    journal_.append("three")  # the next append puts the head right again
    assert journal_.read_head() == (3, journal(tmp_path)[-1]["hash"])


# --------------------------------------------------------------------------- status prefixes (10)


def test_status_shows_no_prefix_for_non_key_values(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """A stored value that is not a vendor key (a password) shows by its fingerprint alone."""
    path = write_spec(tmp_path, emulator, targets=1)
    password = "hunter2-database-password-xyz"
    (tmp_path / "secrets/a.env").write_text(f"ADJUDON_API_KEY={password}\n")
    for output in ("text", "json"):
        result = cli("-f", str(path), "status", "--output", output)
        assert password[:5] not in result.out, result.out
    row = json.loads(cli("-f", str(path), "status", "--output", "json").out)[0]
    current = row["targets"][0]["current"]
    assert current["prefix"] is None and current["truncated"] is False and len(current["fingerprint"]) == 12
    text = cli("-f", str(path), "status").out
    assert f": fp {current['fingerprint']}" in text


def test_status_shows_the_prefix_of_a_key(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """A stored agent key, known to the vendor or only of its format, shows its 13-char prefix."""
    path = write_spec(tmp_path, emulator, targets=1)
    assert cli("-f", str(path), "apply").code == 0
    key = read_dotenv_key(tmp_path / "secrets/a.env")
    assert key is not None
    row = json.loads(cli("-f", str(path), "status", "--output", "json").out)[0]
    assert row["targets"][0]["current"] == {
        **row["targets"][0]["current"],
        "prefix": key[:13],
        "truncated": True,
    }
    unknown = "adj_agent_" + "0" * 48  # the format, but no key the vendor lists
    (tmp_path / "secrets/a.env").write_text(f"ADJUDON_API_KEY={unknown}\n")
    row = json.loads(cli("-f", str(path), "status", "--output", "json").out)[0]
    assert row["targets"][0]["current"]["prefix"] == unknown[:13]


# --------------------------------------------------------------------------- plan exit codes (14)


def test_plan_detailed_exitcode_invalid_file_is_1(tmp_path: Path, cli: Any) -> None:
    """With --detailed-exitcode an invalid file (or a usage error) is 1, never 2 (pending)."""
    path = tmp_path / "rotations.yaml"
    path.write_text(BASE.replace("drain: 1s", "drain: soon"))
    result = cli("-f", str(path), "plan", "--detailed-exitcode")
    assert_one_clear_error(result, "defaults.verify.drain", code=1)
    assert cli("-f", str(path), "plan").code == 2  # without it: validate's code
    usage = cli("-f", str(path), "plan", "--detailed-exitcode", "--colour")
    assert_one_clear_error(usage, "No such option", code=1)
    assert _tree(tmp_path) == ["rotations.yaml"]


def test_plan_detailed_exitcode(tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any) -> None:
    """0 nothing to do, 2 steps pending (Terraform's codes); plain plan is 0 either way."""
    path = write_spec(tmp_path, emulator)
    assert cli("-f", str(path), "plan").code == 0
    assert cli("-f", str(path), "plan", "--detailed-exitcode").code == 2
    assert cli("-f", str(path), "apply").code == 0
    assert cli("-f", str(path), "plan", "--detailed-exitcode").code == 0


# --------------------------------------------------------------------------- status exit codes (15)


def test_status_detailed_exitcode(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """status --detailed-exitcode: 0 at rest, 1 a key failed; plain status stays 0."""
    path = write_spec(tmp_path, emulator, targets=1)
    assert cli("-f", str(path), "apply").code == 0
    assert cli("-f", str(path), "status", "--detailed-exitcode").code == 0
    monkeypatch.setenv(ADMIN_ENV, "adj_live_" + "1" * 64)  # a credential the vendor refuses
    failed = cli("-f", str(path), "status", "--detailed-exitcode")
    assert failed.code == 1 and "payments: failed" in failed.out
    assert cli("-f", str(path), "status").code == 0
    _no_secret(failed.out, failed.err)


def test_status_detailed_exitcode_held(
    tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any
) -> None:
    """A held key: status --detailed-exitcode exits 3."""
    path = _hold(tmp_path, emulator, cli)
    result = cli("-f", str(path), "status", "--detailed-exitcode", "--output", "json")
    rows = json.loads(result.out)
    assert rows[0]["next"] == "hold", rows
    assert result.code == 3


# --------------------------------------------------------------------------- one error format (16)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plan", "--colour"], "No such option '--colour'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["status", "--output", "yaml"], "Invalid value for '--output'"),
        (["emergency", "payments"], "Missing option '--reason'"),
    ],
)
def test_usage_errors_use_one_format(tmp_path: Path, cli: Any, args: list[str], fragment: str) -> None:
    """click's usage errors: one `rotator: error:` line, click's exit code 2, nothing else."""
    path = tmp_path / "rotations.yaml"
    path.write_text(BASE)
    result = cli("-f", str(path), *args)
    assert_one_clear_error(result, fragment, "--help", code=2)
    assert "Usage:" not in result.err and "Error:" not in result.err.replace("rotator: error:", "")
    assert result.out == ""


@pytest.mark.parametrize("args", [[], ["audit"]])
def test_group_without_command_shows_its_help(cli: Any, args: list[str]) -> None:
    """`rotator` or `rotator audit` alone: the help as click lays it out, not a folded error."""
    result = cli(*args)
    assert result.code in (0, 2)
    shown = result.out + result.err
    assert shown.startswith("Usage: rotator") and "Commands:" in shown and "rotator: error" not in shown


def test_failed_key_is_reported_once(tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any) -> None:
    """A key held (or failed) in a pass is reported once on each stream: its result line on
    stdout, one warning line on stderr (no progress line repeats it)."""
    path = _hold(tmp_path, emulator, cli)
    env = {ADMIN_ENV: os.environ[ADMIN_ENV], **FAST_ENV}
    proc = run_cli("-f", str(path), "apply", cwd=tmp_path, env=env)
    assert proc.returncode == 3 and proc.stdout.startswith("payments: held (held): "), proc.stderr
    reason = proc.stdout.strip().split(": ", 2)[-1]
    assert reason and proc.stdout.count(reason) == 1, proc.stdout
    [line] = [line for line in proc.stderr.splitlines() if reason in line]
    assert " WARNING rotator.engine: payments: " in line, proc.stderr


def test_error_printed_once_with_debug(tmp_path: Path, cli: Any) -> None:
    """With --debug the traceback comes first, then the one error line, once."""
    result = cli("-f", str(tmp_path / "nope.yaml"), "--debug", "validate")
    assert result.code == 2
    assert result.err_lines[-1].startswith("rotator: error: ") and "Traceback" in result.err
    assert result.err.count("rotator: error:") == 1


# --------------------------------------------------------------------------- no wrapping (17)


def test_stderr_never_wraps_when_piped(tmp_path: Path, emulator: EmulatorServer, admin: str) -> None:
    """Piped (not a TTY), progress lines, log lines and errors stay whole however long."""
    long_name = "payments_" + "x" * 115  # the longest name allowed is 128
    path = write_spec(tmp_path, emulator, targets=1)
    path.write_text(path.read_text().replace("  payments:", f"  {long_name}:"))
    env = {ADMIN_ENV: os.environ[ADMIN_ENV], **FAST_ENV, "COLUMNS": "", "TERM": "dumb"}
    proc = run_cli("-f", str(path), "apply", "--wait", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if long_name in line]
    assert progress and all(re.match(r"^\d\d:\d\d:\d\d ", line) for line in progress), proc.stderr
    assert len(progress[0]) > 160
    bad = run_cli("-f", str(path), "rotate", "nokey_" + "y" * 200, cwd=tmp_path, env=env)
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rotator: error: unknown key(s): nokey_"), bad.stderr
    emulator.emulator.create_agent_key("payments", name="by hand")  # a newer key: the next pass holds
    held = run_cli("-f", str(path), "apply", cwd=tmp_path, env=env)
    assert held.returncode == 3, held.stderr
    [warning] = held.stderr.splitlines()
    assert f" WARNING rotator.engine: {long_name}: " in warning and len(warning) > 200


# --------------------------------------------------------------------------- JSON (18)


def _assert_times(value: Any, path: str = "") -> None:
    """Every time is RFC 3339 with Z, every duration a number, no prefix has an ellipsis."""
    if isinstance(value, dict):
        for k, v in value.items():
            if (k.endswith("_at") or k == "until") and v is not None:
                assert isinstance(v, str) and RFC3339_Z.match(v), (path + k, v)
            if k.endswith("_s"):
                assert v is None or isinstance(v, int | float), (path + k, v)
            if k == "prefix":
                assert v is None or "…" not in v, (path + k, v)
            _assert_times(v, f"{path}{k}.")
    elif isinstance(value, list):
        for item in value:
            _assert_times(item, path)


def test_json_output_shape(tmp_path: Path, emulator: EmulatorServer, admin: str, cli: Any) -> None:
    """plan, apply, rotate and status JSON: times RFC 3339 Z, ages in seconds, bare prefixes."""
    path = write_spec(tmp_path, emulator, targets=1)
    planned = json.loads(cli("-f", str(path), "plan", "--output", "json").out)
    assert [(p["key"], p["action"]) for p in planned] == [("payments", "mint")]
    assert set(planned[0]) == {"key", "action", "phase", "reason", "until", "will_roll"}
    assert planned[0]["will_roll"] == []  # no consumers
    applied = json.loads(cli("-f", str(path), "apply", "--output", "json").out)
    assert set(applied[0]) == {"key", "outcome", "phase", "message", "steps", "until", "window_s"}
    assert applied[0]["steps"][0] == "mint" and applied[0]["window_s"] is None
    rotated = cli("-f", str(path), "rotate", "payments", "--output", "json")
    assert rotated.code == 0, rotated.err
    waiting = json.loads(rotated.out)[0]
    assert waiting["outcome"] == "waiting" and RFC3339_Z.match(waiting["until"])
    status = json.loads(cli("-f", str(path), "status", "--output", "json").out)[0]
    for data in (planned, applied, waiting, status):
        _assert_times(data)
    vendor = status["vendor_keys"]
    assert len(vendor) == 2 and all(isinstance(k["age_s"], float) and k["truncated"] is True for k in vendor)
    assert all(len(k["prefix"]) == 13 and RFC3339_Z.match(k["created_at"]) for k in vendor)
    assert status["targets"][0]["current"]["prefix"] == vendor[0]["prefix"]
    assert status["last_cutover"] is None
    assert status["write_only"] == [] and status["consumers"] == []
    text = cli("-f", str(path), "status").out
    assert f"{vendor[0]['prefix']}… active" in text  # people still see the ellipsis
    _no_secret(json.dumps([planned, applied, waiting, status]), text)


# --------------------------------------------------------------------------- cutover window (19)


def test_cutover_window_is_printed(tmp_path: Path, emulator: EmulatorServer, cli: Any) -> None:
    """A reset's window (consumers could hold a dead key) shows in the pass and in status."""
    _, spec = adjutor_app(tmp_path, emulator)
    assert cli("-f", str(spec), "apply").code == 0
    rotated = cli("-f", str(spec), "rotate", "app")
    assert rotated.code == 0, rotated.err
    window = [e for e in journal(tmp_path) if e["event"] == "reset"][-1]["details"]["window_s"]
    assert f"app: cutover window {window:.3f}s" in rotated.out
    status = cli("-f", str(spec), "status")
    assert f"cutover window {window:.3f}s at the last reset" in status.out
    row = json.loads(cli("-f", str(spec), "status", "--output", "json").out)[0]
    assert row["last_cutover"]["window_s"] == window and RFC3339_Z.match(row["last_cutover"]["reset_at"])
    again = json.loads(cli("-f", str(spec), "rotate", "app", "--output", "json").out)[0]
    newest = [e for e in journal(tmp_path) if e["event"] == "reset"][-1]["details"]["window_s"]
    assert again["steps"] == ["reset"] and again["window_s"] == newest
    _no_secret(rotated.out, status.out, json.dumps(row))


# --------------------------------------------------------------------------- healthz (20)


@pytest.fixture
def daemon(tmp_path: Path, emulator: EmulatorServer) -> Iterator[tuple[Daemon, Path, str]]:
    path = write_spec(tmp_path, emulator)
    d = Daemon(path, settings=Settings(retry_initial=0.01))
    d.start(paused=True)
    server = serve_http(d, "127.0.0.1", 0)
    host, port = server.server_address[:2]
    try:
        yield d, path, f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        d.stop()


def _failures(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rotator_config_reload_failures_total":
                return float(sample.value)
    raise AssertionError("no rotator_config_reload_failures_total")


def test_healthz_reports_stale_config(daemon: tuple[Daemon, Path, str]) -> None:
    """A refused reload: /healthz stays 200 but says config stale, with the error and the
    time of the last good load; the failure counter grows; a good reload clears it."""
    d, path, base = daemon
    health = httpx.get(f"{base}/healthz")
    assert health.status_code == 200 and health.json()["config"] == "ok"
    loaded = health.json()["config_loaded_at"]
    assert RFC3339_Z.match(loaded) and "config_error" not in health.json()
    assert _failures(base) == 0

    good = path.read_text()
    path.write_text(good.replace("drain: 1s", "drain: soon"))
    assert not d.reload()
    health = httpx.get(f"{base}/healthz")
    body = health.json()
    assert health.status_code == 200 and body["status"] == "ok"
    assert body["config"] == "stale" and body["config_loaded_at"] == loaded
    assert "defaults.verify.drain" in body["config_error"] and "\n" not in body["config_error"]
    assert _failures(base) == 1

    leaked = "adj_live_" + "ab" * 32  # a key pasted into the file: the error quotes it
    path.write_text(good.replace("drain: 1s", f"drain: {leaked}"))
    assert not d.reload()
    body = httpx.get(f"{base}/healthz").json()
    assert body["config"] == "stale" and "defaults.verify.drain" in body["config_error"]
    assert leaked not in httpx.get(f"{base}/healthz").text and _failures(base) == 2

    path.write_text(good)
    assert d.reload()
    body = httpx.get(f"{base}/healthz").json()
    assert body["config"] == "ok" and "config_error" not in body
    assert _failures(base) == 2
