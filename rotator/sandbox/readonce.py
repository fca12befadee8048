"""A service that reads its key once, at start, as most real consumers do; and the tools that
restart it, for the loop ``mint, roll out, roll the consumers, verify, revoke``.

Commands (``python -m rotator.sandbox.readonce ...``)::

    serve   --env-file F --var NAME --url URL --pidfile P --stats DIR [--interval 0.2]
    restart --env-file F --var NAME --url URL --pidfile P --stats DIR [--interval 0.2] [--ready-timeout 30]
    receive --secret-env VAR [--port 0] [--port-file F]  + the restart options
    stats   --stats DIR

``serve`` (also the default when the first argument is an option) reads ``NAME`` from the
dotenv file ``F`` once, then calls the vendor's trace ingestion at ``URL`` with it every
``interval`` seconds. Each process generation keeps its counts in ``DIR/<pid>.json`` (rewritten
atomically, at its first accepted call, every second, and when it exits): requests, accepted,
401s and other failures, and the key's prefix and fingerprint, never the key. Once a call was
accepted it writes its pid to ``P``. SIGTERM ends it cleanly.

``restart`` starts a new generation first, waits until it made an accepted call (so there is
no moment without a working consumer), then SIGTERMs the one in ``P``; exit 0, or 1 with the
reason (the old generation then keeps running). With no live process in ``P`` it just starts
one. ``receive`` is a webhook receiver (``rotator.sandbox.hook``) that runs the same restart
for each verified delivery. ``stats`` prints the sums over every generation in ``DIR``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from rotator.abc import format_time
from rotator.secret import fingerprint

PREFIX_LEN = 13
"""How many leading characters of a key are shown (the vendor's prefix)."""
MODULE = "rotator.sandbox.readonce"


class RestartFailed(Exception):
    """The new generation did not become ready, or the old one did not stop."""


# --------------------------------------------------------------------------- stats


@dataclass
class Generation:
    """One process's counts, as ``DIR/<pid>.json`` holds them."""

    pid: int
    prefix: str
    fingerprint: str
    started_at: str
    requests: int = 0
    accepted: int = 0
    auth_failures: int = 0
    other_failures: int = 0
    first_accepted_at: str | None = None
    stopped_at: str | None = None


@dataclass(frozen=True)
class Totals:
    """Sums over every generation of one stats directory, oldest first."""

    generations: list[Generation]

    @property
    def requests(self) -> int:
        return sum(g.requests for g in self.generations)

    @property
    def accepted(self) -> int:
        return sum(g.accepted for g in self.generations)

    @property
    def auth_failures(self) -> int:
        return sum(g.auth_failures for g in self.generations)

    @property
    def other_failures(self) -> int:
        return sum(g.other_failures for g in self.generations)

    @property
    def running(self) -> list[Generation]:
        return [g for g in self.generations if g.stopped_at is None and is_running(g.pid)]

    def to_dict(self) -> dict[str, object]:
        return {
            "generations": len(self.generations),
            "requests": self.requests,
            "accepted": self.accepted,
            "auth_failures": self.auth_failures,
            "other_failures": self.other_failures,
            "running": [g.pid for g in self.running],
            "prefixes": [g.prefix for g in self.generations],
        }


def read_stats(stats_dir: Path) -> Totals:
    """Every generation recorded in ``stats_dir``, oldest first."""
    found = [read_generation(p) for p in stats_dir.glob("*.json")]
    return Totals(sorted((g for g in found if g), key=lambda g: g.started_at))


def read_generation(path: Path) -> Generation | None:
    try:
        return Generation(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _now() -> str:
    return format_time(datetime.now(UTC))


# --------------------------------------------------------------------------- serve


@dataclass(frozen=True)
class ServeArgs:
    env_file: Path
    var: str
    url: str
    pidfile: Path
    stats_dir: Path
    interval: float = 0.2

    def argv(self) -> list[str]:
        return [
            *(sys.executable, "-m", MODULE, "serve"),
            *("--env-file", str(self.env_file), "--var", self.var, "--url", self.url),
            *("--pidfile", str(self.pidfile), "--stats", str(self.stats_dir)),
            *("--interval", str(self.interval)),
        ]


def read_key(env_file: Path, var: str) -> str | None:
    """``var``'s value in the dotenv file (quotes stripped), or None."""
    try:
        lines = env_file.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        name, sep, value = line.removeprefix("export ").partition("=")
        if sep and name.strip() == var:
            return value.strip().strip("'\"") or None
    return None


def serve(args: ServeArgs) -> int:
    """Run one generation until SIGTERM; see the module docstring."""
    key = read_key(args.env_file, args.var)  # once: this is the point
    if key is None:
        print(f"readonce: {args.var} is not set in {args.env_file}", file=sys.stderr)
        return 2
    pidfile, stats_dir = args.pidfile, args.stats_dir
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stats_dir.mkdir(parents=True, exist_ok=True)
    gen = Generation(os.getpid(), key[:PREFIX_LEN], fingerprint(key), _now())
    path = stats_dir / f"{gen.pid}.json"
    _write_atomic(path, json.dumps(asdict(gen)))
    written = time.monotonic()
    with httpx.Client(base_url=args.url, timeout=5) as client:
        while not stop.is_set():
            _call(client, key, gen)
            if gen.first_accepted_at is None and gen.accepted:
                gen.first_accepted_at = _now()
                _write_atomic(path, json.dumps(asdict(gen)))
                _claim(pidfile, gen.pid)
            elif time.monotonic() - written >= 1.0:
                _write_atomic(path, json.dumps(asdict(gen)))
                written = time.monotonic()
            stop.wait(args.interval)
    gen.stopped_at = _now()
    _write_atomic(path, json.dumps(asdict(gen)))
    if read_pid(pidfile) == gen.pid:
        pidfile.unlink(missing_ok=True)
    return 0


def _call(client: httpx.Client, key: str, gen: Generation) -> None:
    """One authenticated call: the cheap one the sandbox demo's consumer makes."""
    try:
        answer = client.post(
            "/api/v1/traces", json={"event": "readonce"}, headers={"Authorization": f"Bearer {key}"}
        )
    except httpx.HTTPError:
        gen.other_failures += 1
        return
    gen.requests += 1
    if answer.status_code == 401:
        gen.auth_failures += 1
    elif answer.status_code < 300:
        gen.accepted += 1
    else:
        gen.other_failures += 1


# --------------------------------------------------------------------------- restart


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def is_running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie is not: nobody may reap it here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _is_ours(pid: int) -> bool:
    """True unless ``/proc`` shows ``pid`` is some other program (a pid reused since)."""
    try:
        return MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True


def start(args: ServeArgs) -> subprocess.Popen[bytes]:
    """A new generation, detached in a session of its own (it outlives whoever started it)."""
    args.stats_dir.mkdir(parents=True, exist_ok=True)
    with (args.stats_dir / "readonce.log").open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            args.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


def wait_ready(args: ServeArgs, proc: subprocess.Popen[bytes], timeout: float) -> Generation:
    """The new generation's record once it made an accepted call; :class:`RestartFailed` if it
    exits or does not get there within ``timeout`` (it is then stopped)."""
    deadline = time.monotonic() + timeout
    path = args.stats_dir / f"{proc.pid}.json"
    while time.monotonic() < deadline:
        gen = read_generation(path)
        if gen and gen.first_accepted_at:
            return gen
        if proc.poll() is not None:
            status = proc.returncode
            raise RestartFailed(f"the new process exited with status {status} before any accepted call")
        time.sleep(0.05)
    proc.terminate()
    proc.wait(timeout=10)
    gen = read_generation(path)
    seen = f" ({gen.auth_failures} of {gen.requests} calls refused with 401)" if gen else ""
    raise RestartFailed(f"the new process made no accepted call within {timeout:g}s{seen}; it was stopped")


def _claim(pidfile: Path, pid: int) -> None:
    """A generation started on its own takes the pidfile; one started by :func:`restart` finds
    it held by the live generation it replaces, and leaves it to the restart."""
    held = read_pid(pidfile)
    if held is None or held == pid or not is_running(held):
        _write_atomic(pidfile, f"{pid}\n")


def restart(args: ServeArgs, *, ready_timeout: float = 30.0) -> Generation:
    """Start a new generation, wait until it works, then stop the old one; the new one's record.
    Interrupted (SIGTERM while waiting), it stops the new generation and leaves the old one.

    Restarts of one service take turns (an exclusive lock beside the pidfile): a restart left
    running by a rotator killed mid-roll and the next pass's restart of the same attempt would
    otherwise both start a generation and stop only the one old process they both saw."""
    lock = args.pidfile.with_name(args.pidfile.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        return _restart(args, ready_timeout)


def _restart(args: ServeArgs, ready_timeout: float) -> Generation:
    old = read_pid(args.pidfile)
    proc = start(args)
    try:
        gen = wait_ready(args, proc, ready_timeout)
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        raise
    _write_atomic(args.pidfile, f"{proc.pid}\n")
    if old is None or old == proc.pid or not is_running(old) or not _is_ours(old):
        return gen
    os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while is_running(old):
        if time.monotonic() > deadline:
            raise RestartFailed(f"the new process {proc.pid} is serving, but the old one {old} did not stop")
        time.sleep(0.05)
    return gen


# --------------------------------------------------------------------------- command line


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", type=Path, required=True, help="dotenv file holding the key")
    parser.add_argument("--var", required=True, help="the key's variable in that file")
    parser.add_argument("--url", required=True, help="the vendor's base URL")
    parser.add_argument("--pidfile", type=Path, required=True, help="the serving generation's pid")
    parser.add_argument("--stats", type=Path, required=True, help="directory of per-generation stats")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between calls")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_options(sub.add_parser("serve", help="run one generation until SIGTERM"))
    restart_cmd = sub.add_parser("restart", help="start a new generation, then stop the old one")
    _serve_options(restart_cmd)
    restart_cmd.add_argument("--ready-timeout", type=float, default=30.0)
    receive = sub.add_parser("receive", help="restart on each verified webhook delivery")
    _serve_options(receive)
    receive.add_argument("--ready-timeout", type=float, default=30.0)
    receive.add_argument("--secret-env", required=True, help="variable holding the signing secret")
    receive.add_argument("--port", type=int, default=0)
    receive.add_argument("--port-file", type=Path, help="write the port listened on here")
    stats = sub.add_parser("stats", help="sums over every generation")
    stats.add_argument("--stats", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args.insert(0, "serve")
    opts = _parser().parse_args(args)
    if opts.command == "stats":
        print(json.dumps(read_stats(opts.stats).to_dict()))
        return 0
    serve_args = ServeArgs(opts.env_file, opts.var, opts.url, opts.pidfile, opts.stats, opts.interval)
    if opts.command == "serve":
        return serve(serve_args)
    if opts.command == "receive":
        from rotator.sandbox.hook import run_receiver

        return run_receiver(serve_args, opts.secret_env, opts.port, opts.port_file, opts.ready_timeout)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        gen = restart(serve_args, ready_timeout=opts.ready_timeout)
    except RestartFailed as exc:
        print(f"readonce restart: {exc}", file=sys.stderr)
        return 1
    print(f"readonce restart: pid {gen.pid} serving with key {gen.prefix}… ({gen.fingerprint})")
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise RestartFailed("interrupted; the new process was stopped, the old one is left serving")


if __name__ == "__main__":
    sys.exit(main())
