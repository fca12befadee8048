"""The aws backend for the store contract suite (see tests/store_harness.py).

Runs against moto in process (``mock_aws``), spoken to by the real boto3 client.
Each store points at a secret with a fresh name. The denied store belongs to an
IAM user whose only permission is ``secretsmanager:ListSecrets``; moto checks
signatures and policies only while that user's client is calling (moto's
``set_initial_no_auth_action_count(0)``), so every other call stays unchecked.

``moto_server`` (session scope) is a moto server on a free loopback port, for
tests that go through ``endpoint_url`` or another process. It shares its state
with in-process moto, which ``mock_aws`` resets when it starts: create what a
test needs inside that test.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count
from moto.server import ThreadedMotoServer

from providers.aws import AwsStore, open_store
from rotator.abc import SecretStore
from rotator.spec import AwsTarget

REGION = "us-east-1"
_LIST_ONLY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "secretsmanager:ListSecrets", "Resource": "*"}],
}


class _Enforced:
    """A boto3 client whose calls moto checks against IAM (signature, then policy)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._client, name)
        if not callable(found) or name.startswith("_"):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            checked: Callable[..., Any] = set_initial_no_auth_action_count(0)(found)
            return checked(*args, **kwargs)

        return call


class AwsHarness:
    name = "aws"
    invisible_staging = True

    def __init__(self) -> None:
        self.client: Any = boto3.client("secretsmanager", region_name=REGION)
        self._denied: Any = None

    def target(self, secret_id: str, *, field: str | None = None, **extra: Any) -> AwsTarget:
        spec = {"type": "aws", "secret_id": secret_id, "region": REGION, "field": field, **extra}
        return AwsTarget.model_validate(spec)

    def make_store(self, *, field: str | None = None) -> AwsStore:
        target = self.target(f"contract/{uuid.uuid4().hex[:12]}", field=field)
        return open_store(target, base_dir=Path.cwd(), client=self.client)

    def reopen(self, store: SecretStore) -> AwsStore:
        """A store built from the target alone (its own boto3 client from the default chain)."""
        return open_store(_aws(store).target, base_dir=Path.cwd())

    def external_write(self, store: SecretStore, raw: str) -> None:
        secret_id = _aws(store).target.secret_id
        try:
            self.client.put_secret_value(SecretId=secret_id, SecretString=raw)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            self.client.create_secret(Name=secret_id, SecretString=raw)

    def read_raw(self, store: SecretStore) -> str | None:
        secret_id = _aws(store).target.secret_id
        try:
            out = self.client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            return None
        text: str = out["SecretString"]
        return text

    def delete(self, store: SecretStore) -> None:
        secret_id = _aws(store).target.secret_id
        self.client.delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)

    def denied_store(self, store: SecretStore) -> AwsStore:
        return open_store(_aws(store).target, base_dir=Path.cwd(), client=self.denied_client())

    def denied_client(self) -> Any:
        """A Secrets Manager client of an IAM user that may only list secrets."""
        if self._denied is None:
            iam = boto3.client("iam", region_name=REGION)
            user = f"denied-{uuid.uuid4().hex[:8]}"
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="list-only", PolicyDocument=json.dumps(_LIST_ONLY))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            client = boto3.client(
                "secretsmanager",
                region_name=REGION,
                aws_access_key_id=key["AccessKeyId"],
                aws_secret_access_key=key["SecretAccessKey"],
            )
            self._denied = _Enforced(client)
        return self._denied


def _aws(store: SecretStore) -> AwsStore:
    assert isinstance(store, AwsStore), store
    return store


@pytest.fixture
def aws_harness() -> Iterator[AwsHarness]:
    """The aws backend on in-process moto, fresh for each test."""
    with mock_aws():
        yield AwsHarness()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port; yields its URL (for ``endpoint_url``)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
