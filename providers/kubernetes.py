"""Placeholder until the kubernetes store lands (being built now)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rotator.abc import SecretStore


def open_store(spec: Any, *, base_dir: Path) -> SecretStore:
    raise NotImplementedError("the kubernetes store is not built yet")
