"""Shared fixtures. Backend harnesses for the store contract suite live in tests/harnesses/.

Two ways to run the command line, one of each: the ``cli`` fixture runs it in this
process (fast; exit code and both streams), :func:`run_cli` in a subprocess (for
signals, crashes and a fresh interpreter). Rotation files come from
``tests/e2e_helpers.py``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rotator.cli import main
from rotator.sandbox.emulator import EmulatorServer
from tests.e2e_helpers import ADMIN_ENV

pytest_plugins = [
    "pytester",
    "tests.openbao",
    "tests.harnesses.memory",
    "tests.harnesses.file",
    "tests.harnesses.aws",
    "tests.harnesses.vault",
    "tests.harnesses.gcp",
    "tests.harnesses.kubernetes",
    "tests.harnesses.consumer_command",
    "tests.harnesses.consumer_webhook",
    "tests.harnesses.consumer_ecs",
    "tests.harnesses.write_only_lambda_env",
    "tests.harnesses.write_only_github",
    "tests.harnesses.consumer_kubernetes",
]


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A fresh vendor emulator on a free loopback port."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def admin(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The emulator's workspace admin key, in ``ADMIN_ENV`` as the rotation files name it."""
    key = emulator.emulator.bootstrap_workspace_key()
    monkeypatch.setenv(ADMIN_ENV, key)
    return key


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``rotator`` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rotator.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class Outcome:
    """What one in-process run of the command line gave: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Outcome]]:
    """Run the real command line in this process; returns its exit code and both streams."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    # the session's moto server runs in this process: its request log is not the CLI's output
    werkzeug = logging.getLogger("werkzeug")
    werkzeug_level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)

    def run(*args: str) -> Outcome:
        capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 0
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    yield run
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    werkzeug.setLevel(werkzeug_level)
