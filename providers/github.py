"""Placeholder until the github write-only target lands (being built now)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rotator.abc import WriteOnlyTarget


def open_write_only(spec: Any, *, base_dir: Path) -> WriteOnlyTarget:
    raise NotImplementedError("the github target is not built yet")
