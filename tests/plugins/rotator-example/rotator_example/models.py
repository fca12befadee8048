"""The plugin's config models: what a rotation file writes under ``type: example`` (an issuer)
and ``type: exdir`` (a target). Importing this module imports no client: each factory imports
its implementation when called."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rotator.spec import (
    Credential,
    Duration,
    EnvRef,
    IssuerModel,
    KeyRef,
    KeySpec,
    Problem,
    TargetModel,
    Text,
    Url,
)

if TYPE_CHECKING:
    import httpx

    from rotator.abc import Issuer, SecretStore
    from rotator.secret import Secret
    from rotator.vendors._http import RetryPolicy


class ExampleIssuerSpec(IssuerModel):
    """The example vendor: overlapping keys (two per account), managed with an admin token."""

    type: Literal["example"]
    base_url: Url
    credential: Credential
    """The admin token: from the environment, or a declared key."""
    timeout: Duration = timedelta(seconds=10)

    def management_credential(self, key: str) -> EnvRef | KeyRef | None:
        return self.credential

    def credential_key(self) -> str | None:
        return self.credential.key if isinstance(self.credential, KeyRef) else None

    def issuer_problems(self, name: str, keys: Collection[str]) -> list[Problem]:
        ref = self.credential_key()
        if ref is not None and ref not in keys:
            return [(("issuers", name, "credential", "key"), f"no key named {ref!r} is declared")]
        return []

    def key_problems(self, name: str, key: KeySpec, issuer_keys: Sequence[str]) -> list[Problem]:
        if key.kind is not None:
            return [(("keys", name, "kind"), "example keys have no kind")]
        return []

    def make_issuer(
        self,
        key: KeySpec,
        *,
        credential: Callable[[], Secret],
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
    ) -> Issuer:
        from rotator_example.issuer import ExampleIssuer

        return ExampleIssuer(
            key.issuer, self.base_url, credential=credential, timeout=self.timeout.total_seconds(), http=http
        )


class DirTarget(TargetModel):
    """A directory of secrets, one file each (``<dir>/<name>``); with ``field``, the file is a
    JSON object and only that field is the key."""

    type: Literal["exdir"]
    dir: Text = Field(min_length=1)
    name: Text = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    field: Text | None = None

    def open_store(self, *, base_dir: Path) -> SecretStore:
        from rotator_example.store import DirStore

        return DirStore(self, base_dir / self.dir)
