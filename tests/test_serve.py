"""`rotator serve`: the daemon rotates on its own, reports over HTTP, reloads and stops cleanly."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.parser import text_string_to_metric_families

from rotator.engine.runner import Engine, KeyResult
from rotator.sandbox.emulator import EmulatorServer
from rotator.scheduler import TICK_JOB, Daemon
from rotator.spec import Settings, load_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import ADMIN_ENV, agent_keys, journal, read_dotenv_key, write_spec

FAST = Settings(retry_initial=0.01, probe_timeout=5)
FAST_ENV = {"ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}
BILLING = """\
  billing:
    issuer: emu
    kind: agent
    agent_id: billing
    targets:
      - {type: file, path: secrets/billing.env, format: dotenv, field: ADJUDON_API_KEY}
"""


def _until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Served:
    """A `rotator serve` subprocess, its log file and its HTTP address."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.log = cwd / "serve.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rotator.cli", "serve", "--port", "0", *args],
            cwd=cwd,
            env={**os.environ, **FAST_ENV, **env},
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )
        found = _until(
            lambda: (
                self.proc.poll() is None
                and re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.stderr())
            ),
            "the daemon to listen",
            timeout=15,
        )
        self.url = found.group(1)

    def stderr(self) -> str:
        return self.log.read_text()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log_file.close()


@pytest.fixture
def served() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        s.close()


def _metric(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_daemon_rotates_reports_and_stops_mid_drain(
    tmp_path: Path, emulator: EmulatorServer, admin: str, served: list[Served]
) -> None:
    """The daemon rotates a key past max_age, shows it in /metrics, and SIGTERM mid-drain exits 0."""
    path = write_spec(
        tmp_path, emulator, drain="10m", propagation="0s", timeout="1h", max_age="3s", targets=1
    )
    with Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST) as engine:
        assert engine.apply(["payments"])[0].outcome == "ok"
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    assert old is not None

    daemon = Served(tmp_path, {ADMIN_ENV: admin}, "--tick", "1", "--check-interval", "1")
    served.append(daemon)
    new = _until(
        lambda: (
            len(agent_keys(emulator, active=True)) == 2
            and (key := read_dotenv_key(tmp_path / "secrets/a.env")) != old
            and key
        ),
        "the daemon to rotate the key",
    )
    assert emulator.emulator.key_accepted(new)

    samples = _until(
        lambda: (
            (s := daemon.samples())
            and (_metric(s, "rotator_rotations_total", key="payments", result="waiting") or 0) >= 1
            and s
        ),
        "the rotation to show in /metrics",
    )
    assert _metric(samples, "rotator_key_phase", key="payments", phase="draining") == 1
    assert _metric(samples, "rotator_key_phase", key="payments", phase="current") == 0
    age = _metric(samples, "rotator_key_age_seconds", key="payments")
    assert age is not None and 0 <= age < 30
    assert (_metric(samples, "rotator_pass_duration_seconds_count") or 0) >= 1
    assert _metric(samples, "rotator_phase_duration_seconds", key="payments", phase="staged") is not None
    health = daemon.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["keys"] == 1 and body["last_tick"]

    # a slow vendor keeps a drain pass (and its lease) in hand when SIGTERM lands
    emulator.emulator.faults.latency = 0.5
    lock = tmp_path / "state/locks/payments.lock"
    _until(lambda: lock.exists() and lock.read_text().strip(), "a pass to hold the lease")
    stopped_at = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 5
    emulator.emulator.faults.latency = 0.0
    assert lock.read_text() == ""  # released by the pass itself, not by the process dying
    log = daemon.stderr()
    assert "stopping: finishing the step in hand" in log and "Traceback" not in log
    assert old not in log and new not in log

    after = run_cli("apply", cwd=tmp_path, env={ADMIN_ENV: admin, **FAST_ENV})
    assert after.returncode == 0, after.stderr
    assert "held by" not in after.stdout + after.stderr
    assert "payments: waiting (draining)" in after.stdout
    assert emulator.emulator.key_accepted(old)  # stopped mid-drain: the old key still serves


def test_sigterm_during_a_mint_stores_the_key_first(
    tmp_path: Path, emulator: EmulatorServer, admin: str, served: list[Served]
) -> None:
    """SIGTERM while the vendor is answering a mint: the key is stored before the daemon exits 0."""
    path = write_spec(
        tmp_path, emulator, drain="10m", propagation="0s", timeout="1h", max_age="2s", targets=1
    )
    with Engine(load_rotation_file(path), base_dir=tmp_path, settings=FAST) as engine:
        assert engine.apply(["payments"])[0].outcome == "ok"
    old = read_dotenv_key(tmp_path / "secrets/a.env")
    assert old is not None
    emulator.emulator.faults.path_delays[r"^POST /api/v1/api-keys$"] = 1.5
    daemon = Served(tmp_path, {ADMIN_ENV: admin}, "--tick", "1", "--check-interval", "1")
    served.append(daemon)
    _until(lambda: len(agent_keys(emulator, active=True)) == 2, "the mint to reach the vendor")
    daemon.signal(signal.SIGTERM)  # the vendor holds its answer for 1.5 s more
    assert daemon.proc.wait(timeout=10) == 0

    events = [(e["event"], e["attempt"]) for e in journal(tmp_path)]
    minted = [a for ev, a in events if ev == "minted"][-1]
    assert ("staged", minted) in events  # the step in hand ended with the key stored
    assert ("promoted", minted) not in events  # and no step after it was taken
    assert read_dotenv_key(tmp_path / "secrets/a.env") == old
    emulator.emulator.faults.path_delays.clear()
    after = run_cli("apply", cwd=tmp_path, env={ADMIN_ENV: admin, **FAST_ENV})
    assert after.returncode == 0, after.stderr
    assert "payments: waiting (draining)" in after.stdout
    assert read_dotenv_key(tmp_path / "secrets/a.env") != old
    assert len(agent_keys(emulator, active=True)) == 2  # no orphan was minted


def test_sighup_reloads_and_keeps_running_on_a_broken_file(
    tmp_path: Path, emulator: EmulatorServer, admin: str, served: list[Served]
) -> None:
    """SIGHUP picks up a new key; a broken file is one error line and the daemon keeps going."""
    path = write_spec(tmp_path, emulator, targets=1)
    daemon = Served(tmp_path, {ADMIN_ENV: admin}, "--tick", "1")
    served.append(daemon)
    _until(lambda: read_dotenv_key(tmp_path / "secrets/a.env"), "the first key to be minted")
    assert daemon.get("/healthz").json()["keys"] == 1

    path.write_text(path.read_text() + BILLING)
    daemon.signal(signal.SIGHUP)
    _until(lambda: daemon.get("/healthz").json()["keys"] == 2, "the reload to add a key")
    _until(lambda: read_dotenv_key(tmp_path / "secrets/billing.env"), "the new key to be minted")

    path.write_text(path.read_text().replace("drain: 1s", "drain: soon"))
    daemon.signal(signal.SIGHUP)
    _until(lambda: "reload failed" in daemon.stderr(), "the reload error")
    errors = [line for line in daemon.stderr().splitlines() if "reload failed" in line]
    assert len(errors) == 1 and "defaults.verify.drain" in errors[0] and "ERROR" in errors[0]
    assert daemon.proc.poll() is None
    health = daemon.get("/healthz")
    assert health.status_code == 200 and health.json()["keys"] == 2

    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0


def test_jobs_cron_interval_and_tick(tmp_path: Path, emulator: EmulatorServer) -> None:
    """A scheduled key gets a UTC cron job, the other an interval job, all bounded and jittered."""
    path = write_spec(tmp_path, emulator, extra='    schedule: "0 3 * * MON"\n' + BILLING)
    daemon = Daemon(path, settings=FAST, tick=5, check_interval=120)
    daemon.start(paused=True)
    try:
        jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
        assert set(jobs) == {TICK_JOB, "key:payments", "key:billing"}
        cron = jobs["key:payments"].trigger
        assert isinstance(cron, CronTrigger) and str(cron.timezone) == "UTC"
        assert {f.name: str(f) for f in cron.fields}["day_of_week"] == "mon"
        assert {f.name: str(f) for f in cron.fields}["hour"] == "3"
        interval = jobs["key:billing"].trigger
        assert isinstance(interval, IntervalTrigger) and interval.interval.total_seconds() == 120
        assert jobs[TICK_JOB].trigger.interval.total_seconds() == 5
        for job in jobs.values():
            assert (job.max_instances, job.coalesce) == (1, True)
            assert job.misfire_grace_time >= 1 and job.trigger.jitter
        assert daemon.health()[0] == 200

        path.write_text(path.read_text().replace("0 3 * * MON", "30 4 * * *").replace(BILLING, ""))
        assert daemon.reload()
        jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
        assert set(jobs) == {TICK_JOB, "key:payments"}
        assert {f.name: str(f) for f in jobs["key:payments"].trigger.fields}["minute"] == "30"
    finally:
        daemon.stop()
    status, body = daemon.health()
    assert status == 503 and body["status"] == "stopped"


def test_broken_reload_keeps_jobs_and_logs_one_line(
    tmp_path: Path, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid file on reload: one error record naming the field, the old keys kept."""
    path = write_spec(tmp_path, emulator, extra=BILLING)
    daemon = Daemon(path, settings=FAST)
    daemon.start(paused=True)
    try:
        path.write_text(path.read_text().replace("kind: agent\n    agent_id: billing", "kind: robot"))
        with caplog.at_level(logging.INFO, logger="rotator.scheduler"):
            assert not daemon.reload()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "\n" not in errors[0].getMessage()
        assert "keys.billing.kind" in errors[0].getMessage()
        assert set(daemon.spec.keys) == {"payments", "billing"}
        assert len(daemon.scheduler.get_jobs()) == 3
    finally:
        daemon.stop()


def test_tick_passes_only_keys_in_flight(tmp_path: Path, emulator: EmulatorServer) -> None:
    """Unseen, waiting, staged and just-failed keys get ticks; current and held keys do not."""
    extra = "".join(BILLING.replace("billing", name) for name in ("a1", "a2", "a3", "a4", "a5"))
    path = write_spec(tmp_path, emulator, extra=extra)
    daemon = Daemon(path, settings=FAST, tick=60, check_interval=3600)
    try:
        daemon._record(
            [
                KeyResult("payments", "ok", "current", "at rest"),
                KeyResult("a1", "waiting", "draining", "draining"),
                KeyResult("a2", "held", "held", "needs a person"),
                KeyResult("a3", "ok", "staged", "stopped"),
                KeyResult("a4", "failed", "failed", "vendor down"),
            ]
        )
        next_tick = time.monotonic() + 60
        assert daemon.in_flight(next_tick) == ["a1", "a3", "a4", "a5"]
        daemon._record([KeyResult("a4", "failed", "failed", "vendor down")])
        assert "a4" not in daemon.in_flight(next_tick)  # failed twice: skips one tick
        assert "a4" in daemon.in_flight(next_tick + 60)
        daemon._record([KeyResult("a1", "busy", "unknown", "skipped: held by another runner")])
        assert "a1" in daemon.in_flight(next_tick)  # a busy skip does not forget the drain
    finally:
        daemon.stop()


def test_serve_rejects_a_bad_tick(tmp_path: Path, emulator: EmulatorServer) -> None:
    """`--tick soon` is one clear error line and exit 2, before anything starts."""
    write_spec(tmp_path, emulator)
    proc = run_cli("serve", "--tick", "soon", "--port", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--tick" in proc.stderr and "Traceback" not in proc.stderr
    assert json.dumps(proc.stderr).count("\\n") == 1
