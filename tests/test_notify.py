"""Notifications through Apprise's ``json://`` service to a local HTTP receiver: one message per
event and key across repeated passes, news again after a key leaves a state, a receiver that is
down costs one warning and never the exit code, and no raw key in any payload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rotator.engine.runner import Engine
from rotator.sandbox.demo import Consumer
from rotator.sandbox.emulator import EmulatorServer
from rotator.scheduler import Daemon
from rotator.spec import Settings, load_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import ADMIN_ENV, VENDOR_CLOCK_SLACK_S, adjutor_app, read_dotenv_key, write_spec

FAST = Settings(retry_initial=0.01, retry_attempts=1, probe_timeout=5)
FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_RETRY_ATTEMPTS": "1", "ROTATOR_PROBE_TIMEOUT": "5"}
URL_ENV = "E2E_NOTIFY_URL"


class Receiver:
    """A webhook on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                outer.raw.append(data)
                outer.bodies.append(json.loads(data))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self, event: str | None = None) -> list[tuple[str, str]]:
        """``(key, event)`` of each message, from its title ``rotator: KEY EVENT``."""
        out = []
        for body in self.bodies:
            _, key, what = body["title"].split(" ")
            if event is None or what == event:
                out.append((key, what))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _notify_block(on: str) -> str:
    return f"notify:\n  - {{url: {{env: {URL_ENV}}}, on: [{on}]}}\n"


def _env(admin: str, receiver_url: str) -> dict[str, str]:
    return {ADMIN_ENV: admin, URL_ENV: receiver_url, **FAST_ENV}


def _assert_no_raw_key(tmp_path: Path, receiver: Receiver, *raw: str | None) -> None:
    texts = receiver.raw + [p.read_text() for p in (tmp_path / "state").glob("notify*") if p.is_file()]
    assert receiver.raw, "no notification was sent"
    for value in raw:
        assert value
        for text in texts:
            assert value not in text


def test_held_key_is_one_message_then_completed_is_one(
    tmp_path: Path, emulator: EmulatorServer, admin: str, receiver: Receiver
) -> None:
    """A key held across passes is one message; once it drains, the completed rotation is one."""
    path = write_spec(
        tmp_path,
        emulator,
        drain="1s",
        propagation="0s",
        timeout="2s",
        targets=1,
        extra=_notify_block("held, completed"),
    )
    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST)
    engine.apply(["payments"])
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    engine.apply(["payments"], force=True)
    assert old is not None
    stubborn = Consumer(tmp_path / "secrets/a.env", emulator.url, interval=0.05)
    stubborn._read_key = lambda: old  # type: ignore[method-assign]
    stubborn.start()
    env = _env(admin, receiver.url)
    try:
        first = run_cli("apply", "--wait", cwd=tmp_path, env=env)
        again = [run_cli("apply", cwd=tmp_path, env=env) for _ in range(2)]
    finally:
        stubborn.stop()
    assert first.returncode == 3, first.stdout + first.stderr
    assert [p.returncode for p in again] == [3, 3]
    assert receiver.events() == [("payments", "held")]
    body = receiver.bodies[0]
    assert body["type"] == "warning"
    assert "phase: held" in body["message"] and "still used" in body["message"]
    assert "attempt: " in body["message"] and "fp " in body["message"]

    time.sleep(1.5 + VENDOR_CLOCK_SLACK_S)  # the consumer has stopped: the old key drains (1 s)
    done = run_cli("apply", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "payments: ok" in done.stdout
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    assert receiver.events() == [("payments", "held"), ("payments", "completed")]
    assert receiver.bodies[1]["type"] == "success"
    new = read_dotenv_key(tmp_path / "secrets/a.env")
    _assert_no_raw_key(tmp_path, receiver, admin, old, new)


def test_failed_and_overdue_once_each_and_news_again_after_recovery(
    tmp_path: Path, emulator: EmulatorServer, admin: str, receiver: Receiver
) -> None:
    """A failing key past max_age: one failed and one overdue message over repeated passes; after
    a good pass the next failure is news again."""
    write_spec(tmp_path, emulator, max_age="1s", extra=_notify_block("failed, overdue"))
    env = _env(admin, receiver.url)
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    good = (tmp_path / "secrets/b.json").read_text()
    time.sleep(1.1 + VENDOR_CLOCK_SLACK_S)  # the key is now older than max_age, in either clock
    (tmp_path / "secrets/b.json").write_text("{not json")
    runs = [run_cli("apply", cwd=tmp_path, env=env) for _ in range(3)]
    assert [p.returncode for p in runs] == [1, 1, 1], runs[0].stdout + runs[0].stderr
    assert sorted(receiver.events()) == [("payments", "failed"), ("payments", "overdue")]
    overdue = next(b for b in receiver.bodies if b["title"].endswith("overdue"))
    assert "over max_age 1s" in overdue["message"] and "vendor key: adj_agent_" in overdue["message"]

    (tmp_path / "secrets/b.json").write_text(good)
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0  # rotates: the key was due
    (tmp_path / "secrets/b.json").write_text("{not json")
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 1
    assert receiver.events("failed") == [("payments", "failed")] * 2
    _assert_no_raw_key(tmp_path, receiver, admin, read_dotenv_key(tmp_path / "secrets/a.env"))


def test_emergency_is_one_message(
    tmp_path: Path, emulator: EmulatorServer, admin: str, receiver: Receiver
) -> None:
    """`rotator emergency` sends one message; the passes after it send no other."""
    write_spec(
        tmp_path, emulator, drain="0s", propagation="0s", extra=_notify_block("emergency, held, failed")
    )
    env = _env(admin, receiver.url)
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    leaked = read_dotenv_key(tmp_path / "secrets/a.env")
    proc = run_cli("emergency", "payments", "--reason", "pasted in a ticket", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for _ in range(2):
        assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    assert receiver.events() == [("payments", "emergency")]
    body = receiver.bodies[0]
    assert body["type"] == "failure"
    assert "pasted in a ticket" in body["message"] and "leaked key: adj_agent_" in body["message"]
    assert "revoked " in body["message"] and "new key: " in body["message"]
    _assert_no_raw_key(tmp_path, receiver, admin, leaked, read_dotenv_key(tmp_path / "secrets/a.env"))


def test_receiver_down_costs_one_warning_not_the_exit_code(
    tmp_path: Path, emulator: EmulatorServer, admin: str, receiver: Receiver
) -> None:
    """A receiver that refuses connections: one warning line on stderr, exit code unchanged,
    and the message is sent once the receiver is back."""
    write_spec(tmp_path, emulator, extra=_notify_block("failed"))
    port = receiver.server.server_address[1]
    receiver.close()
    env = {**_env(admin, f"json://127.0.0.1:{port}/hook"), ADMIN_ENV: ""}  # the pass fails
    proc = run_cli("apply", cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "notify" in line]
    assert len(warnings) == 1, proc.stderr
    assert "not delivered (failed payments)" in warnings[0] and "Traceback" not in proc.stderr
    assert "127.0.0.1" not in warnings[0]  # the URL may carry a token: never shown

    back = Receiver()
    try:
        env[URL_ENV] = back.url
        assert run_cli("apply", cwd=tmp_path, env=env).returncode == 1
        assert run_cli("apply", cwd=tmp_path, env=env).returncode == 1
        assert back.events() == [("payments", "failed")]
    finally:
        back.close()


def test_url_from_a_declared_key_and_missing_env_is_a_warning(
    tmp_path: Path, emulator: EmulatorServer, admin: str, receiver: Receiver
) -> None:
    """``url: {key: NAME}`` reads the URL from that key's target; an unset variable is one
    warning and the pass's exit code stays."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook/url").write_text(receiver.url + "\n")
    extra = """\
  notify-webhook:
    issuer: emu
    targets: [{type: file, path: hook/url}]
notify:
  - {url: {key: notify-webhook}, on: [failed], keys: [payments]}
  - {url: {env: NOT_SET_ANYWHERE}, on: [failed]}
"""
    write_spec(tmp_path, emulator, extra=extra)
    env = {**FAST_ENV, ADMIN_ENV: ""}
    proc = run_cli("apply", "payments", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert receiver.events() == [("payments", "failed")]
    warnings = [line for line in proc.stderr.splitlines() if "notify" in line]
    assert len(warnings) == 1 and "NOT_SET_ANYWHERE is not set" in warnings[0], proc.stderr


def test_inline_url_is_a_validate_error(tmp_path: Path, emulator: EmulatorServer) -> None:
    """A URL written into the file is refused, naming the field and its line."""
    write_spec(tmp_path, emulator, extra='notify:\n  - {url: "json://127.0.0.1/x", on: [held]}\n')
    proc = run_cli("validate", cwd=tmp_path)
    assert proc.returncode == 2
    line = next(
        i for i, t in enumerate((tmp_path / "rotations.yaml").read_text().splitlines(), 1) if "json://" in t
    )
    assert f"rotations.yaml:{line}: notify.0.url: an inline URL is not allowed" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_unknown_keys_in_notify_are_validate_errors(tmp_path: Path, emulator: EmulatorServer) -> None:
    """``keys:`` and ``url: {key:}`` must name declared keys; ``on:`` only known events."""
    write_spec(
        tmp_path, emulator, extra="notify:\n  - {url: {key: nope}, on: [held], keys: [payments, ghost]}\n"
    )
    proc = run_cli("validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "notify.0.url.key: no key named 'nope'" in proc.stderr
    assert "notify.0.keys.1: no key named 'ghost'" in proc.stderr
    write_spec(tmp_path, emulator, extra="notify:\n  - {url: {env: X}, on: [exploded]}\n")
    proc = run_cli("validate", cwd=tmp_path)
    assert proc.returncode == 2 and "notify.0.on.0" in proc.stderr


def test_serve_pass_notifies_once(
    tmp_path: Path, emulator: EmulatorServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve`'s passes notify through the same function: repeated checks, one message."""
    path = write_spec(tmp_path, emulator, extra=_notify_block("failed"))
    monkeypatch.setenv(URL_ENV, receiver.url)
    monkeypatch.delenv(ADMIN_ENV, raising=False)
    daemon = Daemon(path, settings=FAST)
    try:
        for _ in range(3):
            daemon._check("payments")
    finally:
        daemon.stop()
    assert receiver.events() == [("payments", "failed")]


def test_lambda_scheduled_pass_notifies_once(
    tmp_path: Path, emulator: EmulatorServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Lambda handler's scheduled passes notify through the same function."""
    from rotator.lambda_handler import handler

    path = write_spec(tmp_path, emulator, extra=_notify_block("failed"))
    monkeypatch.setenv(URL_ENV, receiver.url)
    monkeypatch.setenv("ROTATOR_FILE", str(path))
    monkeypatch.setenv("ROTATOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ROTATOR_RETRY_ATTEMPTS", "1")
    monkeypatch.delenv(ADMIN_ENV, raising=False)
    event = {"source": "aws.events", "detail-type": "Scheduled Event"}
    for _ in range(2):
        assert handler(event, None)["ok"] is False
    assert receiver.events() == [("payments", "failed")]


def test_apprise_is_imported_only_with_a_notify_section(tmp_path: Path, emulator: EmulatorServer) -> None:
    """`rotator --help` and a pass of a file without ``notify:`` never import Apprise."""
    write_spec(tmp_path, emulator)
    code = (
        "import sys\n"
        "from rotator.cli import main\n"
        "for args in (['--help'], ['validate']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('APPRISE', 'apprise' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=dict(os.environ),
    )
    assert "APPRISE False" in out.stdout, out.stdout + out.stderr


def test_cutover_reset_is_one_completed_message(
    tmp_path: Path, emulator: EmulatorServer, receiver: Receiver
) -> None:
    """On a reset-only vendor a verified reset is the completed rotation: one message, with
    no raw key in it."""
    notify = f"notify:\n  - {{url: {{env: {URL_ENV}}}, on: [completed, held, failed]}}\n"
    raw, _ = adjutor_app(tmp_path, emulator, ["{type: file, path: secrets/app.key}"], extra=notify)
    env = {URL_ENV: receiver.url, **FAST_ENV}
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0  # adopts the stored key
    assert receiver.events() == []
    proc = run_cli("rotate", "app", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_cli("apply", cwd=tmp_path, env=env).returncode == 0
    assert receiver.events() == [("app", "completed")]
    new = (tmp_path / "secrets/app.key").read_text().strip()
    assert new != raw
    _assert_no_raw_key(tmp_path, receiver, raw, new)
