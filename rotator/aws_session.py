"""boto3 sessions for every AWS part (Secrets Manager store, IAM issuer, DynamoDB lease):
the default chain, a profile, or an assumed role whose credentials refresh themselves.

boto3 is imported inside the functions: the core imports no cloud SDK at module level.
"""

from __future__ import annotations

from typing import Any


def make_session(
    *,
    profile: str | None = None,
    region: str | None = None,
    role_arn: str | None = None,
    session_name: str = "rotator",
) -> Any:
    """A ``boto3.Session`` from the standard chain or ``profile``, on ``role_arn`` if given."""
    import boto3

    session = boto3.Session(profile_name=profile, region_name=region)
    return assume_role(session, role_arn, session_name) if role_arn else session


def assume_role(base: Any, role_arn: str, session_name: str = "rotator") -> Any:
    """A session on STS AssumeRole credentials, refreshed before they expire."""
    import boto3
    import botocore.session
    from botocore.credentials import (
        AssumeRoleCredentialFetcher,
        CredentialProvider,
        CredentialResolver,
        DeferredRefreshableCredentials,
    )
    from botocore.exceptions import NoCredentialsError

    source = base.get_credentials()
    if source is None:
        raise NoCredentialsError
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=base.client,
        source_credentials=source,
        role_arn=role_arn,
        extra_args={"RoleSessionName": session_name},
    )

    class _RoleProvider(CredentialProvider):
        METHOD = "assume-role"
        CANONICAL_NAME = "custom-rotator-role"

        def load(self) -> DeferredRefreshableCredentials:
            return DeferredRefreshableCredentials(fetcher.fetch_credentials, self.METHOD)

    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([_RoleProvider()]))
    return boto3.Session(botocore_session=core, region_name=base.region_name)
