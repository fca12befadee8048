"""Process settings, from ``ROTATOR_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from rotator.errors import ConfigError


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Process settings, from ``ROTATOR_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="ROTATOR_", extra="ignore")

    file: Path = Path("rotations.yaml")
    """The rotation file, when ``-f`` is not given."""
    state_dir: Path | None = None
    """Overrides the file's ``state_dir``."""
    parallel: int = Field(default=4, ge=1, le=64)
    """Keys reconciled at once in one pass."""
    debug: bool = False
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"],
        BeforeValidator(_upper),  # ROTATOR_LOG_LEVEL=debug means DEBUG
    ] = "WARNING"
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line (for log pipelines)."""
    retry_attempts: int = Field(default=5, ge=1, le=20)
    retry_initial: float = Field(default=0.5, gt=0)
    retry_max_total: float = Field(default=120.0, gt=0)
    probe_timeout: float = Field(default=60.0, gt=0)
    """How long a new key may take to be accepted by the vendor (eventual consistency)."""
    roll_retry: float = Field(default=30.0, gt=0)
    """Seconds before a consumer that failed to roll is tried again (``--wait``; else the next
    pass tries it)."""


def load_settings() -> Settings:
    """The process settings; an invalid ``ROTATOR_*`` variable is a ConfigError naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        prefix = Settings.model_config.get("env_prefix", "")
        problems = []
        for e in exc.errors():
            name = prefix + "_".join(str(p) for p in e["loc"]).upper()
            problems.append(f"{name}: {e['msg']} (got {os.environ.get(name, e['input'])!r})")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None
