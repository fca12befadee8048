"""The lambda_env backend for the write-only contract suite (see tests/consumer_harness.py).

Runs against moto in process (``mock_aws``), spoken to by the real boto3 Lambda client, with
Lambda's revisions and update states added to moto (tests/fakes/moto_lambda.py). Each target
is one variable of a fresh function that has two other variables. The denied target belongs
to an IAM user that may read function configurations but not update them; moto checks its
calls to UpdateFunctionConfiguration against IAM (``set_initial_no_auth_action_count(0)``).
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from providers.lambda_env import LambdaEnvironment, open_write_only
from rotator.abc import WriteOnlyTarget
from rotator.builtin.stores import LambdaEnvTarget
from tests.fakes.moto_lambda import LambdaUpdates

REGION = "us-east-1"
VARIABLE = "ADJUDON_API_KEY"
OTHERS = {"LOG_LEVEL": "info", "DATABASE_URL": "postgres://app@db.internal/app"}
_READ_ONLY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "lambda:GetFunctionConfiguration", "Resource": "*"}],
}


def _code() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("app.py", "import os\n\ndef handler(event, context):\n    return len(os.environ)\n")
    return buf.getvalue()


class EnforcedUpdates:
    """A Lambda client whose updates moto checks against IAM (its reads stay unchecked)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._client, name)
        if name != "update_function_configuration":
            return found
        checked: Callable[..., Any] = set_initial_no_auth_action_count(0)(found)
        return checked


class LambdaEnvHarness:
    name = "lambda_env"

    def __init__(self, updates: LambdaUpdates, *, wait: float = 5.0, poll: float = 0.02) -> None:
        self.updates = updates
        self.client: Any = boto3.client("lambda", region_name=REGION)
        self.wait, self.poll = wait, poll
        iam = boto3.client("iam", region_name=REGION)
        self._iam = iam
        self._role = iam.create_role(RoleName="rotator-test-fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        self._denied: Any = None

    def new_function(self, variables: dict[str, str] | None = None) -> str:
        name = f"fn-{uuid.uuid4().hex[:10]}"
        self.client.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=self._role,
            Handler="app.handler",
            Code={"ZipFile": _code()},
            Environment={"Variables": dict(OTHERS if variables is None else variables)},
        )
        return name

    def spec(self, function: str, **extra: Any) -> LambdaEnvTarget:
        data = {"type": "lambda_env", "function": function, "variable": VARIABLE, "region": REGION}
        return LambdaEnvTarget.model_validate({**data, **extra})

    def target(self, function: str, *, client: Any | None = None) -> LambdaEnvironment:
        return open_write_only(
            self.spec(function),
            base_dir=Path.cwd(),
            client=client or self.client,
            wait=self.wait,
            poll=self.poll,
        )

    def variables(self, function: str) -> dict[str, str]:
        config = self.client.get_function_configuration(FunctionName=function)
        found: dict[str, str] = config.get("Environment", {}).get("Variables", {})
        return found

    # ------------------------------------------------------------------ WriteOnlyHarness

    def make_target(self) -> LambdaEnvironment:
        return self.target(self.new_function())

    def read_back(self, target: WriteOnlyTarget) -> str | None:
        return self.variables(_fn(target)).get(VARIABLE)

    def other_content(self, target: WriteOnlyTarget) -> dict[str, str]:
        return {k: v for k, v in self.variables(_fn(target)).items() if k != VARIABLE}

    def denied_target(self, target: WriteOnlyTarget) -> LambdaEnvironment:
        return self.target(_fn(target), client=self.denied_client())

    def missing_target(self) -> LambdaEnvironment:
        return self.target(f"missing-{uuid.uuid4().hex[:8]}")

    def denied_client(self) -> Any:
        """A Lambda client of an IAM user that may read configurations but not update them."""
        if self._denied is None:
            user = f"reader-{uuid.uuid4().hex[:8]}"
            self._iam.create_user(UserName=user)
            self._iam.put_user_policy(
                UserName=user, PolicyName="read-only", PolicyDocument=json.dumps(_READ_ONLY)
            )
            key = self._iam.create_access_key(UserName=user)["AccessKey"]
            client = boto3.client(
                "lambda",
                region_name=REGION,
                aws_access_key_id=key["AccessKeyId"],
                aws_secret_access_key=key["SecretAccessKey"],
            )
            self._denied = EnforcedUpdates(client)
        return self._denied


def _fn(target: WriteOnlyTarget) -> str:
    assert isinstance(target, LambdaEnvironment), target
    return target.spec.function


@pytest.fixture
def write_only_lambda_env_harness() -> Iterator[LambdaEnvHarness]:
    """The lambda_env target on in-process moto with Lambda's update model, fresh for each test."""
    with mock_aws(), LambdaUpdates().installed() as updates:
        yield LambdaEnvHarness(updates)
