"""boto3 sessions and clients for every AWS part (Secrets Manager store, IAM issuer, DynamoDB
lease, and any other AWS code): the default chain, a profile, or an assumed role whose
credentials refresh themselves.

:func:`client` is the one way to get a client: one per (service, region, endpoint, profile,
role, retry and timeout settings) for the whole process, built from one shared Session per
(profile, region, role). A Session and a client cost about 200 ms of CPU and 7.6 MB to build,
a client from a warm Session about 40 ms and 0.13 MB, a shared client nothing: a fleet of keys
pays once. boto3 clients are thread-safe, Sessions are not: sessions and clients are built
under one lock, and then used freely. The AWS environment (``AWS_*`` variables: credentials,
profile, region, config files) is part of the key, so a changed environment gets new ones.

boto3 is imported inside the functions: the core imports no cloud SDK at module level.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

MAX_POOL = 64
"""Connections each client keeps (``--parallel`` is at most 64; botocore's default is 10)."""

_LOCK = threading.RLock()
_SESSIONS: dict[tuple[Any, ...], Any] = {}
_CLIENTS: dict[tuple[Any, ...], Any] = {}


def client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    role_arn: str | None = None,
    session_name: str = "rotator",
    attempts: int = 4,
    connect_timeout: float = 5.0,
    read_timeout: float = 15.0,
) -> Any:
    """The process's client of ``service`` for these settings, built on first use.

    ``attempts`` is the total number of tries of a call in botocore's standard retry mode
    (1: never repeated, for a call that must not run twice). Raises botocore's errors
    (``ProfileNotFound``, ``NoRegionError``...) for the caller to translate."""
    env = _environment()
    key: tuple[Any, ...] = (service, region, endpoint_url, profile, role_arn, session_name, attempts)
    key += (connect_timeout, read_timeout, env)
    with _LOCK:
        found = _CLIENTS.get(key)
        if found is None:
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": attempts, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=MAX_POOL,
            )
            base = _session(profile, region, role_arn, session_name, env)
            found = base.client(service, region_name=region, endpoint_url=endpoint_url, config=config)
            _CLIENTS[key] = found
        return found


def session(
    *,
    profile: str | None = None,
    region: str | None = None,
    role_arn: str | None = None,
    session_name: str = "rotator",
) -> Any:
    """The shared ``boto3.Session`` :func:`client` builds from, to read (e.g. its
    ``region_name``); build clients with :func:`client`, which holds the lock."""
    with _LOCK:
        return _session(profile, region, role_arn, session_name, _environment())


def client_with_keys(
    service: str,
    access_key_id: str,
    secret_access_key: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    attempts: int = 4,
    timeout: float = 10.0,
) -> Any:
    """A client signing with the given keys (e.g. to probe a new access key). Not shared:
    built from the shared default Session, which spares loading botocore's data again."""
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": attempts, "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    with _LOCK:
        base = _session(None, region, None, "rotator", _environment())
        return base.client(
            service,
            region_name=region,
            endpoint_url=endpoint_url,
            config=config,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
        )


def close_clients() -> None:
    """Close and forget every shared client and session (tests; the end of a process)."""
    with _LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
        _SESSIONS.clear()
    for found in clients:
        found.close()


def make_session(
    *,
    profile: str | None = None,
    region: str | None = None,
    role_arn: str | None = None,
    session_name: str = "rotator",
) -> Any:
    """A new ``boto3.Session`` from the standard chain or ``profile``, on ``role_arn`` if given
    (prefer :func:`client`: it shares one)."""
    import boto3

    base = boto3.Session(profile_name=profile, region_name=region)
    return assume_role(base, role_arn, session_name) if role_arn else base


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

    def sts_client(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:  # called on refresh, from any thread: the Session is not thread-safe
            return base.client(*args, **kwargs)

    fetcher = AssumeRoleCredentialFetcher(
        client_creator=sts_client,
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


def _session(
    profile: str | None, region: str | None, role_arn: str | None, session_name: str, env: str
) -> Any:
    """The shared Session of these settings (the caller holds :data:`_LOCK`)."""
    key = (profile, region, role_arn, session_name, env)
    found = _SESSIONS.get(key)
    if found is None:
        found = _SESSIONS[key] = make_session(
            profile=profile, region=region, role_arn=role_arn, session_name=session_name
        )
    return found


def _environment() -> str:
    """A digest of the ``AWS_*`` environment: what the default chain reads."""
    text = "\0".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("AWS_"))
    return hashlib.sha256(text.encode()).hexdigest()
