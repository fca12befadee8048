"""``rotator serve``: an APScheduler daemon that runs reconcile passes, with ``/metrics``
and ``/healthz`` over HTTP.

Jobs, each with ``max_instances=1``, ``coalesce=True``, a misfire grace time and jitter:

- one per key: its cron ``schedule`` (UTC) if it has one, else every ``check_interval``;
  the pass decides from the key's age whether it is due;
- the tick, every ``tick`` from start: a pass for every key in flight (staged, draining,
  failed a moment ago, or not seen yet), so a drain ends soon after it may.

No job waits through a drain: passes end on a wait and the tick picks the key up again.
SIGHUP reloads the rotation file (a broken one is logged and the old one kept); SIGTERM
and SIGINT let the step in hand finish, then stop.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from rotator.engine.runner import Engine, KeyResult
from rotator.errors import ConfigError, RotatorError
from rotator.logs import redact
from rotator.metrics import Metrics
from rotator.notify import notify
from rotator.shard import Shard
from rotator.spec import RotationFile, Settings, cron_trigger, load_rotation_file, parse_duration

log = logging.getLogger("rotator.scheduler")

TICK_JOB = "tick"
CRON_JITTER = 30.0
"""Seconds a scheduled pass may be delayed, so many daemons do not hit a vendor at once."""


def seconds(text: str, what: str) -> float:
    """``30``, ``1.5``, ``30s``, ``1h`` -> seconds; anything else is a ConfigError naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        try:
            value = parse_duration(text).total_seconds()
        except ValueError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    if value <= 0:
        raise ConfigError(f"{what}: must be more than 0 seconds")
    return value


@dataclass
class _Seen:
    result: KeyResult
    at: float
    failures: int = 0


class Daemon:
    """The scheduler, the current engine and what the last pass of each key found."""

    def __init__(
        self,
        file: Path,
        *,
        settings: Settings | None = None,
        tick: float = 30.0,
        check_interval: float = 3600.0,
        metrics: Metrics | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.file = file
        self.shard = shard
        """Only the keys of this shard are scheduled and passed (``None``: every key)."""
        self.settings = settings or Settings()
        self.tick = tick
        self.check_interval = check_interval
        self.metrics = metrics or Metrics()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.last_tick: datetime | None = None
        self._lock = threading.Lock()
        self._users: dict[Engine, int] = {}
        self._seen: dict[str, _Seen] = {}
        self._schedules: dict[str, str | None] = {}
        self._engine = self._new_engine(load_rotation_file(file))
        self.loaded_at = datetime.now(UTC)
        """When the rotation file now running was loaded."""
        self.config_error: str | None = None
        """Why the last reload was refused, until a reload succeeds."""

    @property
    def spec(self) -> RotationFile:
        return self._engine.spec

    def _new_engine(self, spec: RotationFile) -> Engine:
        return Engine(spec, base_dir=self.file.resolve().parent, settings=self.settings)

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, paused: bool = False) -> None:
        """Schedule the jobs and start the scheduler (``paused``: no job runs yet)."""
        self._schedule_keys()
        self.scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=self.tick, jitter=self.tick / 10),
            id=TICK_JOB,
            next_run_time=datetime.now(UTC),  # the first tick passes every key: none seen yet
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(self.tick * 2)),
        )
        self.scheduler.start(paused=paused)

    def reload(self) -> bool:
        """Read the rotation file again; keep the old one if the new one is invalid."""
        problem: str | None = None
        try:
            spec = load_rotation_file(self.file)
        except RotatorError as exc:
            problem = " ".join(line.strip() for line in str(exc).splitlines())
        if problem is not None:  # one line, no traceback: the message names file, line and field
            log.error("reload failed, still running the previous rotation file: %s", problem)
            self.config_error = redact(problem)  # /healthz is not a log: mask keys here too
            self.metrics.reload_failures.inc()
            return False
        engine = self._new_engine(spec)
        self.loaded_at, self.config_error = datetime.now(UTC), None
        with self._lock:
            old, self._engine = self._engine, engine
            idle = not self._users.get(old)
            for key in set(self._seen) - set(spec.keys):
                del self._seen[key]
        if idle:
            old.close()
        for key in set(old.spec.keys) - set(spec.keys):
            self.metrics.forget(key)
        self._schedule_keys()
        log.info("reloaded %s: %d keys", self.file, len(spec.keys))
        return True

    def stop(self) -> None:
        """Let the step in hand finish, end every pass, stop the scheduler, close the engines."""
        with self._lock:
            engines = {self._engine, *self._users}
        for engine in engines:
            engine.stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        for engine in engines:
            engine.close()

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, body)`` of ``/healthz``: 503 unless the scheduler runs.

        A refused reload makes ``config`` ``stale`` (with the error and when the running
        file was loaded) but stays 200: a bad edit must not get the pod restarted."""
        running = self.scheduler.running and not self._engine.stopping.is_set()
        body: dict[str, Any] = {
            "status": "ok" if running else "stopped",
            "keys": len(self.spec.keys),
            "last_tick": self.last_tick.isoformat() if self.last_tick else None,
            "config": "stale" if self.config_error else "ok",
            "config_loaded_at": self.loaded_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.config_error:
            body["config_error"] = self.config_error
        return (200 if running else 503), body

    # ------------------------------------------------------------------ jobs

    def owned_keys(self) -> list[str]:
        """The keys this daemon passes: every key of the file, or its shard's."""
        keys = list(self.spec.keys)
        return keys if self.shard is None else self.shard.select(keys)

    def _schedule_keys(self) -> None:
        keys = {k: self.spec.keys[k] for k in self.owned_keys()}
        for key in set(self._schedules) - set(keys):
            self.scheduler.remove_job(f"key:{key}")
            del self._schedules[key]
        for key, spec in keys.items():
            if key in self._schedules and self._schedules[key] == spec.schedule:
                continue
            if spec.schedule:
                trigger: CronTrigger | IntervalTrigger = cron_trigger(spec.schedule)
                trigger.jitter = CRON_JITTER
                grace = 3600
            else:
                jitter = min(self.check_interval / 10, 60.0)
                trigger = IntervalTrigger(seconds=self.check_interval, jitter=jitter)
                grace = max(1, int(self.check_interval))
            self.scheduler.add_job(
                self._check,
                trigger,
                args=[key],
                id=f"key:{key}",
                name=f"check {key}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=grace,
                replace_existing=True,
            )
            self._schedules[key] = spec.schedule

    @contextmanager
    def _use(self) -> Iterator[Engine]:
        """The current engine, kept open until this pass ends even if a reload replaces it."""
        with self._lock:
            engine = self._engine
            self._users[engine] = self._users.get(engine, 0) + 1
        try:
            yield engine
        finally:
            with self._lock:
                self._users[engine] -= 1
                retired = engine is not self._engine and self._users[engine] == 0
                if self._users[engine] == 0:
                    del self._users[engine]
            if retired:
                engine.close()

    def in_flight(self, now: float | None = None) -> list[str]:
        """Keys the tick at ``now`` (monotonic) passes: not seen yet, waiting, part way, or
        failed and past their back-off (the next tick, then every 2, 4, 8... ticks)."""
        now = time.monotonic() if now is None else now
        out = []
        for key in self.owned_keys():
            seen = self._seen.get(key)
            if seen is None or seen.result.outcome == "waiting":
                out.append(key)
            elif seen.result.outcome == "failed":
                # half a tick less, so a tick that comes early by its jitter still counts
                backoff = min(self.tick * (2 ** (seen.failures - 1) - 0.5), self.check_interval)
                if now - seen.at >= backoff:
                    out.append(key)
            elif seen.result.outcome == "ok" and seen.result.phase != "current":
                out.append(key)
        return out

    def _tick(self) -> None:
        keys = self.in_flight()
        if keys:
            self._pass(lambda e: e.apply(keys))
        self.last_tick = datetime.now(UTC)

    def _check(self, key: str) -> None:
        self._pass(lambda e: [e.reconcile(key)] if key in e.spec.keys else [])

    def _pass(self, run: Callable[[Engine], list[KeyResult]]) -> None:
        try:
            with self._use() as engine:
                if engine.stopping.is_set():
                    return
                started = time.time()
                results: list[KeyResult] = run(engine)
                self._record(results)
                self.metrics.observe_results(engine, results, started=started)
                notify(engine, results)
        except Exception as exc:  # a crashed pass must not end the daemon
            crash = f"{type(exc).__name__}: {exc}"
            log.debug("pass crashed", exc_info=True)
        else:
            return
        log.error("pass crashed: %s", crash)

    def _record(self, results: list[KeyResult]) -> None:
        now = time.monotonic()
        for r in results:
            if r.outcome == "busy":
                continue  # another runner has the key; what it does is not known here
            if r.steps or r.outcome != "ok":
                steps = ", ".join(r.steps) or "no step"
                log.info("%s: %s (%s) after %s: %s", r.key, r.outcome, r.phase, steps, r.message)
            prev = self._seen.get(r.key)
            failures = (prev.failures if prev else 0) + 1 if r.outcome == "failed" else 0
            self._seen[r.key] = _Seen(r, now, failures)


# ---------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    daemon: Daemon  # set on the subclass made by serve_http

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            self._send(200, CONTENT_TYPE_LATEST, self.daemon.metrics.exposition())
        elif path == "/healthz":
            status, body = self.daemon.health()
            self._send(status, "application/json", json.dumps(body).encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def serve_http(daemon: Daemon, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/healthz`` from a daemon thread; ``port`` 0 picks a free one."""
    handler = type("Handler", (_Handler,), {"daemon": daemon})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise RotatorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rotator-http", daemon=True).start()
    return server


def run(
    file: Path,
    *,
    settings: Settings,
    host: str,
    port: int,
    tick: str,
    check_interval: str,
    shard: Shard | None = None,
) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the exit code."""
    if settings.log_level != "ERROR":  # a daemon says what it does unless told to keep quiet
        log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
    daemon = Daemon(
        file,
        settings=settings,
        tick=seconds(tick, "--tick"),
        check_interval=seconds(check_interval, "--check-interval"),
        shard=shard,
    )
    # Blocked before any thread starts (threads inherit the mask), then taken one at a time
    # by sigwait in this thread: no handler runs in the middle of a lock or a log write.
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        server = serve_http(daemon, host, port)
        try:
            daemon.start()
            bound_host, bound_port = server.server_address[:2]
            log.info(
                "serving %d key(s)%s; listening on http://%s:%s (/metrics, /healthz)",
                len(daemon.owned_keys()),
                f" of shard {shard}" if shard else "",
                bound_host,
                bound_port,
            )
            while signal.sigwait(signals) == signal.SIGHUP:
                daemon.reload()
            log.info("stopping: finishing the step in hand")
            daemon.stop()
        finally:
            server.shutdown()
            server.server_close()
    finally:
        daemon.stop()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    log.info("stopped")
    return 0
