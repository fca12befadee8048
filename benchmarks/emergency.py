"""Time-to-revoke of `rotator emergency` on loopback, against its baseline: a bare Python
process that only sends the DELETE with httpx.

    python benchmarks/emergency.py [--runs 7]

Both are measured the same way: wall time of a fresh process, from spawn until the vendor
(the sandbox emulator, in this process) has marked the key revoked. `rotator emergency`
also reports its own time-to-revoke from command start (after interpreter start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rotator.engine.runner import Engine
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import Settings, parse_rotation_file

SPEC = """\
version: 1
state_dir: state
issuers:
  emu: {{type: adjudon, base_url: "{url}", credential: {{env: BENCH_ADMIN_KEY}}}}
keys:
  payments:
    issuer: emu
    kind: agent
    agent_id: payments
    targets: [{{type: file, path: payments.key}}]
"""

BARE = """\
import os, sys, httpx
httpx.delete(sys.argv[1], headers={"Authorization": "Bearer " + os.environ["BENCH_ADMIN_KEY"]}).raise_for_status()
"""


def _wait_revoked(server: EmulatorServer, key_id: str, started: float) -> float:
    while True:
        keys = {k["id"]: k for k in server.emulator.adjudon_keys()}
        if keys[key_id]["status"] == "revoked":
            return time.perf_counter() - started
        time.sleep(0.0005)


def _active_agent(server: EmulatorServer) -> str:
    return next(
        k["id"] for k in server.emulator.adjudon_keys() if k["type"] == "agent" and k["status"] == "active"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmulatorServer() as server:
        work = Path(tmp)
        env = {**os.environ, "BENCH_ADMIN_KEY": server.emulator.bootstrap_workspace_key()}
        os.environ["BENCH_ADMIN_KEY"] = env["BENCH_ADMIN_KEY"]
        (work / "rotations.yaml").write_text(SPEC.format(url=server.url))
        spec = parse_rotation_file((work / "rotations.yaml").read_text())
        Engine(spec, base_dir=work, settings=Settings()).apply(["payments"])

        rotator, reported, bare = [], [], []
        for _ in range(args.runs):
            key_id = _active_agent(server)
            started = time.perf_counter()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rotator.cli",
                    "emergency",
                    "payments",
                    "--reason",
                    "bench",
                    "--key-id",  # each run revokes the key the last one minted: name it
                    key_id,
                    "--output",
                    "json",
                ],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            rotator.append(_wait_revoked(server, key_id, started))
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out
            reported.append(json.loads(out)["time_to_revoke_s"])

            victim = server.emulator.create_agent_key("bench-bare", "victim")
            victim_id = next(
                k["id"]
                for k in server.emulator.adjudon_keys()
                if k["agent_id"] == "bench-bare" and k["status"] == "active"
            )
            del victim
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", BARE, f"{server.url}/api/v1/api-keys/{victim_id}"], env=env, check=True
            )
            bare.append(_wait_revoked(server, victim_id, started))

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:7.1f} ms  (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})"

    print(f"runs: {args.runs}, loopback, Python {sys.version.split()[0]}")
    print(f"rotator emergency, process spawn -> revoked   {ms(rotator)}")
    print(f"rotator emergency, its own report             {ms(reported)}")
    print(f"baseline: bare httpx DELETE process           {ms(bare)}")
    print(
        f"overhead over baseline (medians)              {(statistics.median(rotator) - statistics.median(bare)) * 1000:7.1f} ms"
    )


if __name__ == "__main__":
    main()
