"""Builders shared by the end-to-end tests: a rotation file over the emulator and file targets."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rotator.sandbox.emulator import EmulatorServer

ADMIN_ENV = "E2E_ADJUDON_ADMIN_KEY"


def write_spec(
    tmp: Path,
    server: EmulatorServer,
    *,
    drain: str = "1s",
    propagation: str = "1s",
    timeout: str = "60s",
    max_age: str = "30d",
    targets: int = 2,
    extra: str = "",
) -> Path:
    """A rotation file with one agent key fanned out to ``targets`` file targets."""
    rows = [
        "      - {type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}",
        "      - {type: file, path: secrets/b.json, format: json, field: api_key}",
        "      - {type: file, path: secrets/c.key}",
    ][:targets]
    text = f"""\
version: 1
state_dir: state
defaults:
  max_age: {max_age}
  verify: {{drain: {drain}, propagation: {propagation}, timeout: {timeout}}}
issuers:
  emu:
    type: adjudon
    base_url: {server.url}
    credential: {{env: {ADMIN_ENV}}}
keys:
  payments:
    issuer: emu
    kind: agent
    agent_id: payments
    targets:
{chr(10).join(rows)}
{extra}"""
    (tmp / "secrets").mkdir(exist_ok=True)
    path = tmp / "rotations.yaml"
    path.write_text(text)
    return path


def read_dotenv_key(path: Path) -> str | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name == "ADJUDON_API_KEY":
            return value.strip().strip("'\"")
    return None


def read_json_key(path: Path) -> str | None:
    return json.loads(path.read_text())["api_key"] if path.exists() else None


def journal(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "state" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def agent_keys(server: EmulatorServer, *, active: bool | None = None) -> list[dict[str, Any]]:
    keys = [k for k in server.emulator.adjudon_keys() if k["type"] == "agent"]
    if active is None:
        return keys
    return [k for k in keys if (k["status"] == "active") == active]


class FakeClock:
    """A settable UTC clock for the engine and the emulator: every reading moves it on by a
    millisecond (so times differ), and :meth:`sleep` advances it instead of sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
        self.slept = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(milliseconds=1)
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)
            self.slept += seconds
