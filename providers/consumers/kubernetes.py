"""Placeholder until the kubernetes consumer lands (being built now)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rotator.abc import Consumer


def make_consumer(spec: Any, *, key: str, base_dir: Path) -> Consumer:
    raise NotImplementedError("the kubernetes consumer is not built yet")
