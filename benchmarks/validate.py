"""`rotator validate` over large rotation files, against its goal and its baseline.

    python benchmarks/validate.py [--keys 1000 5000 20000] [--runs 3]

For each N the script writes a realistic rotation file (two issuers, each key an agent key with
one AWS and one Vault target, one key in ten on a cron schedule), then measures:

- the real command line in a fresh process (`python -m rotator.cli validate`, as `rotator
  validate` runs): wall time from spawn to exit (the best of --runs: other work on the machine
  only ever adds to it), the CPU time (user + system) of that run and the child's peak RSS;
- the loader in this process (`load_rotation_file`): wall time, and the peak of Python
  allocations (tracemalloc, in a separate run so it does not slow the timed one).

A realistic key takes about 300 bytes, so files over about 3,000 keys exceed the default 1 MiB
cap: for those the script sets ``ROTATOR_MAX_FILE_MIB`` to the file's size, rounded up (the
column "cap MiB"). Then the hostile files (over the 1 MiB cap, an alias bomb, deep nesting): each must be refused
with exit 2 and one line, in well under a second. Goal: 20,000 keys in under 3 s. Baseline,
the loader before it parsed once with libyaml: 70.5 s wall, 66.9 s CPU and 871 MB peak RSS
on this script's 20,000-key file (load average 3; the issue measured 57 s on its own file).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from rotator.spec import load_rotation_file

GOAL_S = {20_000: 3.0}
BASELINE_S = {20_000: 70.5}
HOSTILE_GOAL_S = 1.0
MIB = 1 << 20
CAP_ENV = "ROTATOR_MAX_FILE_MIB"

HEADER = """\
version: 1
state_dir: .rotator
defaults:
  max_age: 30d
  verify: {drain: 15m, propagation: 2m, timeout: 24h, on_timeout: hold}
issuers:
  adjudon-prod:
    type: adjudon
    base_url: https://api.adjudon.com
    credential: {env: ADJUDON_ADMIN_KEY}
  adjudon-eu:
    type: adjudon
    base_url: https://eu.api.adjudon.com
    credential: {env: ADJUDON_EU_ADMIN_KEY}
keys:
"""

KEY = """\
  svc-{i:05d}:
    issuer: {issuer}
    kind: agent
    agent_id: svc-{i:05d}
{schedule}    targets:
      - {{type: aws, secret_id: prod/svc-{i:05d}/adjudon, region: eu-central-1, field: ADJUDON_API_KEY}}
      - {{type: vault, url: "https://vault.internal:8200", mount: secret, path: svc-{i:05d}/adjudon, field: api_key}}
"""


def rotation_file(keys: int) -> str:
    """A valid rotation file of ``keys`` keys."""
    parts = [HEADER]
    for i in range(keys):
        issuer = "adjudon-prod" if i % 2 == 0 else "adjudon-eu"
        schedule = f'    schedule: "{i % 60} 3 * * MON"\n' if i % 10 == 0 else ""
        parts.append(KEY.format(i=i, issuer=issuer, schedule=schedule))
    return "".join(parts)


def hostile_files() -> dict[str, str]:
    """Files that must be refused fast, each with one line."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):
        prev = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        levels.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return {
        "over the 1 MiB cap": rotation_file(1) + "# " + "x" * (1 << 20) + "\n",
        "alias bomb, 9 levels (about 700 bytes)": "\n".join(levels) + "\n",
        "nested 999 levels deep": "a: " + "[" * 999 + "]" * 999 + "\n",
    }


def cap_mib(path: Path) -> int:
    """The smallest ``ROTATOR_MAX_FILE_MIB`` that admits ``path`` (at least the default, 1)."""
    return max(1, -(-path.stat().st_size // MIB))


def run_cli(path: Path, cap: int = 1) -> tuple[float, float, float, int, str]:
    """Wall and CPU seconds, peak RSS (MB), exit code and stderr of ``rotator validate``."""
    env = {**os.environ, CAP_ENV: str(cap)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rotator.cli", "-f", str(path), "validate"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode, err


def in_process(path: Path, runs: int) -> tuple[float, float]:
    """Median wall seconds of ``load_rotation_file`` and its peak Python allocations (MB)."""
    os.environ[CAP_ENV] = str(cap_mib(path))
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        load_rotation_file(path)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    load_rotation_file(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del os.environ[CAP_ENV]
    return statistics.median(times), peak / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000, 5_000, 20_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    failed = False
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{'keys':>7} {'bytes':>10} {'cap MiB':>8} {'validate s':>11} {'CPU s':>6} {'peak RSS MB':>12} "
            f"{'load s':>8} {'alloc MB':>9} {'goal s':>7} {'baseline s':>11}"
        )
        for n in args.keys:
            path = Path(tmp) / f"rotations-{n}.yaml"
            path.write_text(rotation_file(n))
            cap = cap_mib(path)
            runs = [run_cli(path, cap) for _ in range(args.runs)]
            wall, cpu, _, _, _ = min(runs)
            rss = max(r[2] for r in runs)
            if any(r[3] != 0 for r in runs):
                print(f"validate failed on {n} keys: {runs[0][4].strip()}", file=sys.stderr)
                failed = True
            load_s, alloc = in_process(path, args.runs)
            goal = GOAL_S.get(n)
            baseline = BASELINE_S.get(n)
            failed |= goal is not None and wall >= goal
            print(
                f"{n:>7} {path.stat().st_size:>10} {cap:>8} {wall:>11.2f} {cpu:>6.2f} {rss:>12.0f} {load_s:>8.2f} {alloc:>9.0f} "
                f"{goal if goal else '-':>7} {baseline if baseline else '-':>11}"
            )
        print()
        print(f"{'hostile file':<40} {'bytes':>8} {'exit':>5} {'s':>6}  first line of stderr")
        for name, text in hostile_files().items():
            path = Path(tmp) / "hostile.yaml"
            path.write_text(text)
            wall, _, _, code, err = run_cli(path)
            lines = err.strip().splitlines()
            first = lines[0] if lines else ""
            failed |= code != 2 or len(lines) != 1 or wall >= HOSTILE_GOAL_S
            print(f"{name:<40} {len(text.encode()):>8} {code:>5} {wall:>6.2f}  {first[:90]}")
    if failed:
        print("a goal was missed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
