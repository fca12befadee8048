"""`--wait` at a terminal: drains of any length, its own timeout, transient errors, Ctrl-C and
the lease another runner holds (`--lock-timeout`, exit 4)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rotator.abc import parse_time
from rotator.engine.lease import FileLease
from rotator.engine.model import Decision
from rotator.engine.runner import MAX_STEPS, WAIT_POLL, Engine
from rotator.sandbox.emulator import Emulator, EmulatorServer
from rotator.scheduler import Daemon
from rotator.spec import RotationFile, Settings, load_rotation_file
from tests.chaos.proxy import FaultProxy
from tests.conftest import run_cli
from tests.e2e_helpers import (
    ADMIN_ENV,
    FakeClock,
    agent_keys,
    journal,
    read_dotenv_key,
    read_json_key,
    write_spec,
)
from tests.harnesses.vault import OpenBaoServer

FAST = Settings(retry_initial=0.01, probe_timeout=5)
DEFAULT_VERIFY = {"drain": "15m", "propagation": "2m", "timeout": "24h"}
"""The README's default `verify` block."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_vendor(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """The emulator on the same fake clock as the engine, with a workspace admin key."""
    with EmulatorServer(Emulator(clock=clock)) as server:
        monkeypatch.setenv(ADMIN_ENV, server.emulator.bootstrap_workspace_key())
        yield server


class LateConsumer:
    """A consumer that keeps calling with the old key for ``lag`` after promotion, then
    moves to the new one; it calls once per engine sleep (the fake clock's tick)."""

    def __init__(self, server: EmulatorServer, clock: FakeClock, lag: timedelta) -> None:
        self.clock, self.lag = clock, lag
        self.http = httpx.Client(base_url=server.url, timeout=5)
        self.old: str | None = None
        self.promoted_at: datetime | None = None
        self.waits: list[Decision] = []
        self.old_calls = 0

    def progress(self, key: str, decision: Decision) -> None:
        if decision.action == "wait":
            self.waits.append(decision)
            self.promoted_at = self.promoted_at or decision.promoted_at

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)
        if self.old and self.promoted_at and self.clock.now < self.promoted_at + self.lag:
            answer = self.http.post(
                "/api/v1/traces", json={"event": "t"}, headers={"Authorization": f"Bearer {self.old}"}
            )
            assert answer.status_code == 201
            self.old_calls += 1


def _engine(path: Path, clock: FakeClock, sleep: object = None) -> Engine:
    return Engine(
        load_rotation_file(path),
        base_dir=path.parent,
        settings=FAST,
        clock=clock,
        sleep=sleep if callable(sleep) else clock.sleep,
    )


def _key(server: EmulatorServer, key_id: str) -> dict[str, object]:
    return next(k for k in agent_keys(server) if k["id"] == key_id)


def test_wait_follows_default_15m_drain_on_fake_clock(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer
) -> None:
    """`--wait` follows the default 15 m drain to the revoke: its polls are not steps, and the
    old key, used until 90 s after promotion, is revoked 2 m + 15 m after it, not before."""
    path = write_spec(tmp_path, fake_vendor, **DEFAULT_VERIFY)
    consumer = LateConsumer(fake_vendor, clock, lag=timedelta(seconds=90))
    with _engine(path, clock, consumer.sleep) as engine:
        assert engine.apply(["payments"])[0].steps == ["mint", "stage", "promote"]
        consumer.old = read_dotenv_key(tmp_path / "secrets/a.env")
        (old_id,) = (k["id"] for k in agent_keys(fake_vendor, active=True))
        result = engine.apply(["payments"], force=True, wait=True, progress=consumer.progress)[0]

    assert result.outcome == "ok", result.message
    assert result.steps == ["mint", "stage", "promote", "revoke"]
    assert consumer.promoted_at is not None and consumer.old_calls > 10
    old = _key(fake_vendor, old_id)
    last_used = parse_time(str(old["last_used_at"]))
    revoked_at = parse_time(str(old["revoked_at"]))
    assert last_used >= consumer.promoted_at + timedelta(seconds=85)
    ready = consumer.promoted_at + timedelta(minutes=17)  # propagation 2m + drain 15m
    assert ready <= revoked_at <= ready + timedelta(seconds=WAIT_POLL + 1)
    # the live countdown: every poll reports the drain's end, and there were far more polls
    # than the step cap
    assert len(consumer.waits) > 4 * MAX_STEPS
    # (the drain is judged in the vendor's clock, learnt from its one-second `Date` header, so
    # the local deadline may trail the vendor's by up to a second: later, never earlier)
    assert all(d.until is not None and d.until <= ready + timedelta(seconds=1) for d in consumer.waits)
    assert {d.phase for d in consumer.waits} == {"promoted", "draining"}
    assert not [e for e in journal(tmp_path) if e["event"] in ("failed", "held")]


def test_wait_timeout_exits_waiting_and_the_rotation_goes_on(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer
) -> None:
    """At its --wait-timeout the pass ends `waiting`, says how to resume, records no failure;
    a later pass finishes the drain."""
    path = write_spec(tmp_path, fake_vendor, **DEFAULT_VERIFY)
    with _engine(path, clock) as engine:
        engine.apply(["payments"])
        (old_id,) = (k["id"] for k in agent_keys(fake_vendor, active=True))
        result = engine.apply(["payments"], force=True, wait=True, wait_timeout=timedelta(minutes=5))[0]
        assert (result.outcome, result.phase) == ("waiting", "draining"), result.message
        assert result.steps == ["mint", "stage", "promote"]
        assert "stopped waiting after 5m (--wait-timeout); the rotation goes on" in result.message
        assert "rotator apply payments --wait" in result.message
        assert _key(fake_vendor, old_id)["status"] == "active"
        assert not [e for e in journal(tmp_path) if e["event"] in ("failed", "held")]

        clock.sleep(13 * 60)
        resumed = engine.apply(["payments"])[0]
    assert (resumed.outcome, resumed.steps) == ("ok", ["revoke"]), resumed.message
    assert _key(fake_vendor, old_id)["status"] != "active"


def test_default_wait_timeout_is_verify_timeout_plus_margin(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer
) -> None:
    """Unless told, --wait follows a key for its verify.timeout plus ten minutes."""
    path = write_spec(tmp_path, fake_vendor, **DEFAULT_VERIFY)
    with _engine(path, clock) as engine:
        assert engine.default_wait_timeout("payments") == timedelta(hours=24, minutes=10)


def test_wait_retries_transient_vendor_errors(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A burst of 503s and dropped connections in the middle of the drain, longer than the
    client's own retries: --wait backs off and carries on to the revoke; the back-off log
    lines name no raw key."""
    caplog.set_level(logging.DEBUG)
    path = write_spec(tmp_path, fake_vendor, **DEFAULT_VERIFY)
    burst = [503] * 9 + [0] * 3
    faults = fake_vendor.emulator.faults
    injected: list[Decision] = []

    def progress(key: str, decision: Decision) -> None:
        if decision.action == "wait" and decision.phase == "draining" and not injected:
            injected.append(decision)
            faults.fail_next = list(burst)

    settings = Settings(retry_initial=0.01, retry_attempts=2, probe_timeout=5)
    spec = load_rotation_file(path)
    with Engine(spec, base_dir=tmp_path, settings=settings, clock=clock, sleep=clock.sleep) as engine:
        engine.apply(["payments"])
        old = read_dotenv_key(tmp_path / "secrets/a.env")
        (old_id,) = (k["id"] for k in agent_keys(fake_vendor, active=True))
        result = engine.apply(["payments"], force=True, wait=True, progress=progress)[0]

    assert result.outcome == "ok", result.message
    assert result.steps == ["mint", "stage", "promote", "revoke"]
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 2 and all(r.startswith("payments: ") for r in retries)
    new = read_dotenv_key(tmp_path / "secrets/a.env")
    for canary in (os.environ[ADMIN_ENV], old, new):
        assert canary and canary not in caplog.text and canary not in result.message
    served = [status for _, _, status in fake_vendor.emulator.request_log()]
    assert served.count(503) == 9 and served.count(0) == 3 and not faults.fail_next
    assert _key(fake_vendor, old_id)["status"] != "active"
    assert not [e for e in journal(tmp_path) if e["event"] == "failed"]


def test_wait_gives_up_on_errors_that_are_not_transient(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer
) -> None:
    """A 401 (the admin key revoked) is not retried: --wait fails at once, as before."""
    path = write_spec(tmp_path, fake_vendor, **DEFAULT_VERIFY)
    faults = fake_vendor.emulator.faults

    def progress(key: str, decision: Decision) -> None:
        if decision.action == "wait":
            faults.fail_next = [401]

    with _engine(path, clock) as engine:
        engine.apply(["payments"])
        result = engine.apply(["payments"], force=True, wait=True, progress=progress)[0]
    assert result.outcome == "failed"
    assert clock.slept < 60  # failed on the first poll after the 401, no back-off


def test_wait_retries_a_dropped_store_connection(
    tmp_path: Path,
    clock: FakeClock,
    fake_vendor: EmulatorServer,
    openbao_server: OpenBaoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection to a Vault target drops during the drain (every connection reset for a
    few polls): --wait backs off, and once Vault is back it carries on to the revoke."""
    monkeypatch.setenv("VAULT_TOKEN", openbao_server.root_token)
    upstream = openbao_server.url.removeprefix("http://").split(":")
    with FaultProxy((upstream[0], int(upstream[1]))) as proxy:
        vault = f'{{type: vault, url: "{proxy.url}", mount: secret, path: "wait/{tmp_path.name}", field: k}}'
        path = write_spec(tmp_path, fake_vendor, targets=1, **DEFAULT_VERIFY)
        path.write_text(path.read_text().replace("    targets:\n", f"    targets:\n      - {vault}\n"))
        outage: list[float] = []

        def progress(key: str, decision: Decision) -> None:
            if decision.action == "wait" and decision.phase == "draining" and not outage:
                proxy.drop_rate, proxy.reset_rate = 1.0, 2.0
                proxy.cut_all()
                outage.append(clock.slept)

        def sleep(seconds: float) -> None:
            clock.sleep(seconds)
            if outage and clock.slept - outage[0] > 60:  # Vault is back after a minute
                proxy.quiet()

        with _engine(path, clock, sleep) as engine:
            engine.apply(["payments"])
            result = engine.apply(["payments"], force=True, wait=True, progress=progress)[0]
        assert result.outcome == "ok", result.message
        assert result.steps == ["mint", "stage", "promote", "revoke"]
        assert proxy.stats["dropped"] + proxy.stats["reset-request"] + proxy.stats["reset-answer"] >= 2
    assert not [e for e in journal(tmp_path) if e["event"] == "failed"]


class FakeClockDaemon(Daemon):
    """The `serve` daemon with its engines on a fake clock; the test calls its jobs itself."""

    def __init__(self, file: Path, clock: FakeClock, **kwargs: Any) -> None:
        self.clock = clock
        super().__init__(file, **kwargs)

    def _new_engine(self, spec: RotationFile) -> Engine:
        return Engine(
            spec,
            base_dir=self.file.resolve().parent,
            settings=self.settings,
            clock=self.clock,
            sleep=self.clock.sleep,
        )


def test_serve_follows_default_15m_drain_on_fake_clock(
    tmp_path: Path, clock: FakeClock, fake_vendor: EmulatorServer
) -> None:
    """`serve`'s jobs through a due rotation with the default verify block: the tick passes
    the draining key every 30 s, and the old key (used until 90 s after promotion) is revoked
    at the first tick after promotion + 2 m + 15 m, and not at any tick before."""
    path = write_spec(tmp_path, fake_vendor, max_age="1d", **DEFAULT_VERIFY)
    daemon = FakeClockDaemon(path, clock, settings=FAST, tick=30, check_interval=3600)
    try:
        daemon._tick()  # the first tick passes every key: the first key is minted
        assert daemon._seen["payments"].result.outcome == "ok"
        old = read_dotenv_key(tmp_path / "secrets/a.env")
        (old_id,) = (k["id"] for k in agent_keys(fake_vendor, active=True))
        assert daemon.in_flight() == []

        clock.sleep(86400 + 60)
        daemon._check("payments")  # the key's own job: due by max_age
        seen = daemon._seen["payments"].result
        assert (seen.outcome, seen.steps) == ("waiting", ["mint", "stage", "promote"]), seen.message
        last_promotion = [e for e in journal(tmp_path) if e["event"] == "promoted"][-1]
        promoted_at = parse_time(str(last_promotion["details"]["promoted_at"]))
        ready = promoted_at + timedelta(minutes=17)

        with httpx.Client(base_url=fake_vendor.url, timeout=5) as consumer:
            ticks = 0
            while daemon._seen["payments"].result.phase != "current":
                assert ticks < 100, "no revoke after 50 minutes of ticks"
                clock.sleep(30)
                if clock.now < promoted_at + timedelta(seconds=90):
                    consumer.post("/api/v1/traces", json={"e": 1}, headers={"Authorization": f"Bearer {old}"})
                before = clock.now
                assert daemon.in_flight() == ["payments"]
                daemon._tick()
                ticks += 1
                status = _key(fake_vendor, old_id)["status"]
                if before < ready:
                    assert status == "active", f"revoked at {before}, before the drain ended at {ready}"
        revoked_at = parse_time(str(_key(fake_vendor, old_id)["revoked_at"]))
    finally:
        daemon.stop()
    assert daemon._seen["payments"].result.steps == ["revoke"]
    assert ready <= revoked_at <= ready + timedelta(seconds=31)
    assert ticks >= 34  # 17 minutes of 30 s ticks
    assert not [e for e in journal(tmp_path) if e["event"] in ("failed", "held")]


# ---------------------------------------------------------------------- the real command line

FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}


@pytest.fixture
def admin(emulator: EmulatorServer) -> dict[str, str]:
    """The environment a `rotator` subprocess needs to manage the emulator's keys."""
    return {ADMIN_ENV: emulator.emulator.bootstrap_workspace_key(), **FAST_ENV}


def _events(tmp: Path, name: str) -> list[dict[str, object]]:
    return [e for e in journal(tmp) if e["event"] == name]


def _no_raw_key(text: str, env: dict[str, str], tmp: Path) -> None:
    """Neither the admin key nor any key a target holds appears in ``text``."""
    held = [read_dotenv_key(tmp / "secrets/a.env"), read_json_key(tmp / "secrets/b.json")]
    canaries = [env[ADMIN_ENV], *[k for k in held if k]]
    assert len(canaries) >= 2
    for canary in canaries:
        assert canary not in text


def _until(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_rotate_wait_follows_a_40s_drain(
    tmp_path: Path, emulator: EmulatorServer, admin: dict[str, str]
) -> None:
    """`rotate --wait` through a 40 s drain: it waits (no step cap), revokes after the drain,
    exits 0 and writes no failure."""
    write_spec(tmp_path, emulator, drain="40s", propagation="1s", timeout="10m")
    assert run_cli("apply", cwd=tmp_path, env=admin).returncode == 0
    proc = run_cli("rotate", "payments", "--wait", cwd=tmp_path, env=admin, timeout=150)
    assert proc.returncode == 0, proc.stderr
    assert "payments: ok (current)" in proc.stdout
    assert "no rest after" not in proc.stdout + proc.stderr
    promoted = parse_time(str(_events(tmp_path, "promoted")[-1]["details"]["promoted_at"]))  # type: ignore[index]
    revoked = parse_time(str(_events(tmp_path, "revoked")[-1]["ts"]))
    assert revoked - promoted >= timedelta(seconds=41)  # propagation 1s + drain 40s
    assert not _events(tmp_path, "failed")


def test_rotate_wait_timeout_exits_waiting(
    tmp_path: Path, emulator: EmulatorServer, admin: dict[str, str]
) -> None:
    """`--wait-timeout 2s` on a 30 s drain: exit 0 as waiting, a line on how to resume, no
    failure recorded and the old key still active."""
    write_spec(tmp_path, emulator, drain="30s", propagation="1s", timeout="10m")
    assert run_cli("apply", cwd=tmp_path, env=admin).returncode == 0
    started = time.monotonic()
    proc = run_cli("rotate", "payments", "--wait", "--wait-timeout", "2s", cwd=tmp_path, env=admin)
    assert time.monotonic() - started < 15
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("payments:"))
    assert line.startswith("payments: waiting (")
    assert "stopped waiting after 2s (--wait-timeout); the rotation goes on" in line
    assert "resume with `rotator apply payments --wait`" in line
    assert len(agent_keys(emulator, active=True)) == 2
    _no_raw_key(proc.stdout + proc.stderr, admin, tmp_path)
    assert not _events(tmp_path, "failed") and not _events(tmp_path, "revoked")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_during_wait_stops_within_a_second(
    tmp_path: Path, emulator: EmulatorServer, admin: dict[str, str], sig: signal.Signals
) -> None:
    """Drain 8 s, the signal 3 s into `rotate --wait`: no revoke, the lease is released and the
    process is gone within about a second, exit 128 + the signal."""
    write_spec(tmp_path, emulator, drain="8s", propagation="1s", timeout="10m")
    assert run_cli("apply", cwd=tmp_path, env=admin).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "rotator.cli", "rotate", "payments", "--wait"],
        cwd=tmp_path,
        env={**os.environ, **admin},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        _until(lambda: len(_events(tmp_path, "promoted")) == 2, "the promotion")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        assert proc.poll() is None
        proc.send_signal(sig)
        signalled = time.monotonic()
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 1.5, f"exited {took:.2f}s after {sig.name}"
    assert proc.returncode == 128 + sig, err
    assert f"rotator: {sig.name}: stopped after the step in hand and released the lease" in err
    assert "payments: waiting (" in out and "stopped before the next step" in out
    assert "Traceback" not in err
    _no_raw_key(out + err, admin, tmp_path)
    assert not _events(tmp_path, "revoked") and not _events(tmp_path, "failed")
    with FileLease(tmp_path / "state").acquire("payments"):  # released: another runner can take it
        pass
    time.sleep(6)  # past the drain the worker would have waited for: still nothing revoked
    assert not _events(tmp_path, "revoked")
    assert len(agent_keys(emulator, active=True)) == 2


def test_rotate_exits_4_when_lease_is_held(
    tmp_path: Path, emulator: EmulatorServer, admin: dict[str, str]
) -> None:
    """Another runner holds the key's lease: `rotate` and `emergency` exit 4 and do nothing;
    `apply` reports the key busy and exits 0."""
    write_spec(tmp_path, emulator)
    assert run_cli("apply", cwd=tmp_path, env=admin).returncode == 0
    before = len(journal(tmp_path))
    with FileLease(tmp_path / "state", owner="ci@runner pid 4242").acquire("payments"):
        rotate = run_cli("rotate", "payments", cwd=tmp_path, env=admin)
        emergency = run_cli("emergency", "payments", "--reason", "leak", cwd=tmp_path, env=admin)
        apply = run_cli("apply", "payments", cwd=tmp_path, env=admin)
        started = time.monotonic()
        waited = run_cli("rotate", "payments", "--lock-timeout", "2s", cwd=tmp_path, env=admin)
        waited_for = time.monotonic() - started
    assert waited.returncode == 4 and waited_for >= 2.0, waited.stderr
    assert rotate.returncode == 4, rotate.stderr
    assert "payments: busy" in rotate.stdout and "ci@runner pid 4242" in rotate.stdout
    assert rotate.stderr.strip().splitlines() == [
        "rotator: the lease of payments is held by another runner; nothing was done "
        "(wait for it with --lock-timeout DURATION)"
    ]
    assert emergency.returncode == 4, emergency.stderr
    assert emergency.stderr.startswith("rotator: error: key 'payments' is being worked on by ci@runner")
    assert apply.returncode == 0 and "payments: busy" in apply.stdout
    for proc in (rotate, emergency, apply, waited):
        _no_raw_key(proc.stdout + proc.stderr, admin, tmp_path)
    assert len(journal(tmp_path)) == before  # nothing happened
    assert len(agent_keys(emulator, active=True)) == 1


def test_lock_timeout_waits_for_the_lease(
    tmp_path: Path, emulator: EmulatorServer, admin: dict[str, str]
) -> None:
    """With --lock-timeout the rotation waits, polling, for a lease released 1.5 s later."""
    write_spec(tmp_path, emulator)
    assert run_cli("apply", cwd=tmp_path, env=admin).returncode == 0
    lease = FileLease(tmp_path / "state", owner="ci@runner pid 4242")
    held = threading.Event()

    def hold() -> None:
        with lease.acquire("payments"):
            held.set()
            time.sleep(1.5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        proc = run_cli("rotate", "payments", "--lock-timeout", "20s", cwd=tmp_path, env=admin)
    finally:
        holder.join()
    assert proc.returncode == 0, proc.stderr
    assert "payments: waiting (promoted)" in proc.stdout
    assert len(_events(tmp_path, "minted")) == 2


@pytest.mark.parametrize(
    ("option", "value"),
    [("--wait-timeout", "5x"), ("--lock-timeout", "-1s"), ("--lock-timeout", "9" * 15 + "d")],
)
def test_bad_durations_are_refused_before_anything_happens(
    tmp_path: Path, emulator: EmulatorServer, admin: dict[str, str], option: str, value: str
) -> None:
    """A bad --wait-timeout or --lock-timeout: exit 2, an error naming the option and the
    value, no traceback, nothing minted or journaled."""
    write_spec(tmp_path, emulator)
    proc = run_cli("rotate", "payments", "--wait", option, value, cwd=tmp_path, env=admin)
    assert proc.returncode == 2
    assert f"Invalid value for '{option}': '{value}'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert journal(tmp_path) == [] and agent_keys(emulator) == []
