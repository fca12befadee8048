"""The read-once consumer (``rotator.sandbox.readonce``), its restart tool and its webhook
receiver: real processes against the real vendor emulator on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from providers.consumers.webhook import sign
from rotator.abc import RollEvent
from rotator.builtin.consumers import CommandConsumer, WebhookConsumer
from rotator.sandbox.emulator import EmulatorServer
from rotator.sandbox.readonce import Totals, is_running, read_pid, read_stats
from rotator.secret import fingerprint

MODULE = "rotator.sandbox.readonce"


class Loop:
    """One read-once service's files, and the vendor it calls."""

    def __init__(self, server: EmulatorServer, workdir: Path) -> None:
        self.server = server
        self.admin = server.emulator.bootstrap_workspace_key("admin")
        self.env_file = workdir / "service.env"
        self.pidfile = workdir / "service.pid"
        self.stats = workdir / "stats"

    def options(self, interval: float = 0.1) -> list[str]:
        return [
            *("--env-file", str(self.env_file), "--var", "ADJUDON_API_KEY", "--url", self.server.url),
            *("--pidfile", str(self.pidfile), "--stats", str(self.stats), "--interval", str(interval)),
        ]

    def mint(self) -> str:
        return self.server.emulator.create_agent_key("readonce", f"k-{uuid.uuid4().hex[:6]}")

    def write_key(self, raw: str) -> None:
        self.env_file.write_text(f"OTHER=1\nADJUDON_API_KEY={raw}\n")

    def revoke(self, raw: str) -> None:
        [key] = [k for k in self.server.emulator.adjudon_keys() if k["prefix"] == raw[:13]]
        r = httpx.delete(
            f"{self.server.url}/api/v1/api-keys/{key['id']}",
            headers={"Authorization": f"Bearer {self.admin}"},
        )
        assert r.status_code == 200, r.text

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", MODULE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def restart(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("restart", *self.options(), *extra)

    def totals(self) -> Totals:
        return read_stats(self.stats)

    def wait_for(self, what: Callable[[Totals], bool], timeout: float = 10) -> Totals:
        deadline = time.monotonic() + timeout
        while True:
            totals = self.totals()
            if what(totals) or time.monotonic() > deadline:
                return totals
            time.sleep(0.1)

    def stop_all(self) -> None:
        for gen in self.totals().running:
            os.kill(gen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(is_running(g.pid) for g in self.totals().generations) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def loop(emulator: EmulatorServer, tmp_path: Path) -> Iterator[Loop]:
    found = Loop(emulator, tmp_path)
    try:
        yield found
    finally:
        found.stop_all()


def test_a_restart_moves_to_the_new_key_without_a_failed_call(loop: Loop) -> None:
    """Start, mint a second key, restart, revoke the first: 0 auth failures in all generations,
    and the new generation was serving before the old one stopped."""
    old_key = loop.mint()
    loop.write_key(old_key)
    first = loop.restart()  # nothing running yet: it just starts one
    assert first.returncode == 0, first.stderr
    old_pid = read_pid(loop.pidfile)
    assert old_pid is not None and is_running(old_pid)
    loop.wait_for(lambda t: t.accepted >= 5)

    new_key = loop.mint()
    loop.write_key(new_key)
    second = loop.restart()
    assert second.returncode == 0, second.stderr
    new_pid = read_pid(loop.pidfile)
    assert new_pid not in (None, old_pid)
    assert not is_running(old_pid)
    loop.revoke(old_key)
    totals = loop.wait_for(lambda t: t.generations[-1].accepted >= 5)

    assert [g.pid for g in totals.generations] == [old_pid, new_pid]
    old, new = totals.generations
    assert (old.prefix, old.fingerprint) == (old_key[:13], fingerprint(old_key))
    assert (new.prefix, new.fingerprint) == (new_key[:13], fingerprint(new_key))
    assert old.stopped_at is not None and new.first_accepted_at is not None
    assert new.first_accepted_at <= old.stopped_at, "a moment with no working consumer"
    assert [g.pid for g in totals.running] == [new_pid]
    assert totals.auth_failures == 0 and totals.other_failures == 0
    assert totals.accepted >= 10
    for path in loop.stats.glob("*.json"):
        text = path.read_text()
        assert old_key not in text and new_key not in text
    assert new_key[:13] in second.stdout and new_key not in second.stdout + second.stderr


def test_the_key_is_read_once_and_a_revoked_key_counts_401s(loop: Loop) -> None:
    """A new key in the file changes nothing until a restart: revoking the key the process
    read at start turns its calls into counted 401s."""
    old_key = loop.mint()
    loop.write_key(old_key)
    assert loop.restart().returncode == 0
    loop.write_key(loop.mint())
    loop.revoke(old_key)
    totals = loop.wait_for(lambda t: t.auth_failures >= 3)
    assert totals.auth_failures >= 3
    assert [g.prefix for g in totals.generations] == [old_key[:13]]


def test_a_restart_onto_a_revoked_key_fails_and_keeps_the_old_process(loop: Loop) -> None:
    """The new generation never gets an accepted call: the tool says so, exits 1, stops the
    new one and leaves the old one serving."""
    good = loop.mint()
    loop.write_key(good)
    assert loop.restart().returncode == 0
    old_pid = read_pid(loop.pidfile)
    bad = loop.mint()
    loop.revoke(bad)
    loop.write_key(bad)
    result = loop.restart("--ready-timeout", "1.5")
    assert result.returncode == 1
    assert "no accepted call within 1.5s" in result.stderr and "refused with 401" in result.stderr
    assert bad not in result.stderr
    assert read_pid(loop.pidfile) == old_pid and old_pid is not None and is_running(old_pid)
    totals = loop.totals()
    assert [g.pid for g in totals.running] == [old_pid]
    assert totals.generations[-1].auth_failures > 0


def test_serve_without_the_variable_says_so(loop: Loop) -> None:
    """A missing key is one clear line and exit 2."""
    loop.env_file.write_text("OTHER=1\n")
    result = loop.run("--env-file", str(loop.env_file), *loop.options()[2:], timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip() == f"readonce: ADJUDON_API_KEY is not set in {loop.env_file}"


def test_sigterm_ends_a_generation_cleanly_and_stats_sums_them(loop: Loop) -> None:
    """SIGTERM: the last counts are written and the pidfile removed; ``stats`` prints the sums."""
    loop.write_key(loop.mint())
    assert loop.restart().returncode == 0
    assert loop.restart().returncode == 0
    pid = read_pid(loop.pidfile)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    totals = loop.wait_for(lambda t: not t.running)
    assert not totals.running and not loop.pidfile.exists()
    printed = json.loads(loop.run("stats", "--stats", str(loop.stats)).stdout)
    assert printed == totals.to_dict()
    assert printed["generations"] == 2 and printed["auth_failures"] == 0
    assert printed["accepted"] == totals.accepted > 0


# --------------------------------------------------------------------------- the receiver


@pytest.fixture
def receiver(loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``readonce receive`` as its own process; yields its URL."""
    secret = f"whsec_{uuid.uuid4().hex}"
    monkeypatch.setenv("READONCE_HOOK_SECRET", secret)
    port_file, log = tmp_path / "port", tmp_path / "receiver.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, "receive", "--secret-env", "READONCE_HOOK_SECRET",
             "--port-file", str(port_file), *loop.options()],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_file.exists(), log.read_text()
    try:
        yield f"http://127.0.0.1:{port_file.read_text().strip()}/hooks/rotated"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_a_webhook_delivery_restarts_the_service_once(loop: Loop, receiver: str) -> None:
    """The real webhook consumer rolls through the receiver: one verified delivery, one restart;
    a second try of the same roll restarts nothing; a forged one is refused."""
    key = loop.mint()
    loop.write_key(key)
    assert loop.restart().returncode == 0
    first_pid = read_pid(loop.pidfile)
    spec = WebhookConsumer.model_validate(
        {"type": "webhook", "url": receiver, "secret": {"env": "READONCE_HOOK_SECRET"}, "timeout": 30}
    )
    consumer = spec.make_consumer(key="svc", base_dir=loop.stats)
    event = RollEvent("svc", f"att-{uuid.uuid4().hex[:8]}", "rotation", "key-1", key[:13], fingerprint(key))

    consumer.roll(event, stop=threading.Event())
    second_pid = read_pid(loop.pidfile)
    assert second_pid not in (None, first_pid)
    consumer.roll(event, stop=threading.Event())  # the same roll again (a retry after a crash)
    assert read_pid(loop.pidfile) == second_pid
    assert len(loop.totals().generations) == 2

    body = b'{"type":"rotator.rolled"}'
    now = int(time.time())
    forged = httpx.post(
        receiver,
        content=body,
        headers={"X-Rotator-Timestamp": str(now), "X-Rotator-Signature": sign("not-the-secret", now, body)},
    )
    assert forged.status_code == 401
    totals = loop.wait_for(lambda t: t.generations[-1].accepted >= 3)
    assert len(totals.generations) == 2 and totals.auth_failures == 0


def test_the_command_consumer_runs_the_restart(loop: Loop, tmp_path: Path) -> None:
    """As the loop runs it: the command consumer (its built environment, its process group)
    runs ``restart``; the new generation outlives the command, the old one is stopped."""
    loop.write_key(loop.mint())
    assert loop.restart().returncode == 0
    old_pid = read_pid(loop.pidfile)
    new_key = loop.mint()
    loop.write_key(new_key)
    spec = CommandConsumer.model_validate(
        {
            "type": "command",
            "argv": [sys.executable, "-m", MODULE, "restart", *loop.options()],
            "timeout": "30s",
        }
    )
    consumer = spec.make_consumer(key="svc", base_dir=tmp_path)
    event = RollEvent("svc", "att-1", "rotation", "key-2", new_key[:13], fingerprint(new_key))
    consumer.roll(event, stop=threading.Event())
    new_pid = read_pid(loop.pidfile)
    assert new_pid not in (None, old_pid) and old_pid is not None
    assert not is_running(old_pid)
    time.sleep(0.5)  # the command has returned: its process group is gone, the service is not
    totals = loop.wait_for(lambda t: t.generations[-1].accepted >= 3)
    assert [g.pid for g in totals.running] == [new_pid]
    assert totals.generations[-1].prefix == new_key[:13] and totals.auth_failures == 0


def test_an_interrupted_restart_stops_the_new_generation(loop: Loop) -> None:
    """SIGTERM to the restart tool while it waits: the new generation is stopped, the old one
    keeps the pidfile and keeps serving."""
    good = loop.mint()
    loop.write_key(good)
    assert loop.restart().returncode == 0
    old_pid = read_pid(loop.pidfile)
    bad = loop.mint()
    loop.revoke(bad)
    loop.write_key(bad)  # the new generation will never be ready
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULE, "restart", *loop.options(), "--ready-timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    loop.wait_for(lambda t: len(t.generations) == 2 and t.generations[-1].auth_failures > 0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "interrupted; the new process was stopped, the old one is left serving" in err
    totals = loop.wait_for(lambda t: len(t.running) == 1)
    assert [g.pid for g in totals.running] == [old_pid] and read_pid(loop.pidfile) == old_pid
    assert totals.generations[-1].stopped_at is not None
