"""The chaos run with a fleet: 200 keys instead of 6, every fault of the short run, and a few
read-once services restarted by ``command`` consumers.

    python benchmarks/chaos200.py [--keys 200] [--readonce-keys 10] [--rotations 200] [--budget 420]
                                  [--workdir DIR] [any other flag of python -m tests.chaos.harness]

It runs :func:`tests.chaos.harness.run_chaos` in this process and prints the invariants'
table, then what the run cost this process (the harness, its consumers and the emulator):
wall and CPU time, peak RSS, the most threads and open file descriptors seen at once. Exit 1
when an invariant fails.

A fleet changes the pace, not the checks: a consumer thread per target (about 400) calling
every 0.1 s would be 4,000 calls a second into the in-process emulator on 2 cores, so here
each consumer calls and re-reads its store every 2 s, the propagation budget is 4 s (longer
than a re-read, as the short run's 1 s is longer than its 0.3 s) and the drain 5 s (longer than
a pause between calls). A pass over 200 keys takes minutes on 2 cores (issue 15's CPU per key),
so the final passes are given time in proportion to the keys. Read-once services are processes, one per key: only
``--readonce-keys`` of the keys have one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the harness lives in the tests

from tests.chaos.harness import ChaosConfig, run_chaos  # noqa: E402

FLEET = {
    "keys": 200,
    "readonce_keys": 10,
    "rotations": 120,
    "budget": 480.0,
    "parallel": 3,
    "max_age": "20s",
    "propagation": "4s",
    "drain": "5s",
    "timeout": "180s",
    "consumer_interval": 2.0,
    "consumer_reread": 2.0,
    "vault_restarts": 2,
}


class Peak:
    """Samples this process's threads and open file descriptors every ``every`` seconds."""

    def __init__(self, every: float = 0.5) -> None:
        self.threads = self.fds = 0
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak", daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.threads = max(self.threads, threading.active_count())
            with contextlib.suppress(OSError):
                self.fds = max(self.fds, len(os.listdir("/proc/self/fd")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(ChaosConfig):
        if f.name in ("log", "workdir"):
            continue
        default = FLEET.get(f.name, f.default)
        kind: Any = type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default)
    parser.add_argument("--workdir", type=Path, help="Keep everything here (default: a temporary directory).")
    cfg = ChaosConfig(**vars(parser.parse_args(argv)))
    started, cpu = time.monotonic(), time.process_time()
    with Peak() as peak:
        report = run_chaos(cfg)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(report.table())
    print(
        f"{cfg.keys} keys ({cfg.readonce_keys} read-once), {report.rotations} rotations in {wall:.0f}s; "
        f"harness process: {cpu:.0f}s CPU, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB, "
        f"at most {peak.threads} threads and {peak.fds} open files; child processes: "
        f"{children.ru_utime + children.ru_stime:.0f}s CPU, largest peak RSS {children.ru_maxrss // 1024} MB"
    )
    for line in report.failures:
        print(f"FAIL {line}")
    if report.failures:
        print(f"evidence kept in {report.workdir}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
