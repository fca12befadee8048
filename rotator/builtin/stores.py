"""The built-in stores' config models (entry points ``rotator.stores``): a local file, AWS
Secrets Manager, Vault/OpenBao, GCP Secret Manager and a Kubernetes Secret (readable), and the
write-only targets: one environment variable of a Lambda function, a GitHub Actions secret.
Each factory imports its provider (and so its SDK) only when called."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from rotator.spec.models import TargetModel
from rotator.spec.types import EnvRef, Text, Url, _Model

if TYPE_CHECKING:
    from rotator.abc import SecretStore, WriteOnlyTarget


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


class KubernetesTarget(TargetModel):
    """A Kubernetes ``Secret``: one field of its ``data``; the other fields are kept. Its
    ``resourceVersion`` is the revision, the stamps live in annotations, and the pending value
    in a field of its own until it is promoted."""

    type: Literal["kubernetes"]
    namespace: Text = Field(min_length=1)
    secret: Text = Field(min_length=1)
    """The Secret's name."""
    field: Text = "value"
    """The key in the Secret's ``data`` that pods read."""
    kubeconfig: Text | None = None
    """A kubeconfig file; default: in-cluster config, else ``$KUBECONFIG`` or ``~/.kube/config``."""
    context: Text | None = None

    def open_store(self, *, base_dir: Path) -> SecretStore:
        from providers.kubernetes import open_store

        return open_store(self, base_dir=base_dir)


class LambdaEnvTarget(TargetModel):
    """Write-only: one environment variable of a Lambda function (the rest of its
    configuration is kept; the update is conditional on ``RevisionId``). Invocations that
    start once the update is ``Successful`` get the new key."""

    type: Literal["lambda_env"]
    function: Text = Field(min_length=1)
    """The function's name or ARN."""
    variable: Text = Field(min_length=1, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    region: Text | None = None
    profile: Text | None = None
    role_arn: Text | None = None
    endpoint_url: Url | None = None

    write_only: ClassVar[bool] = True

    def open_write_only(self, *, base_dir: Path) -> WriteOnlyTarget:
        from providers.lambda_env import open_write_only

        return open_write_only(self, base_dir=base_dir)


class GithubTarget(TargetModel):
    """Write-only: a GitHub Actions secret of a repository (or of one of its environments),
    sealed with the repository's public key (libsodium sealed box)."""

    type: Literal["github"]
    repository: Text = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    """``owner/name``."""
    secret_name: Text = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    environment: Text | None = None
    """An environment of the repository: its secret instead of the repository's."""
    api_url: Url = "https://api.github.com"
    """The REST API root (GitHub Enterprise: ``https://HOST/api/v3``)."""
    token: EnvRef = EnvRef(env="GITHUB_TOKEN")

    write_only: ClassVar[bool] = True

    def open_write_only(self, *, base_dir: Path) -> WriteOnlyTarget:
        from providers.github import open_write_only

        return open_write_only(self, base_dir=base_dir)
