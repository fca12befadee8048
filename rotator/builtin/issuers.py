"""The built-in issuers' config models (entry points ``rotator.issuers``): Adjudon, Adjútor and
AWS IAM, each with its factory and the abilities it declares to the engine."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from rotator.errors import ConfigError
from rotator.spec.durations import Duration
from rotator.spec.models import IssuerModel, KeySpec, Problem, Strategy
from rotator.spec.types import Credential, EnvRef, KeyRef, Text, Url

if TYPE_CHECKING:
    import httpx

    from rotator.abc import Issuer
    from rotator.secret import Secret
    from rotator.vendors._http import RetryPolicy


class AdjudonIssuerSpec(IssuerModel):
    """An overlap vendor: two keys per scope (workspace or agent), managed with a workspace key."""

    type: Literal["adjudon"]
    base_url: Url = "https://api.adjudon.com"
    credential: Credential
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

    def make_issuer(
        self,
        key: KeySpec,
        *,
        credential: Callable[[], Secret],
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
    ) -> Issuer:
        from rotator.vendors.adjudon import AdjudonIssuer

        kind = key.kind or ("agent" if key.agent_id else "workspace")
        return AdjudonIssuer(
            key.issuer, self.base_url, kind=kind, agent_id=key.agent_id, credential=credential,
            timeout=self.timeout.total_seconds(), http=http, retry=retry,
        )  # fmt: skip


class AdjutorIssuerSpec(IssuerModel):
    """A reset vendor: one key per app, which a reset replaces; requests carry the key itself."""

    type: Literal["adjutor"]
    base_url: Url = "https://adjutor.lendsqr.com"
    app_id: Text = Field(min_length=1)
    timeout: Duration = timedelta(seconds=10)

    forced_strategy: ClassVar[Strategy | None] = "cutover"

    def management_credential(self, key: str) -> EnvRef | KeyRef | None:
        return KeyRef(key=key)

    def key_problems(self, name: str, key: KeySpec, issuer_keys: Sequence[str]) -> list[Problem]:
        out: list[Problem] = []
        if key.strategy == "overlap":
            out.append(
                (
                    ("keys", name, "strategy"),
                    "overlap is impossible on a reset-only vendor (adjutor); use cutover",
                )
            )
        if key.kind is not None:
            out.append((("keys", name, "kind"), "adjutor keys have no kind"))
        return out

    def make_issuer(
        self,
        key: KeySpec,
        *,
        credential: Callable[[], Secret],
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
    ) -> Issuer:
        from rotator.vendors.adjutor import AdjutorIssuer

        if key.kind is not None:
            raise ConfigError(f"{key.issuer}: adjutor keys have no kind")
        return AdjutorIssuer(
            key.issuer, self.base_url, app_id=self.app_id, credential=credential,
            timeout=self.timeout.total_seconds(), http=http, retry=retry,
        )  # fmt: skip


class AwsIamIssuerSpec(IssuerModel):
    """The access keys of one IAM user. AWS credentials from the default chain, a profile
    or a role; never from the rotation file."""

    type: Literal["aws_iam"]
    user_name: str = Field(pattern=r"^[A-Za-z0-9_+=,.@-]{1,64}$")
    region: Text | None = None
    profile: Text | None = None
    role_arn: Text | None = None
    endpoint_url: Url | None = None
    """Serves IAM and STS alike (a local emulator)."""
    timeout: Duration = timedelta(seconds=10)
    delete_after: Duration = timedelta(days=7)
    """A deactivated key is deleted this long after; until then ``rotator reactivate`` restores it."""

    def key_problems(self, name: str, key: KeySpec, issuer_keys: Sequence[str]) -> list[Problem]:
        out: list[Problem] = []
        if key.kind is not None:
            out.append((("keys", name, "kind"), "aws_iam keys have no kind"))
        if key.strategy == "cutover":
            out.append(
                (("keys", name, "strategy"), "aws_iam keys rotate with overlap (two access keys per user)")
            )
        first = issuer_keys[0]
        if first != name:
            out.append(
                (
                    ("keys", name, "issuer"),
                    f"issuer {key.issuer!r} already serves key {first!r}; "
                    "an aws_iam issuer is one IAM user, whose keys are one key",
                )
            )
        return out

    def revoke_delay(self) -> timedelta | None:
        return self.delete_after

    def make_issuer(
        self,
        key: KeySpec,
        *,
        credential: Callable[[], Secret],
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
    ) -> Issuer:
        from rotator.vendors.aws_iam import open_issuer

        return open_issuer(key.issuer, self, retry=retry)
