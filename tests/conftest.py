"""Shared fixtures. Backend harnesses for the store contract suite live in tests/harnesses/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rotator.sandbox.emulator import EmulatorServer

pytest_plugins = [
    "pytester",
    "tests.openbao",
    "tests.harnesses.memory",
    "tests.harnesses.file",
    "tests.harnesses.aws",
    "tests.harnesses.vault",
    "tests.harnesses.gcp",
]


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A fresh vendor emulator on a free loopback port."""
    with EmulatorServer() as server:
        yield server


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
