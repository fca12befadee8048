"""One boto3 client per (service, region, endpoint, credentials, settings) for the process.

Against moto in process (``mock_aws``), spoken to by the real boto3 clients the rotator builds:
the stores of a fleet share one client, different settings get different clients, a changed
AWS environment gets new ones, and building them from many threads at once is safe.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from providers.aws import open_store
from rotator import aws_session
from rotator.abc import Stamp
from rotator.secret import Secret
from rotator.spec import AwsTarget, parse_rotation_file
from rotator.vendors.aws_iam import AwsIamIssuer

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    aws_session.close_clients()
    with mock_aws():
        yield
    aws_session.close_clients()


def target(secret_id: str, **extra: str) -> AwsTarget:
    return AwsTarget.model_validate({"type": "aws", "secret_id": secret_id, "region": REGION, **extra})


def test_stores_with_the_same_settings_share_one_client() -> None:
    """A hundred targets, one client; each store still reads and writes its own secret."""
    stores = [open_store(target(f"fleet/{i:03d}"), base_dir=Path.cwd()) for i in range(100)]
    assert len({id(s._client) for s in stores}) == 1
    for i, store in enumerate(stores[:5]):
        value = Secret(f"value-{i}-" + "x" * 20)
        store.stage(value, Stamp(f"key-{i}", value.fingerprint, str(uuid.uuid4())), expected=None)
    own = boto3.client("secretsmanager", region_name=REGION)
    for i in range(5):
        assert own.get_secret_value(SecretId=f"fleet/{i:03d}", VersionStage="AWSPENDING")[
            "SecretString"
        ].startswith(f"value-{i}-")


def test_other_settings_get_other_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    base = aws_session.client("secretsmanager", region=REGION)
    assert aws_session.client("secretsmanager", region=REGION) is base
    others = [
        aws_session.client("secretsmanager", region="eu-west-1"),
        aws_session.client("secretsmanager", region=REGION, endpoint_url="http://127.0.0.1:9"),
        aws_session.client("secretsmanager", region=REGION, attempts=1),
        aws_session.client("secretsmanager", region=REGION, read_timeout=3),
        aws_session.client("dynamodb", region=REGION),
    ]
    assert len({id(c) for c in [base, *others]}) == 6
    assert others[0].meta.region_name == "eu-west-1"
    assert others[1].meta.endpoint_url == "http://127.0.0.1:9"
    assert others[2].meta.config.retries["total_max_attempts"] == 1
    assert base.meta.config.max_pool_connections == aws_session.MAX_POOL
    # new credentials in the environment: a new client (and session) that uses them
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAROTATEDKEY000001")
    renewed = aws_session.client("secretsmanager", region=REGION)
    assert renewed is not base
    assert renewed._request_signer._credentials.access_key == "AKIAROTATEDKEY000001"


def test_clients_are_built_once_under_concurrency() -> None:
    """16 workers asking at once for the same client get the same one (Sessions are not
    thread-safe: building happens under a lock)."""
    got: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def worker() -> None:
        try:
            start.wait()
            got.append(aws_session.client("secretsmanager", region=REGION, read_timeout=7))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == 16 and len({id(c) for c in got}) == 1


def test_close_clients_forgets_them() -> None:
    before = aws_session.client("secretsmanager", region=REGION)
    aws_session.close_clients()
    after = aws_session.client("secretsmanager", region=REGION)
    assert after is not before
    after.list_secrets()  # the new one works


def test_client_with_keys_signs_with_those_keys() -> None:
    """The IAM issuer's probe: a client of the new access key, built from the shared session."""
    iam = boto3.client("iam", region_name=REGION)
    user = f"probe-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    sts = aws_session.client_with_keys("sts", key["AccessKeyId"], key["SecretAccessKey"], region=REGION)
    assert sts.get_caller_identity()["Arn"].endswith(f":user/{user}")
    assert sts is not aws_session.client_with_keys("sts", key["AccessKeyId"], key["SecretAccessKey"])


def test_the_iam_issuer_shares_its_clients_and_leaves_them_open() -> None:
    iam = boto3.client("iam", region_name=REGION)
    iam.create_user(UserName="deploy-bot")
    spec = parse_rotation_file(
        f"version: 1\nissuers:\n  iam: {{type: aws_iam, user_name: deploy-bot, region: {REGION}}}\n"
        "keys:\n  deploy:\n    issuer: iam\n    targets: [{type: file, path: k.env}]\n"
    )
    issuer_spec, key = spec.issuers["iam"], spec.keys["deploy"]
    first = issuer_spec.make_issuer(key, credential=lambda: Secret("unused"))
    second = issuer_spec.make_issuer(key, credential=lambda: Secret("unused"))
    assert isinstance(first, AwsIamIssuer) and isinstance(second, AwsIamIssuer)
    assert first._client is second._client
    first.close()
    assert second.list_keys() == []  # the shared client is still open
