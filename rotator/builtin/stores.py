"""The built-in stores' config models (entry points ``rotator.stores``): a local file, AWS
Secrets Manager, Vault/OpenBao and GCP Secret Manager; each factory imports its provider
(and so its SDK) only when called."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from rotator.spec.models import TargetModel
from rotator.spec.types import Text, Url, _Model

if TYPE_CHECKING:
    from rotator.abc import SecretStore


class FileTarget(TargetModel):
    """A local file: ``raw`` (the key alone), ``dotenv`` or ``json`` with a ``field``."""

    type: Literal["file"]
    path: Text = Field(min_length=1)
    format: Literal["raw", "dotenv", "json"] = "raw"
    field: Text | None = None

    @model_validator(mode="after")
    def _field_needs_map(self) -> FileTarget:
        if self.format == "raw" and self.field is not None:
            raise ValueError("field needs format dotenv or json")
        if self.format != "raw" and self.field is None:
            raise ValueError(f"format {self.format} needs a field")
        return self

    def open_store(self, *, base_dir: Path) -> SecretStore:
        from providers.file import open_store

        return open_store(self, base_dir=base_dir)


class AwsTarget(TargetModel):
    """AWS Secrets Manager. Credentials from the default chain, a profile or a role."""

    type: Literal["aws"]
    secret_id: Text = Field(min_length=1)
    region: Text | None = None
    field: Text | None = None
    profile: Text | None = None
    role_arn: Text | None = None
    endpoint_url: Url | None = None
    kms_key_id: Text | None = None

    def open_store(self, *, base_dir: Path) -> SecretStore:
        from providers.aws import open_store

        return open_store(self, base_dir=base_dir)


class VaultAuth(_Model):
    """How to log in to Vault. ``token`` reads ``VAULT_TOKEN`` (or ``token_env``)."""

    method: Literal["token", "approle", "kubernetes"] = "token"
    mount: str | None = None
    token_env: str = "VAULT_TOKEN"  # noqa: S105 - the name of a variable, not a token
    role_id_env: str = "VAULT_ROLE_ID"
    secret_id_env: str = "VAULT_SECRET_ID"  # noqa: S105 - a variable name
    role: str | None = None
    jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class VaultTarget(TargetModel):
    """HashiCorp Vault or OpenBao, KV version 2."""

    type: Literal["vault"]
    url: Url
    mount: Text = "secret"
    path: Text = Field(min_length=1)
    field: Text = "value"
    namespace: Text | None = None
    auth: VaultAuth = VaultAuth()

    def open_store(self, *, base_dir: Path) -> SecretStore:
        from providers.vault import open_store

        return open_store(self, base_dir=base_dir)


class GcpTarget(TargetModel):
    """GCP Secret Manager. Credentials from application default credentials."""

    type: Literal["gcp"]
    project: Text = Field(min_length=1)
    secret: Text = Field(min_length=1)
    field: Text | None = None
    endpoint: Text | None = None
    consumers_read: Literal["latest", "alias"] = "latest"
    """What consumers read: the ``latest`` version, or the ``current_alias``."""
    current_alias: Text = "current"
    pending_alias: Text = "pending"

    def open_store(self, *, base_dir: Path) -> SecretStore:
        from providers.gcp import open_store

        return open_store(self, base_dir=base_dir)
