"""Builders shared by the end-to-end tests: a rotation file over the emulator and file targets."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rotator.sandbox.emulator import EmulatorServer

ADMIN_ENV = "E2E_ADJUDON_ADMIN_KEY"


Fields = Mapping[str, str | Sequence[str]]


VENDOR_CLOCK_SLACK_S = 1.0
"""The engine knows the vendor's clock to the second (its `Date` header, taken at its earliest),
so a time it judges there (an age, a drain, a timeout) may come up to this much later than by
the local clock: never earlier."""


def rotation_yaml(
    *,
    issuers: Mapping[str, str | Mapping[str, str]],
    keys: Mapping[str, Fields],
    defaults: Mapping[str, str] | None = None,
    state_dir: str | None = "state",
    extra: str = "",
) -> str:
    """The text of a rotation file (``version: 1``), the one builder the tests share.

    An issuer is a YAML flow mapping (``{type: adjudon, ...}``) or a mapping of its fields,
    written as a block. A key is a mapping of its fields; a sequence (its ``targets``) is
    written as a block list, one flow mapping a line. ``extra`` (top-level sections such as
    ``notify:``) is appended as it is.
    """
    lines = ["version: 1"]
    if state_dir is not None:
        lines.append(f"state_dir: {state_dir}")
    if defaults:
        lines += ["defaults:", *(f"  {name}: {value}" for name, value in defaults.items())]
    lines.append("issuers:")
    for name, issuer in issuers.items():
        if isinstance(issuer, str):
            lines.append(f"  {name}: {issuer}")
        else:
            lines += [f"  {name}:", *(f"    {field}: {value}" for field, value in issuer.items())]
    lines.append("keys:")
    for name, fields in keys.items():
        lines.append(f"  {name}:")
        for field, value in fields.items():
            if isinstance(value, str):
                lines.append(f"    {field}: {value}")
            else:
                lines += [f"    {field}:", *(f"      - {item}" for item in value)]
    return "\n".join(lines) + "\n" + extra


def write_rotation_file(tmp: Path, text: str, *, secrets: bool = True) -> Path:
    """``text`` as ``rotations.yaml`` in ``tmp`` (and a ``secrets/`` folder for file targets)."""
    if secrets:
        (tmp / "secrets").mkdir(exist_ok=True)
    path = tmp / "rotations.yaml"
    path.write_text(text)
    return path


def adjudon_issuer(url: str, env: str = ADMIN_ENV) -> str:
    """An Adjudon issuer over the emulator, its admin key read from ``env``."""
    return f'{{type: adjudon, base_url: "{url}", credential: {{env: {env}}}}}'


def adjutor_app_yaml(
    url: str,
    app_id: str,
    targets: Sequence[str],
    *,
    state_dir: str | None = "state",
    extra: str = "",
    **fields: str,
) -> str:
    """One Adjútor app key ``app`` (issuer ``lendsqr``, the emulator at ``url``) in ``targets``."""
    return rotation_yaml(
        issuers={"lendsqr": f'{{type: adjutor, base_url: "{url}", app_id: {app_id}}}'},
        keys={"app": {"issuer": "lendsqr", **fields, "targets": targets}},
        state_dir=state_dir,
        extra=extra,
    )


APP_TARGETS = (
    "{type: file, path: secrets/app.key}",
    "{type: file, path: secrets/app.env, format: dotenv, field: ADJUTOR_KEY}",
)
"""An Adjútor app's key as a whole file and as one line of a dotenv file."""


def adjutor_app(
    tmp: Path, server: EmulatorServer, targets: Sequence[str] = APP_TARGETS, *, extra: str = ""
) -> tuple[str, Path]:
    """Adjútor app ``app_9`` at the emulator, its key stored in ``secrets/app.key`` (the first
    pass adopts it), and a rotation file keeping key ``app`` in ``targets``: the raw key and
    the file."""
    raw = server.emulator.create_app("app_9")
    (tmp / "secrets").mkdir(exist_ok=True)
    (tmp / "secrets/app.key").write_text(raw + "\n")
    return raw, write_rotation_file(tmp, adjutor_app_yaml(server.url, "app_9", targets, extra=extra))


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
        "{type: file, path: secrets/a.env, format: dotenv, field: ADJUDON_API_KEY}",
        "{type: file, path: secrets/b.json, format: json, field: api_key}",
        "{type: file, path: secrets/c.key}",
    ][:targets]
    text = rotation_yaml(
        defaults={
            "max_age": max_age,
            "verify": f"{{drain: {drain}, propagation: {propagation}, timeout: {timeout}}}",
        },
        issuers={"emu": {"type": "adjudon", "base_url": server.url, "credential": f"{{env: {ADMIN_ENV}}}"}},
        keys={"payments": {"issuer": "emu", "kind": "agent", "agent_id": "payments", "targets": rows}},
        extra=extra,
    )
    return write_rotation_file(tmp, text)


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
