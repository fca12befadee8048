"""Shared fixtures. Backend harnesses for the store contract suite live in tests/harnesses/."""

from __future__ import annotations

pytest_plugins = [
    "tests.harnesses.file",
    "tests.harnesses.aws",
    "tests.harnesses.vault",
    "tests.harnesses.gcp",
]
