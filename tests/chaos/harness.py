"""The chaos harness: many keys rotating at once under faults, then every invariant checked.

``rotator apply`` passes run as subprocesses, several at once so they race on the leases,
some SIGKILLed at random instants and some dying at a random step boundary
(``ROTATOR_CRASH_AT``). Meanwhile the vendor emulator answers a share of requests with
5xx, bursts of 429 with Retry-After, latency spikes and slow mints that outlast the
client's timeout; fault proxies in front of moto and OpenBao drop, delay and reset
connections; OpenBao is restarted with its data kept. Consumers read their stores and
call the vendor the whole time; some keys' services read their key only once, at start, and
are restarted by the key's ``command`` consumer (``--readonce-keys``), and those keys' passes
also die at the publish and roll checkpoints. After a final clean ``apply --wait`` with faults off, the
vendor's, the stores' and the journal's state is checked and one table printed.

    python -m tests.chaos.harness --rotations 1000 --keys 12 --parallel 3

Importable: :func:`run_chaos` takes a :class:`ChaosConfig` and returns a
:class:`~tests.chaos.report.ChaosReport`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rotator.engine.faults import CHECKPOINTS
from rotator.sandbox.emulator import Faults
from tests.chaos.report import ChaosReport, check
from tests.chaos.world import World

# the overlap strategy's, for every key
CRASH_POINTS = tuple(c for c in CHECKPOINTS if not any(w in c for w in ("reset", "publish", "roll")))
# reached only by keys with write-only targets or consumers: the read-once keys
ROLL_POINTS = tuple(c for c in CHECKPOINTS if any(w in c for w in ("publish", "roll")))


@dataclass
class ChaosConfig:
    """The knobs of one run; the defaults are the short run of the test suite."""

    rotations: int = 30
    """Stop the chaos once this many rotations have completed (or at ``budget``)."""
    budget: float = 90.0
    """Seconds of chaos at most."""
    keys: int = 6
    parallel: int = 3
    """``rotator apply`` processes at once."""
    max_age: str = "3s"
    drain: str = "2s"
    """Longer than any pause of a consumer's calls: a consumer still on the old key keeps
    the drain from finishing only while it calls."""
    propagation: str = "1s"
    timeout: str = "90s"
    kill_rate: float = 0.2
    crash_rate: float = 0.15
    vault_restarts: int = 1
    vendor_error_rate: float = 0.03
    proxy_drop: float = 0.02
    proxy_reset: float = 0.02
    proxy_delay: float = 0.05
    consumer_interval: float = 0.1
    consumer_reread: float = 0.3
    readonce_keys: int = -1
    """Keys whose service reads its key once at start and is restarted by a ``command``
    consumer (one process per key); -1: a third of the keys."""
    seed: int = 7
    workdir: Path | None = None
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


@dataclass
class _Run:
    n: int
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    kill_at: float | None
    crash_at: str | None
    noisy: bool
    """Logs at DEBUG, where the SDKs print the tracebacks of errors they handled."""
    args: list[str]
    killed: bool = False


class Driver:
    """Starts rotator passes, kills some, injects vendor faults, restarts OpenBao."""

    def __init__(self, world: World, cfg: ChaosConfig) -> None:
        self.world, self.cfg = world, cfg
        self.rng = random.Random(cfg.seed)  # noqa: S311 - reproducible chaos, not security
        self.runs_dir = world.workdir / "runs"
        self.runs_dir.mkdir(exist_ok=True)
        self.running: list[_Run] = []
        self.exits: Counter[str] = Counter()
        self.launched = 0
        self.unexpected: list[str] = []
        self.busy = 0
        """Keys a pass skipped because another pass held their lease."""
        self.rotations = 0
        self.progress = 0.0
        self.restarts = 0
        self.deaths: list[tuple[datetime, frozenset[str] | None]] = []
        """When a pass died, and the keys whose leases it held (``None``: not known)."""
        self._journal_at = 0
        self._stop = threading.Event()

    # -- rotator processes

    def launch(self) -> None:
        cfg, rng = self.cfg, self.rng
        self.launched += 1
        n = self.launched
        env = self.world.env()
        crash_at = None
        if rng.random() < cfg.crash_rate:
            readonce = [p for p in self.world.plans if p.readonce]
            crash_at = rng.choice(CRASH_POINTS + (ROLL_POINTS if readonce else ()))
            if rng.random() < 0.5:
                crash_at += f"@{rng.choice(readonce if crash_at in ROLL_POINTS else self.world.plans).name}"
            env["ROTATOR_CRASH_AT"] = crash_at
        env["ROTATOR_LOG_LEVEL"] = level = rng.choice(["WARNING", "INFO", "DEBUG"])
        args = ["--debug"] if rng.random() < 0.1 else []
        noisy = level == "DEBUG" or bool(args)
        args.append("apply")
        if rng.random() < 0.15:
            args += sorted(p.name for p in rng.sample(self.world.plans, k=max(1, len(self.world.plans) // 3)))
        if rng.random() < 0.3:
            args += ["--output", "json"]
        out, err = self.runs_dir / f"{n:05d}.out", self.runs_dir / f"{n:05d}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                self.world.rotator(*args), stdout=o, stderr=e, env=env, cwd=self.world.workdir
            )
        kill_at = time.monotonic() + rng.uniform(0.05, 2.5) if rng.random() < cfg.kill_rate else None
        self.running.append(_Run(n, proc, out, err, kill_at, crash_at, noisy, args))

    def reap(self) -> None:
        now = time.monotonic()
        for run in list(self.running):
            if run.proc.poll() is None and run.kill_at is not None and now >= run.kill_at:
                self.kill(run)
            rc = run.proc.poll()
            if rc is not None:
                self.running.remove(run)
                if rc < 0 and not run.killed:  # the crash hook, in the middle of any key's step
                    self.deaths.append((datetime.now(UTC), None))
                self.exits[("SIGKILL" if run.killed else "crash hook") if rc < 0 else f"exit {rc}"] += 1
                err = run.err.read_bytes()
                out = run.out.read_bytes()
                self.busy += out.count(b": busy (") + out.count(b'"outcome": "busy"')
                # the CLI's last-resort handler, or a traceback nobody asked for: a bug either way
                if b"rotator: error:" in err or (b"Traceback" in err and not run.noisy):
                    self.unexpected.append(run.err.name)
                record = {
                    "run": run.n,
                    "args": run.args,
                    "crash_at": run.crash_at,
                    "killed": run.killed,
                    "rc": rc,
                }
                with (self.runs_dir / "index.jsonl").open("a") as index:
                    index.write(json.dumps(record) + "\n")

    def drain_runs(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for run in self.running:
            self.kill(run)
            run.proc.wait()
        self.reap()

    def kill(self, run: _Run) -> None:
        """SIGKILL ``run``, noting which keys' leases it held at that instant."""
        held = held_leases(run.proc.pid, self.world.state_dir / "locks")
        run.proc.kill()
        run.killed = True
        self.deaths.append((datetime.now(UTC), held))

    def count_rotations(self) -> None:
        path = self.world.state_dir / "audit.jsonl"
        if not path.exists():
            return
        with path.open("rb") as handle:
            handle.seek(self._journal_at)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._journal_at += len(complete)
        self.rotations += complete.count(b'"event":"revoked"')

    # -- faults

    def chaos(self) -> None:
        """Each tick redraws the vendor's faults; OpenBao restarts at fixed shares of the run."""
        cfg, rng = self.cfg, random.Random(self.cfg.seed + 2)  # noqa: S311
        emulator = self.world.emulator.emulator
        while not self._stop.wait(rng.uniform(0.3, 0.7)):
            faults = Faults(seed=rng.randrange(1 << 30))
            faults.error_rate = cfg.vendor_error_rate
            faults.rate_429 = 0.5 if rng.random() < 0.1 else 0.01
            faults.retry_after = rng.choice([0.1, 0.2, 0.5])
            faults.latency = rng.uniform(0.2, 0.6) if rng.random() < 0.1 else 0.0
            if rng.random() < 0.05:  # a mint that takes longer than the client waits: outcome unknown
                faults.path_delays["POST /api/v1/api-keys$"] = 2.5
            if rng.random() < 0.05:
                faults.fail_next.extend([503, 0])
            emulator.faults = faults
            github = self.world.github
            if github is not None and rng.random() < 0.1:  # the write-only target's API refuses too
                if rng.random() < 0.5:
                    github.fail(1, status=502)
                else:
                    github.rate_limit(1, retry_after=0.2)
            due = (self.restarts + 1) / (cfg.vault_restarts + 1)
            if self.restarts < cfg.vault_restarts and self.progress >= due:
                assert self.world.bao is not None
                down = self.world.bao.restart(kill=self.restarts % 2 == 1, down=1.5)
                self.restarts += 1
                cfg.log(f"chaos: OpenBao restarted with its data ({down:.1f}s unavailable)")

    def quiet(self) -> None:
        self._stop.set()
        self.world.emulator.emulator.faults = Faults()
        for proxy in (self.world.aws_proxy, self.world.vault_proxy):
            if proxy is not None:
                proxy.quiet()

    def loop(self) -> None:
        cfg = self.cfg
        for proxy in (self.world.aws_proxy, self.world.vault_proxy):
            assert proxy is not None
            proxy.drop_rate, proxy.reset_rate, proxy.delay_rate = (
                cfg.proxy_drop,
                cfg.proxy_reset,
                cfg.proxy_delay,
            )
        chaos = threading.Thread(target=self.chaos, name="chaos", daemon=True)
        chaos.start()
        started = last_note = time.monotonic()
        while self.rotations < cfg.rotations and time.monotonic() - started < cfg.budget:
            self.reap()
            while len(self.running) < cfg.parallel:
                self.launch()
            self.count_rotations()
            elapsed = time.monotonic() - started
            self.progress = max(self.rotations / cfg.rotations, elapsed / cfg.budget)
            if time.monotonic() - last_note >= 30:
                last_note = time.monotonic()
                cfg.log(f"chaos: {elapsed:.0f}s, {self.rotations} rotations, {self.launched} passes")
            time.sleep(0.05)
        if self.restarts < cfg.vault_restarts:  # the budget ran out first: restart anyway
            self.progress = 1.0
            while chaos.is_alive() and self.restarts < cfg.vault_restarts:
                self.reap()
                time.sleep(0.1)
        self.quiet()
        chaos.join(timeout=30)


def held_leases(pid: int, locks: Path) -> frozenset[str] | None:
    """The keys whose lease files ``pid`` holds a ``flock`` on, from ``/proc/locks``."""
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    inodes = set()
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:123456 0 EOF" (a waiter's line has "->")
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[4] == str(pid):
            inodes.add(int(parts[5].rsplit(":", 1)[1]))
    try:
        return frozenset(p.stem for p in locks.glob("*.lock") if p.stat().st_ino in inodes)
    except OSError:
        return None


def _final_pass(world: World, cfg: ChaosConfig) -> tuple[int, int, bool, str]:
    """Faults off, no new rotation due: ``apply --wait`` to rest, then one more pass that must
    take no step. Returns both exit codes, whether the second pass was idle, and its output.
    A pass costs CPU per key: the time allowed grows with the number of keys."""
    world.write_spec(max_age="3650d", drain=cfg.drain, propagation=cfg.propagation, timeout=cfg.timeout)
    runs = world.workdir / "runs"
    final = subprocess.run(
        world.rotator("apply", "--wait"),
        env=world.env(),
        capture_output=True,
        timeout=300 + 3 * world.keys,
        check=False,
        cwd=world.workdir,
    )
    (runs / "final.out").write_bytes(final.stdout)
    (runs / "final.err").write_bytes(final.stderr)
    again = subprocess.run(
        world.rotator("apply", "--output", "json"),
        env=world.env(),
        capture_output=True,
        timeout=120 + 2 * world.keys,
        check=False,
        cwd=world.workdir,
    )
    (runs / "again.out").write_bytes(again.stdout)
    (runs / "again.err").write_bytes(again.stderr)
    try:
        idle = all(not r["steps"] and r["outcome"] == "ok" for r in json.loads(again.stdout))
    except (ValueError, KeyError, TypeError):
        idle = False
    return final.returncode, again.returncode, idle, final.stdout.decode(errors="replace")


def run_chaos(cfg: ChaosConfig) -> ChaosReport:
    """One chaos run from an empty world to the table of invariants."""
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="rotator-chaos-"))
    readonce = cfg.keys // 3 if cfg.readonce_keys < 0 else cfg.readonce_keys
    world = World(workdir, cfg.keys, cfg.seed, readonce=readonce)
    started = time.monotonic()
    driver: Driver | None = None
    try:
        world.start()
        world.write_spec(
            max_age=cfg.max_age, drain=cfg.drain, propagation=cfg.propagation, timeout=cfg.timeout
        )
        first = subprocess.run(
            world.rotator("apply"),
            env=world.env(),
            capture_output=True,
            timeout=120,
            check=False,
            cwd=workdir,
        )
        if first.returncode != 0:
            (workdir / "first.err").write_bytes(first.stderr)
            raise RuntimeError(f"the first clean pass failed ({first.returncode})")
        world.start_consumers(interval=cfg.consumer_interval, reread=cfg.consumer_reread)
        driver = Driver(world, cfg)
        cfg.log(
            f"chaos: {cfg.keys} keys, {sum(len(p.targets) + len(p.extra) for p in world.plans)} targets, "
            f"{len(world.services)} read-once services, working in {workdir}"
        )
        driver.loop()
        driver.drain_runs(timeout=60)
        final_rc, again_rc, idle, final_out = _final_pass(world, cfg)
        time.sleep(max(1.0, 3 * cfg.consumer_reread))  # consumers pick up the last keys and use them
        for consumer in world.consumers:
            consumer.stop()
        report = check(world, cfg, driver, (final_rc, again_rc, idle, final_out), time.monotonic() - started)
    finally:
        if driver is not None:
            driver.quiet()
            for run in driver.running:
                run.proc.kill()
        world.stop()
    if cfg.workdir is None and not report.failures:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the harness from the command line; exit 1 when an invariant fails."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.harness", description=__doc__.split("\n\n")[0]
    )
    for f in fields(ChaosConfig):
        if f.name in ("log", "workdir"):
            continue
        kind: Any = type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    parser.add_argument("--workdir", type=Path, help="Keep everything here (default: a temporary directory).")
    args = vars(parser.parse_args(argv))
    # a SIGTERM ends the run through its finally blocks, so the servers it started stop too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg = ChaosConfig(**args)
    report = run_chaos(cfg)
    print(report.table())
    for line in report.failures:
        print(f"FAIL {line}")
    if report.failures:
        print(f"evidence kept in {report.workdir}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
