"""The rotation file (pydantic models) and the process settings (pydantic-settings).

The file is the user's interface and stays stable; see README.md for its shape.
Every error names the field path and the YAML line it came from.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from rotator.errors import ConfigError

# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """``15m``, ``2h30m``, ``30d``, ``500ms`` or a number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration like 15m, 24h or 30d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError("a duration like 15m, 24h or 30d")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"{value!r} is not a duration like 15m, 24h or 30d")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """Shortest unit spelling of a timedelta: ``90s`` -> ``1m30s``."""
    seconds = value.total_seconds()
    if seconds < 1 and seconds:
        return f"{round(seconds * 1000)}ms"
    out, rest = [], int(seconds)
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        assert isinstance(size, int)
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- credentials


class EnvRef(_Model):
    """A value taken from an environment variable of the rotator's process."""

    env: str = Field(min_length=1)


class KeyRef(_Model):
    """A value taken from another declared key's current version (the rotator's own key)."""

    key: str = Field(min_length=1)


Credential = EnvRef | KeyRef


# --------------------------------------------------------------------------- policy


class VerifyPolicy(_Model):
    """How long to wait for consumers to leave the old key, and what to do if they don't."""

    drain: Duration = timedelta(minutes=15)
    """The old key must stay unused this long after the propagation budget."""
    propagation: Duration = timedelta(minutes=2)
    """Time consumers may take to pick up the new value after promotion."""
    timeout: Duration = timedelta(hours=24)
    """After this long since promotion without a drain, the key is held."""
    on_timeout: Literal["hold", "revoke"] = "hold"
    require_new_traffic: bool = False
    """Also require the new key to have been used since promotion."""


class Defaults(_Model):
    max_age: Duration = timedelta(days=30)
    verify: VerifyPolicy = VerifyPolicy()


# --------------------------------------------------------------------------- issuers


class AdjudonIssuerSpec(_Model):
    type: Literal["adjudon"]
    base_url: str = "https://api.adjudon.com"
    credential: Credential
    timeout: Duration = timedelta(seconds=10)


class AdjutorIssuerSpec(_Model):
    type: Literal["adjutor"]
    base_url: str = "https://adjutor.lendsqr.com"
    app_id: str = Field(min_length=1)
    timeout: Duration = timedelta(seconds=10)


IssuerSpec = Annotated[AdjudonIssuerSpec | AdjutorIssuerSpec, Field(discriminator="type")]


# --------------------------------------------------------------------------- targets


class FileTarget(_Model):
    """A local file: ``raw`` (the key alone), ``dotenv`` or ``json`` with a ``field``."""

    type: Literal["file"]
    path: str = Field(min_length=1)
    format: Literal["raw", "dotenv", "json"] = "raw"
    field: str | None = None

    @model_validator(mode="after")
    def _field_needs_map(self) -> FileTarget:
        if self.format == "raw" and self.field is not None:
            raise ValueError("field needs format dotenv or json")
        if self.format != "raw" and self.field is None:
            raise ValueError(f"format {self.format} needs a field")
        return self


class AwsTarget(_Model):
    """AWS Secrets Manager. Credentials from the default chain, a profile or a role."""

    type: Literal["aws"]
    secret_id: str = Field(min_length=1)
    region: str | None = None
    field: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    endpoint_url: str | None = None
    kms_key_id: str | None = None


class VaultAuth(_Model):
    """How to log in to Vault. ``token`` reads ``VAULT_TOKEN`` (or ``token_env``)."""

    method: Literal["token", "approle", "kubernetes"] = "token"
    mount: str | None = None
    token_env: str = "VAULT_TOKEN"
    role_id_env: str = "VAULT_ROLE_ID"
    secret_id_env: str = "VAULT_SECRET_ID"
    role: str | None = None
    jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class VaultTarget(_Model):
    """HashiCorp Vault or OpenBao, KV version 2."""

    type: Literal["vault"]
    url: str = Field(min_length=1)
    mount: str = "secret"
    path: str = Field(min_length=1)
    field: str = "value"
    namespace: str | None = None
    auth: VaultAuth = VaultAuth()


class GcpTarget(_Model):
    """GCP Secret Manager. Credentials from application default credentials."""

    type: Literal["gcp"]
    project: str = Field(min_length=1)
    secret: str = Field(min_length=1)
    field: str | None = None
    endpoint: str | None = None
    consumers_read: Literal["latest", "alias"] = "latest"
    """What consumers read: the ``latest`` version, or the ``current_alias``."""
    current_alias: str = "current"
    pending_alias: str = "pending"


TargetSpec = Annotated[
    FileTarget | AwsTarget | VaultTarget | GcpTarget, Field(discriminator="type")
]


# --------------------------------------------------------------------------- keys


class KeySpec(_Model):
    issuer: str = Field(min_length=1)
    kind: Literal["workspace", "agent"] | None = None
    agent_id: str | None = None
    schedule: str | None = None
    strategy: Literal["overlap", "cutover"] | None = None
    max_age: Duration | None = None
    verify: VerifyPolicy | None = None
    bootstrap: EnvRef | None = None
    targets: list[TargetSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _agent_needs_id(self) -> KeySpec:
        if self.kind == "agent" and not self.agent_id:
            raise ValueError("kind agent needs an agent_id")
        if self.kind != "agent" and self.agent_id:
            raise ValueError("agent_id is only for kind agent")
        return self
