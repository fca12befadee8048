"""The DynamoDB lease on a moto server: one writer per key across processes and machines."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from rotator.engine.lease_dynamodb import DynamoDBLease, DynamoDBLeaseInfo
from rotator.engine.runner import Engine
from rotator.errors import ConfigError, LeaseBusy, RotatorError
from rotator.lambda_handler import handler
from rotator.sandbox.emulator import EmulatorServer
from rotator.spec import DynamoDBLeaseSpec, Settings, load_rotation_file
from tests.e2e_helpers import ADMIN_ENV, agent_keys, journal, write_spec

REGION = "us-east-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
SCHEDULED = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake credentials in the default chain, and no shared config from the machine."""
    env = {
        **AWS_ENV,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture
def table(moto_server: str, aws_env: dict[str, str]) -> Iterator[str]:
    """A fresh lease table (hash key ``pk``, TTL on ``expires_at``) on the moto server."""
    name = f"leases-{uuid.uuid4().hex[:8]}"
    client = _client(moto_server)
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    yield name
    client.delete_table(TableName=name)


def _client(url: str) -> Any:
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=url)


def _lease(url: str, table: str, *, ttl: str = "5m", owner: str, **kw: Any) -> DynamoDBLease:
    spec = DynamoDBLeaseSpec(type="dynamodb", table=table, region=REGION, endpoint_url=url, ttl=ttl)
    return DynamoDBLease(spec, owner=owner, **kw)


def _item(url: str, table: str, key: str) -> dict[str, Any] | None:
    out = _client(url).get_item(TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True)
    item: dict[str, Any] | None = out.get("Item")
    return item


def test_acquire_busy_release(moto_server: str, table: str) -> None:
    """A held lease refuses a second runner, naming the holder and since when; release frees it."""
    first = _lease(moto_server, table, owner="ops@host-a pid 1")
    second = _lease(moto_server, table, owner="ci@host-b pid 2")
    before = time.time()
    with first.acquire("payments") as info:
        item = _item(moto_server, table, "payments")
        assert item is not None and item["owner"]["S"] == "ops@host-a pid 1"
        assert isinstance(info, DynamoDBLeaseInfo) and item["lease_id"]["S"] == info.lease_id
        assert int(item["expires_at"]["N"]) >= before + 300
        with pytest.raises(LeaseBusy) as busy, second.acquire("payments"):
            pytest.fail("a second runner got a held lease")
        assert busy.value.holder.startswith("ops@host-a pid 1 since ")
        assert item["acquired_at"]["S"] in busy.value.holder
        with second.acquire("other-key"):  # leases are per key
            pass
    assert _item(moto_server, table, "payments") is None
    with second.acquire("payments") as info:
        assert info.owner == "ci@host-b pid 2"


def test_one_process_two_acquisitions_conflict(moto_server: str, table: str) -> None:
    """Two acquisitions with the same owner string (two threads of one process) still exclude."""
    lease = _lease(moto_server, table, owner="same")
    with lease.acquire("payments"), pytest.raises(LeaseBusy), lease.acquire("payments"):
        pytest.fail("not exclusive")


def test_expired_lease_of_a_dead_holder_is_taken_over(moto_server: str, table: str) -> None:
    """An item whose holder stopped renewing (expires_at past) is taken over at once."""
    _client(moto_server).put_item(
        TableName=table,
        Item={
            "pk": {"S": "payments"},
            "owner": {"S": "dead@host pid 9"},
            "lease_id": {"S": "gone"},
            "acquired_at": {"S": "2020-01-01T00:00:00.000000Z"},
            "expires_at": {"N": str(int(time.time()) - 1)},
        },
    )
    with _lease(moto_server, table, owner="alive").acquire("payments") as info:
        item = _item(moto_server, table, "payments")
        assert item is not None and item["owner"]["S"] == "alive"
        assert item["lease_id"]["S"] == info.lease_id  # type: ignore[attr-defined]


def test_renewal_keeps_the_lease_past_its_ttl(moto_server: str, table: str) -> None:
    """Renewals move expires_at on: a contender whose clock is past the first expiry is still refused."""
    holder = _lease(moto_server, table, ttl="3s", owner="holder")
    with holder.acquire("payments") as info:
        item = _item(moto_server, table, "payments")
        assert item is not None
        first_expiry = int(item["expires_at"]["N"])
        deadline = time.monotonic() + 15
        while int((_item(moto_server, table, "payments") or item)["expires_at"]["N"]) <= first_expiry:
            assert time.monotonic() < deadline, "no renewal within the ttl"
            time.sleep(0.05)
        contender = _lease(moto_server, table, owner="contender", clock=lambda: first_expiry + 0.5)
        with pytest.raises(LeaseBusy), contender.acquire("payments"):
            pytest.fail("a renewed lease was taken over")
        assert not info.lost.is_set()  # type: ignore[attr-defined]
    unrenewed = _lease(moto_server, table, owner="late", clock=lambda: first_expiry + 0.5)
    _client(moto_server).put_item(TableName=table, Item=item)  # the first write, never renewed
    with unrenewed.acquire("payments"):  # the same contender takes a lease nobody renewed
        pass


def test_takeover_sets_lost_and_release_spares_the_successor(
    moto_server: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder whose lease expired and was taken over logs the loss, sets the flag and deletes nothing."""
    holder = _lease(moto_server, table, ttl="900ms", owner="holder")
    later = _lease(moto_server, table, owner="successor", clock=lambda: time.time() + 3600)
    with caplog.at_level(logging.WARNING, logger="rotator.lease"), holder.acquire("payments") as info:
        with later.acquire("payments") as taken:  # its clock says the holder's lease is long expired
            assert info.lost.wait(5)  # type: ignore[attr-defined]
            assert any("lost" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
            item = _item(moto_server, table, "payments")
            assert item is not None and item["lease_id"]["S"] == taken.lease_id  # type: ignore[attr-defined]
            successor_item = item
        assert _item(moto_server, table, "payments") is None
        _client(moto_server).put_item(TableName=table, Item=successor_item)  # the successor again
    item = _item(moto_server, table, "payments")
    assert item is not None and item["owner"]["S"] == "successor"  # the holder's release spared it
    assert any("taken over before its release" in r.getMessage() for r in caplog.records)


def test_missing_table_is_an_error_naming_it(moto_server: str, aws_env: dict[str, str]) -> None:
    """A table that does not exist fails the acquisition with a RotatorError naming it."""
    with (
        pytest.raises(RotatorError, match="lease table no-such-table: acquire payments"),
        _lease(moto_server, "no-such-table", owner="x").acquire("payments"),
    ):
        pytest.fail("acquired a lease in a missing table")


def test_plain_http_only_to_loopback() -> None:
    """An endpoint_url in plain http is refused unless it is a loopback address."""
    # validate refuses it already; the lease checks again for specs built in code
    spec = DynamoDBLeaseSpec(type="dynamodb", table="leases").model_copy(
        update={"endpoint_url": "http://dynamo.example:8000"}
    )
    with pytest.raises(ConfigError, match="only https"):
        DynamoDBLease(spec)


def test_rotation_file_chooses_the_dynamodb_lease(tmp_path: Path, emulator: EmulatorServer) -> None:
    """A ``lease: {type: dynamodb}`` block gives the engine a DynamoDB lease on that table."""
    extra = "lease: {type: dynamodb, table: rotator-leases, region: eu-west-1, ttl: 2m}\n"
    path = write_spec(tmp_path, emulator, extra=extra)
    engine = Engine(load_rotation_file(path), base_dir=tmp_path)
    assert isinstance(engine.lease, DynamoDBLease)
    assert (engine.lease.table, engine.lease.ttl) == ("rotator-leases", 120.0)


def test_three_runners_of_two_kinds_one_mint(
    tmp_path: Path,
    emulator: EmulatorServer,
    moto_server: str,
    table: str,
    aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two ``rotator apply`` processes and a Lambda pass race on a due key: exactly one mint."""
    admin = emulator.emulator.bootstrap_workspace_key()
    lease = f"lease: {{type: dynamodb, table: {table}, endpoint_url: '{moto_server}', ttl: 30s}}\n"
    path = write_spec(tmp_path, emulator, max_age="1s", drain="30s", extra=lease)
    env = {ADMIN_ENV: admin, "ROTATOR_RETRY_INITIAL": "0.01", "ROTATOR_PROBE_TIMEOUT": "5"}
    for name, value in {
        **env,
        "ROTATOR_FILE": str(path),
        "ROTATOR_STATE_DIR": str(tmp_path / "state"),
    }.items():
        monkeypatch.setenv(name, value)
    engine = Engine(load_rotation_file(path), base_dir=tmp_path, settings=Settings())
    assert engine.apply(["payments"])[0].steps == ["mint", "stage", "promote"]
    minted_before = len(agent_keys(emulator))
    deadline = time.monotonic() + 10
    while engine.plan(["payments"])[0][1].action != "mint":  # due once max_age has passed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # every vendor call waits while the test holds the emulator's lock: the runner that wins the
    # lease keeps it, blocked in its first observation, until the other two have tried theirs
    gate = emulator.emulator._lock
    gate.acquire()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "rotator.cli", "apply", "--output", "json"],
                cwd=tmp_path,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while _item(moto_server, table, "payments") is None:  # one of them holds the lease now
            ended = all(p.poll() is not None for p in procs)
            assert time.monotonic() < deadline and not ended, "no runner took the lease"
            time.sleep(0.02)
        answer = handler(SCHEDULED, None)
    finally:
        gate.release()
    outs = [p.communicate(timeout=60) for p in procs]

    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(out)[0] for out, _ in outs] + answer["results"]
    assert answer["results"][0]["outcome"] == "busy", answer
    assert "since" in answer["results"][0]["message"]
    assert [len(r["steps"]) > 0 for r in results].count(True) == 1
    assert {r["outcome"] for r in results} <= {"busy", "waiting"}
    assert len(agent_keys(emulator)) == minted_before + 1
    assert sum(e["event"] == "minted" for e in journal(tmp_path)) == 2  # the first run's and this one
    assert _item(moto_server, table, "payments") is None  # every runner released
