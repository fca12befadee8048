"""``rotator sandbox``: the whole product in one command, with nothing to set up.

It starts the vendor emulator on loopback, writes a rotation file with one file target into
a working directory, starts a consumer that re-reads that file every second and sends
traces with whatever key it finds, then runs one complete overlap rotation with a short
drain, showing each phase as it happens. The summary ends with the consumer's auth
failures, which must be 0: that is the product's promise.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from rotator.engine.model import Decision
from rotator.engine.runner import Engine
from rotator.logs import redact
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import Settings, parse_duration, parse_rotation_file

CREDENTIAL_ENV = "ROTATOR_SANDBOX_ADMIN_KEY"
KEY = "demo-agent"

ROTATION_FILE = """\
version: 1
state_dir: state
defaults:
  max_age: 30d
  verify: {{drain: {drain}, propagation: 2s, timeout: 2m}}
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
      - {{type: file, path: secrets/demo.env, format: dotenv, field: ADJUDON_API_KEY}}
"""


@dataclass
class Consumer:
    """A service that re-reads its env file every second and calls the vendor with the key."""

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


class PhaseClock:
    """Records when each phase was first seen, to report the time spent in each."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.start = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def __call__(self, key: str, decision: Decision) -> None:
        label = decision.phase if decision.action != "revoke" else "revoking"
        if label == "current" and self.marks and self.marks[-1][0] == "revoking":
            label = "revoked"
        if self.marks and self.marks[-1][0] == label:
            return
        t = time.monotonic() - self.start
        self.marks.append((label, t))
        self.console.print(redact(f"  {t:6.2f}s  {label:<9} {decision.reason}"), markup=False)

    def durations(self) -> list[tuple[str, float]]:
        """Time from each phase to the next; the last phase (at rest) has none."""
        return [(label, self.marks[i + 1][1] - t) for i, (label, t) in enumerate(self.marks[:-1])]


def run_demo(*, drain: str = "3s", directory: Path | None = None) -> int:
    """Run the demo; returns the process exit code (0 when the rotation broke no consumer)."""
    parse_duration(drain)  # a bad --drain is a ConfigError before anything starts
    console = Console(highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="rotator-sandbox-") as tmp:
        workdir = directory or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        return _demo(console, workdir, drain)


def _demo(console: Console, workdir: Path, drain: str) -> int:
    with EmulatorServer() as server:
        emulator = server.emulator
        os.environ[CREDENTIAL_ENV] = emulator.bootstrap_workspace_key("sandbox-admin")
        text = ROTATION_FILE.format(drain=drain, url=server.url, env=CREDENTIAL_ENV, key=KEY)
        (workdir / "rotations.yaml").write_text(text)
        (workdir / "secrets").mkdir(mode=0o700, exist_ok=True)
        spec = parse_rotation_file(text, "rotations.yaml")
        settings = Settings(retry_initial=0.05, probe_timeout=10)
        console.print(
            f"[bold]rotator sandbox[/]: vendor emulator at {server.url}, working directory {workdir}"
        )

        engine = Engine(spec, base_dir=workdir, settings=settings)
        console.print("[bold]1.[/] first pass: the target is empty, so a key is minted and stored")
        first = engine.apply([KEY])[0]
        if first.outcome != "ok":
            console.print(f"[red]first pass did not complete: {first.message}[/]")
            return 1
        old = _active_prefixes(emulator)

        consumer = Consumer(workdir / "secrets/demo.env", server.url)
        consumer.start()
        console.print("[bold]2.[/] a consumer reads secrets/demo.env every second and sends traces")
        time.sleep(1.5)

        console.print("[bold]3.[/] rotation (rotator rotate demo-agent --wait):")
        clock = PhaseClock(console)
        result = engine.apply([KEY], force=True, wait=True, progress=clock)[0]
        end = time.monotonic() - clock.start
        time.sleep(1.2)  # let the consumer make a few calls on the new key only
        consumer.stop()

        keys = emulator.adjudon_keys()
        revoked = [k for k in keys if k["prefix"] in old and k["status"] == "revoked"]
        new = [k["prefix"] for k in keys if k["status"] == "active" and k["type"] == "agent"]
        console.print("\n[bold]Summary[/]")
        console.print(f"  old key prefix      {', '.join(old)}… ({'revoked' if revoked else 'STILL ACTIVE'})")
        console.print(f"  new key prefix      {', '.join(new)}…")
        for label, seconds in clock.durations():
            console.print(f"  {label:<19} {seconds:6.2f}s")
        console.print(f"  total               {end:6.2f}s")
        console.print(f"  consumer requests   {consumer.requests}")
        console.print(f"  consumer auth failures  {consumer.auth_failures}")
        console.print(
            f"  audit journal       {engine.journal.path.relative_to(workdir)}, "
            f"{engine.journal.verify().checked} entries, chain intact"
        )
        ok = result.outcome == "ok" and bool(revoked) and consumer.auth_failures == 0
        console.print(
            "[green]rotation complete, no consumer broken[/]"
            if ok
            else f"[red]rotation did not complete cleanly: {result.message}[/]"
        )
        return 0 if ok else 1


def _active_prefixes(emulator: object) -> list[str]:
    keys = emulator.adjudon_keys()  # type: ignore[attr-defined]
    return [k["prefix"] for k in keys if k["status"] == "active" and k["type"] == "agent"]
