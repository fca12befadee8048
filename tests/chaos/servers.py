"""The stores' servers for the chaos run, each in its own process.

* :class:`OpenBao` - a real (not ``-dev``) OpenBao server with persistent storage: it is
  initialised once (one unseal key), unsealed after every start, and keeps its data
  across :meth:`OpenBao.restart`. KV v2 is mounted at ``secret/``.
* :class:`MotoServer` - moto's Secrets Manager on a free loopback port, in a subprocess so
  it does not share the harness's interpreter lock.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.openbao import bao_binary


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-1500:]}")
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up: {log.read_text(errors='replace')[-1500:]}")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class OpenBao:
    """A persistent single-node OpenBao server on ``127.0.0.1:<port>``."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root_token = ""
        self._unseal_key = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def _config(self) -> Path:
        # OpenBao 2 dropped the "file" backend; pebbledb is its single-node on-disk store
        data = self.workdir / "data"
        path = self.workdir / "openbao.hcl"
        path.write_text(
            f'storage "pebbledb" {{ path = "{data}" }}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = 1\n}}\n'
            f'api_addr = "{self.url}"\n'
        )
        return path

    def start(self) -> OpenBao:
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = bao_binary()
        log = self.workdir / "openbao.log"
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(binary), "server", f"-config={self._config()}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={"HOME": str(self.workdir), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        # /sys/health answers 501 before init, 503 while sealed, 200 when active
        _wait(
            "openbao",
            lambda: httpx.get(f"{self.url}/v1/sys/health", timeout=1).status_code in (200, 501, 503),
            self._proc,
            log,
        )
        with httpx.Client(base_url=self.url, timeout=10) as api:
            if not self.root_token:
                init = api.put("/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1})
                init.raise_for_status()
                answer = init.json()
                self.root_token, self._unseal_key = answer["root_token"], answer["keys"][0]
            api.put("/v1/sys/unseal", json={"key": self._unseal_key}).raise_for_status()
            _wait("openbao unseal", lambda: api.get("/v1/sys/health").status_code == 200, self._proc, log)
            headers = {"X-Vault-Token": self.root_token}
            mounts = api.get("/v1/sys/mounts", headers=headers).json()
            if "secret/" not in mounts.get("data", mounts):
                api.post(
                    "/v1/sys/mounts/secret", headers=headers, json={"type": "kv", "options": {"version": "2"}}
                ).raise_for_status()
        return self

    def restart(self, *, kill: bool = False, down: float = 0.0) -> float:
        """Stop (SIGTERM, or SIGKILL), stay down ``down`` seconds, start again and unseal;
        returns the seconds it was unavailable."""
        started = time.monotonic()
        _stop(self._proc, signal.SIGKILL if kill else signal.SIGTERM)
        time.sleep(down)
        self.start()
        self.restarts += 1
        return time.monotonic() - started

    def stop(self) -> None:
        _stop(self._proc)
        self._proc = None

    def client(self, url: str | None = None, timeout: float = 10) -> object:
        """An ``hvac.Client`` on ``url`` (this server by default), as root."""
        import hvac

        return hvac.Client(url=url or self.url, token=self.root_token, timeout=timeout)


class MotoServer:
    """moto's server on a free loopback port, in a subprocess."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "moto.log"
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        _wait(
            "moto",
            lambda: httpx.get(f"{self.url}/moto-api/data.json", timeout=1).status_code == 200,
            self._proc,
            log,
        )
        return self

    def stop(self) -> None:
        _stop(self._proc)
        self._proc = None


def aws_env() -> dict[str, str]:
    """Credentials moto accepts, for the rotator's processes and the consumers."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
