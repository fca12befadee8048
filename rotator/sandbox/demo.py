"""``rotator sandbox``: the whole product in one command, with nothing to set up.

It starts the vendor emulator on loopback and writes a rotation file into a working directory:
one file target (``secrets/demo.env``) and one ``command`` consumer that restarts a service
reading its key from that file once, at start, as most real consumers do
(``rotator.sandbox.readonce``, a process of its own that calls the vendor every 0.2 s). The
first pass mints a key, stores it and rolls the consumer, which starts the service; then one
complete overlap rotation runs (mint, stage, promote, roll: the service restarted on the new
key, drain, revoke), showing each phase as it happens. The summary sums the service's calls
over every generation of it: its auth failures must be 0, which is the product's promise.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from rotator.engine.model import Decision
from rotator.engine.runner import Engine
from rotator.logs import redact
from rotator.sandbox.emulator import EmulatorServer
from rotator.sandbox.readonce import MODULE, Totals, is_running, read_stats
from rotator.spec import Settings, parse_duration, parse_rotation_file

CREDENTIAL_ENV = "ROTATOR_SANDBOX_ADMIN_KEY"
KEY = "demo-agent"
ENV_FILE = "secrets/demo.env"
PIDFILE = "service.pid"
STATS = "service-stats"
"""The service's files, in the working directory: its pid, and its counts per generation."""

ROTATION_FILE = """\
version: 1
state_dir: state
defaults:
  max_age: 30d
  verify: {{drain: {drain}, propagation: 1s, timeout: 2m}}
issuers:
  sandbox:
    type: adjudon
    base_url: {url}
    credential: {{env: {env}}}
keys:
  {key}:
    issuer: sandbox
    kind: agent
    agent_id: demo
    targets:
      - {{type: file, path: {env_file}, format: dotenv, field: ADJUDON_API_KEY}}
    consumers:
      - type: command
        argv: {argv}
        timeout: 60s
"""


def restart_argv(url: str) -> list[str]:
    """The consumer's command: restart the read-once service (start it when none runs), with
    this interpreter, paths relative to the working directory (the command's)."""
    return [
        *(sys.executable, "-m", MODULE, "restart", "--env-file", ENV_FILE, "--var", "ADJUDON_API_KEY"),
        *("--url", url, "--pidfile", PIDFILE, "--stats", STATS, "--interval", "0.2"),
    ]


@dataclass
class Consumer:
    """A consumer thread that re-reads its env file every second and calls the vendor with
    the key it finds: the other kind of consumer, which needs no roll (the tests watch it)."""

    env_file: Path
    url: str
    interval: float = 0.1
    requests: int = 0
    auth_failures: int = 0
    other_failures: int = 0
    prefixes_seen: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _read_key(self) -> str | None:
        try:
            for line in self.env_file.read_text().splitlines():
                name, sep, value = line.partition("=")
                if sep and name.strip() == "ADJUDON_API_KEY":
                    return value.strip().strip("'\"")
        except FileNotFoundError:
            return None
        return None

    def _run(self) -> None:
        key, read_at = self._read_key(), time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                if time.monotonic() - read_at >= 1.0:
                    key, read_at = self._read_key(), time.monotonic()
                if key:
                    if not self.prefixes_seen or self.prefixes_seen[-1] != key[:13]:
                        self.prefixes_seen.append(key[:13])
                    try:
                        r = client.post(
                            "/api/v1/traces",
                            json={"event": "demo"},
                            headers={"Authorization": f"Bearer {key}"},
                        )
                    except httpx.HTTPError:
                        self.other_failures += 1
                    else:
                        self.requests += 1
                        if r.status_code == 401:
                            self.auth_failures += 1
                        elif r.status_code >= 300:
                            self.other_failures += 1
                self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)


STEP_LABELS = {"wait": "drain", "done": "at rest"}
"""How the demo names a step (its action, else these): a wait in a rotation is the drain."""


class PhaseClock:
    """Records when each step was first taken, to report the time spent in each."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.start = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def __call__(self, key: str, decision: Decision) -> None:
        label = STEP_LABELS.get(decision.action, decision.action)
        if self.marks and self.marks[-1][0] == label:
            return
        t = time.monotonic() - self.start
        self.marks.append((label, t))
        self.console.print(redact(f"  {t:6.2f}s  {label:<9} {decision.reason}"), markup=False)

    def durations(self) -> list[tuple[str, float]]:
        """Time from each step to the next; the last (at rest) has none."""
        return [(label, self.marks[i + 1][1] - t) for i, (label, t) in enumerate(self.marks[:-1])]


def run_demo(*, drain: str = "3s", directory: Path | None = None) -> int:
    """Run the demo; returns the process exit code (0 when the rotation broke no consumer)."""
    parse_duration(drain)  # a bad --drain is a ConfigError before anything starts
    console = Console(highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="rotator-sandbox-") as tmp:
        workdir = (directory or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            return _demo(console, workdir, drain)
        finally:
            stop_service(workdir / STATS)


def _demo(console: Console, workdir: Path, drain: str) -> int:
    with EmulatorServer() as server:
        emulator = server.emulator
        os.environ[CREDENTIAL_ENV] = emulator.bootstrap_workspace_key("sandbox-admin")
        text = ROTATION_FILE.format(
            drain=drain,
            url=server.url,
            env=CREDENTIAL_ENV,
            key=KEY,
            env_file=ENV_FILE,
            argv=json.dumps(restart_argv(server.url)),
        )
        (workdir / "rotations.yaml").write_text(text)
        (workdir / "secrets").mkdir(mode=0o700, exist_ok=True)
        spec = parse_rotation_file(text, "rotations.yaml")
        settings = Settings(retry_initial=0.05, probe_timeout=10)
        console.print(
            f"[bold]rotator sandbox[/]: vendor emulator at {server.url}, working directory {workdir}"
        )
        engine = Engine(spec, base_dir=workdir, settings=settings)
        return _loop(console, engine, emulator, workdir)


def _loop(console: Console, engine: Engine, emulator: object, workdir: Path) -> int:
    """The first pass (which starts the service through its consumer), then one rotation and
    its summary."""
    stats = workdir / STATS
    console.print(
        "[bold]1.[/] first pass: the target is empty, so a key is minted and stored, and the "
        "consumer is rolled: its command starts the service"
    )
    first = engine.apply([KEY])[0]
    if first.outcome != "ok":
        console.print(f"[red]first pass did not complete: {first.message}[/]")
        return 1
    old = _active_prefixes(emulator)
    started = _wait_for(stats, lambda t: t.accepted >= 3)
    if started.accepted < 3:
        console.print("[red]the service made no accepted call[/]")
        return 1
    console.print(
        f"[bold]2.[/] the service (pid {started.generations[-1].pid}) read {ENV_FILE} once, at start, "
        "and calls the vendor every 0.2 s with that key; a new key reaches it only by a restart"
    )
    console.print(
        f"[bold]3.[/] rotation (rotator rotate {KEY} --wait): mint (and stage), promote, roll "
        "(the consumer restarts the service on the new key), drain, revoke"
    )
    clock = PhaseClock(console)
    result = engine.apply([KEY], force=True, wait=True, progress=clock)[0]
    end = time.monotonic() - clock.start
    after = read_stats(stats).accepted  # a few calls on the new key alone, after the revoke
    _wait_for(stats, lambda t: t.accepted >= after + 3)
    stop_service(stats)
    totals = read_stats(stats)
    rolled = engine.journal.last(KEY, "rolled")
    roll_s = (rolled or {}).get("details", {}).get("seconds")

    keys = emulator.adjudon_keys()  # type: ignore[attr-defined]
    revoked = [k for k in keys if k["prefix"] in old and k["status"] == "revoked"]
    new = [k["prefix"] for k in keys if k["status"] == "active" and k["type"] == "agent"]
    console.print("\n[bold]Summary[/]")
    console.print(f"  old key prefix      {', '.join(old)}… ({'revoked' if revoked else 'STILL ACTIVE'})")
    console.print(f"  new key prefix      {', '.join(new)}…")
    for label, seconds in clock.durations():
        console.print(f"  {label:<19} {seconds:6.2f}s")
    console.print(f"  total               {end:6.2f}s")
    if isinstance(roll_s, int | float):
        console.print(f"  roll (restart)      {roll_s:6.2f}s  start a new generation, stop the old one")
    generations = [g.prefix for g in totals.generations]
    console.print(f"  service generations {len(generations)} ({', '.join(p + '…' for p in generations)})")
    console.print(f"  consumer requests   {totals.requests}, over every generation")
    console.print(f"  consumer auth failures  {totals.auth_failures}")
    console.print(
        f"  audit journal       {engine.journal.path.relative_to(workdir)}, "
        f"{engine.journal.verify().checked} entries, chain intact"
    )
    ok = (
        result.outcome == "ok"
        and bool(revoked)
        and totals.auth_failures == 0
        and totals.other_failures == 0
        and generations == [*old, *new]
    )
    console.print(
        "[green]rotation complete, no consumer broken[/]"
        if ok
        else f"[red]rotation did not complete cleanly: {result.message}[/]"
    )
    return 0 if ok else 1


def _wait_for(stats: Path, done: Callable[[Totals], bool], timeout: float = 15.0) -> Totals:
    """The service's counts once ``done`` holds for them, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done(totals := read_stats(stats)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return totals


def stop_service(stats: Path) -> None:
    """SIGTERM every running generation the service recorded in ``stats`` and wait until each
    exited (it writes its final counts as it does)."""
    running = read_stats(stats).running if stats.is_dir() else []
    for gen in running:
        try:
            os.kill(gen.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    while any(is_running(g.pid) for g in running) and time.monotonic() < deadline:
        time.sleep(0.05)


def _active_prefixes(emulator: object) -> list[str]:
    keys = emulator.adjudon_keys()  # type: ignore[attr-defined]
    return [k["prefix"] for k in keys if k["status"] == "active" and k["type"] == "agent"]
