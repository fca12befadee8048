"""Consumers: services that read their key from a store and call the vendor without pause.

Each :class:`Consumer` has two threads, as a real service with a background secret refresh
would: a *reader* re-reads the store every ``reread`` seconds (shorter than the rotation's
propagation budget) and, when the read fails, keeps the key it has; a *sender* calls the
vendor every ``interval`` seconds with whatever key it holds. A 401 is an auth failure:
in overlap mode there must be none.

A :class:`ReadOnceService` is the other kind: a process that reads its key from a dotenv file
once, at start, and calls the vendor every 0.1-0.2 s; only the rotation's ``command`` consumer,
which restarts it, moves it to a new key.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rotator.sandbox.readonce import ServeArgs, Totals, is_running, read_stats
from rotator.secret import fingerprint

Reader = Callable[[], "str | None"]


@dataclass
class Consumer:
    """One service reading one target."""

    name: str
    read: Reader
    vendor_url: str
    reread: float = 0.3
    interval: float = 0.1
    requests: int = 0
    auth_failures: int = 0
    other_failures: int = 0
    read_errors: Counter[str] = field(default_factory=Counter)
    """Failed store reads by exception type (the consumer kept its key each time)."""
    failures: list[str] = field(default_factory=list)
    """``<time> <fingerprint> <code>`` of each 401: never the key."""
    values: set[str] = field(default_factory=set, repr=False)
    """Every raw value this consumer held (kept in memory only, to scan outputs for leaks)."""
    _key: str | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Consumer:
        for target, role in ((self._reader, "reader"), (self._sender, "sender")):
            thread = threading.Thread(target=target, name=f"{self.name}-{role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _reader(self) -> None:
        while not self._stop.is_set():
            try:
                found = self.read()
            except Exception as exc:  # noqa: BLE001 - any read failure: keep the key we have
                self.read_errors[type(exc).__name__] += 1
            else:
                if found:
                    self._key = found
                    self.values.add(found)
            self._stop.wait(self.reread)

    def _sender(self) -> None:
        with httpx.Client(base_url=self.vendor_url, timeout=10) as client:
            while not self._stop.is_set():
                key = self._key
                if key is not None:
                    self._send(client, key)
                self._stop.wait(self.interval)

    def _send(self, client: httpx.Client, key: str) -> None:
        try:
            answer = client.post(
                "/api/v1/traces", json={"from": self.name}, headers={"Authorization": f"Bearer {key}"}
            )
        except httpx.HTTPError:
            self.other_failures += 1
            return
        self.requests += 1
        if answer.status_code == 401:
            self.auth_failures += 1
            try:
                code = answer.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "?"
            self.failures.append(f"{time.time():.3f} {fingerprint(key)} {code}")
        elif answer.status_code >= 300:
            self.other_failures += 1


# --------------------------------------------------------------------------- readers


def file_reader(path: Path, fmt: str, field_name: str | None) -> Reader:
    """Read a file target the way its consumer would (the current value only)."""

    def read() -> str | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        if fmt == "raw":
            return text.strip() or None
        if fmt == "json":
            value = json.loads(text).get(field_name) if text.strip() else None
            return value if isinstance(value, str) else None
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() == field_name:
                return value.strip().strip("'\"")
        return None

    return read


def aws_reader(endpoint: str, secret_id: str, field_name: str | None) -> Reader:
    """Read AWSCURRENT through ``endpoint``, with short timeouts and one try."""
    import boto3
    from botocore.config import Config

    client: Any = boto3.client(
        "secretsmanager",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=2),
    )

    def read() -> str | None:
        try:
            text = client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"]
        except client.exceptions.ResourceNotFoundException:
            return None
        if field_name is None:
            return str(text)
        value = json.loads(text).get(field_name)
        return value if isinstance(value, str) else None

    return read


def vault_reader(url: str, token: str, path: str, field_name: str) -> Reader:
    """Read the latest KV v2 version through ``url`` (what a Vault consumer reads)."""
    import hvac
    import hvac.exceptions

    client = hvac.Client(url=url, token=token, timeout=2)

    def read() -> str | None:
        try:
            answer = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point="secret", raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        value = answer["data"]["data"].get(field_name)
        return value if isinstance(value, str) else None

    return read


# --------------------------------------------------------------------------- read-once services


@dataclass
class ReadOnceService:
    """A service that reads its key once, at start (``rotator.sandbox.readonce``), restarted by
    the rotation's ``command`` consumer; its generations' counts live in ``stats``."""

    name: str
    env_file: Path
    var: str
    vendor_url: str
    home: Path
    interval: float = 0.15

    @property
    def pidfile(self) -> Path:
        return self.home / "service.pid"

    @property
    def stats(self) -> Path:
        return self.home / "stats"

    def restart_argv(self, ready_timeout: float = 20.0) -> list[str]:
        """What the ``command`` consumer runs: start a new generation, then stop the old one."""
        args = ServeArgs(self.env_file, self.var, self.vendor_url, self.pidfile, self.stats, self.interval)
        argv = args.argv()
        return [*argv[:3], "restart", *argv[4:], "--ready-timeout", f"{ready_timeout:g}"]

    def totals(self) -> Totals:
        return read_stats(self.stats)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every live generation and wait until each wrote its last counts."""
        live = [g.pid for g in self.totals().running]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(is_running(pid) for pid in live) and time.monotonic() < deadline:
            time.sleep(0.05)
