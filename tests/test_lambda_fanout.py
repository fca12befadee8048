"""Lambda fan-out on moto's SQS: the dispatcher sends every key once, in batches; the SQS
branch passes its batch's keys and reports only the failed messages for redelivery."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from rotator.errors import ConfigError
from rotator.lambda_handler import handler
from rotator.sandbox.emulator import EmulatorServer
from tests.e2e_helpers import ADMIN_ENV, journal, read_dotenv_key
from tests.test_deploy import _template

REGION = "us-east-1"
SCHEDULED = {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}, "region": REGION}
NAMES = [f"svc-{i:02d}" for i in range(23)]


def _spec(emulator: EmulatorServer, names: list[str], dead: tuple[str, ...] = ()) -> str:
    def key(name: str, issuer: str) -> str:
        return (
            f"  {name}:\n    issuer: {issuer}\n    kind: agent\n    agent_id: {name}\n    targets:\n"
            f"      - {{type: file, path: secrets/{name}.env, format: dotenv, field: ADJUDON_API_KEY}}\n"
        )

    return (
        "version: 1\nstate_dir: state\n"
        "defaults:\n  verify: {drain: 1s, propagation: 0s, timeout: 60s}\n"
        f"issuers:\n  emu:\n    type: adjudon\n    base_url: {emulator.url}\n    credential: {{env: {ADMIN_ENV}}}\n"
        f"  down:\n    type: adjudon\n    base_url: http://127.0.0.1:9\n    credential: {{env: {ADMIN_ENV}}}\n"
        "keys:\n" + "".join(key(n, "emu") for n in names) + "".join(key(n, "down") for n in dead)
    )


@pytest.fixture
def queue(tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's SQS (mock_aws), a fan-out queue, and the function's environment around it."""
    (tmp_path / "secrets").mkdir()
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "ROTATOR_STATE_DIR": str(tmp_path / "state"),
        "ROTATOR_FILE": str(tmp_path / "rotations.yaml"),
        "ROTATOR_RETRY_INITIAL": "0.01",
        "ROTATOR_RETRY_ATTEMPTS": "2",
        "ROTATOR_PROBE_TIMEOUT": "5",
        ADMIN_ENV: emulator.emulator.bootstrap_workspace_key(),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in (
        "AWS_PROFILE",
        "AWS_REGION",
        "ROTATOR_FILE_S3",
        "ROTATOR_FILE_CONTENT",
        "ROTATOR_LEASE_TABLE",
    ):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        url = boto3.client("sqs", region_name=REGION).create_queue(QueueName=f"fanout-{uuid.uuid4().hex[:6]}")
        monkeypatch.setenv("ROTATOR_FANOUT_QUEUE_URL", url["QueueUrl"])
        yield url["QueueUrl"]


def _drain(url: str) -> list[dict[str, Any]]:
    """Every message on the queue, as the SQS event source mapping would hand them over."""
    sqs = boto3.client("sqs", region_name=REGION)
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return out
        out += [{"messageId": m["MessageId"], "body": m["Body"], "eventSource": "aws:sqs"} for m in got]


def test_the_schedule_dispatches_every_key_once_in_batches(
    tmp_path: Path, emulator: EmulatorServer, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rotations.yaml").write_text(_spec(emulator, NAMES))
    monkeypatch.setenv("ROTATOR_FANOUT_BATCH", "5")
    answer = handler(SCHEDULED, None)
    assert answer == {"event": "dispatch", "keys": 23, "messages": 5}
    records = _drain(queue)
    batches = [json.loads(r["body"])["keys"] for r in records]
    assert sorted(len(b) for b in batches) == [3, 5, 5, 5, 5]
    assert Counter(k for b in batches for k in b) == Counter(NAMES)  # each key once
    assert not (tmp_path / "state" / "audit.jsonl").exists()  # the dispatcher passes nothing
    assert [r for r in emulator.emulator.request_log() if r[1].startswith("/api/v1/api-keys")] == []

    direct = handler({"action": "dispatch"}, None)  # a direct invoke does the same
    assert direct["messages"] == 5 and Counter(
        k for r in _drain(queue) for k in json.loads(r["body"])["keys"]
    ) == Counter(NAMES)


def test_the_sqs_branch_passes_its_batch(
    tmp_path: Path, emulator: EmulatorServer, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "rotations.yaml").write_text(_spec(emulator, NAMES))
    handler({"action": "dispatch"}, None)
    records = _drain(queue)
    first, rest = records[0], records[1:]
    mine = json.loads(first["body"])["keys"]
    with caplog.at_level(logging.DEBUG):
        answer = handler({"Records": [first]}, None)
    assert answer["batchItemFailures"] == []
    assert [r["key"] for r in answer["results"]] == mine
    assert all(r["outcome"] == "ok" and "mint" in r["steps"] for r in answer["results"])
    assert sorted(e["key"] for e in journal(tmp_path) if e["event"] == "minted") == sorted(mine)
    for name in mine:
        raw = read_dotenv_key(tmp_path / "secrets" / f"{name}.env")
        assert raw is not None and emulator.emulator.key_accepted(raw)
    assert not any((tmp_path / "secrets" / f"{n}.env").exists() for n in NAMES if n not in mine)
    # secrets stay secret: no minted value (nor the admin key) in the answer, the logs or a message
    canaries = [read_dotenv_key(tmp_path / "secrets" / f"{n}.env") or "" for n in mine]
    canaries.append(os.environ[ADMIN_ENV])
    seen = json.dumps(answer) + caplog.text + json.dumps(records)
    assert caplog.records and all(len(c) > 20 and c not in seen for c in canaries)

    answer = handler({"Records": rest}, None)  # the other batches, several in one invoke
    assert answer["batchItemFailures"] == []
    assert Counter(e["key"] for e in journal(tmp_path) if e["event"] == "minted") == Counter(NAMES)


def test_partial_batch_failure_names_only_the_failed_messages(
    tmp_path: Path, emulator: EmulatorServer, queue: str
) -> None:
    """A key whose vendor is down and an unreadable body: those two messages are retried, the
    good one is not; a key no longer declared is skipped, not retried."""
    (tmp_path / "rotations.yaml").write_text(_spec(emulator, NAMES[:2], dead=("lost",)))
    records = [
        {
            "messageId": "good",
            "body": json.dumps({"keys": [NAMES[0], "removed-since"]}),
            "eventSource": "aws:sqs",
        },
        {"messageId": "down", "body": json.dumps({"keys": [NAMES[1], "lost"]}), "eventSource": "aws:sqs"},
        {"messageId": "junk", "body": "not json", "eventSource": "aws:sqs"},
    ]
    answer = handler({"Records": records}, None)
    assert sorted(f["itemIdentifier"] for f in answer["batchItemFailures"]) == ["down", "junk"]
    outcomes = {r["key"]: r["outcome"] for r in answer["results"]}
    assert outcomes == {NAMES[0]: "ok", NAMES[1]: "ok", "lost": "failed"}


def test_dispatch_without_a_queue_or_with_a_bad_batch_is_one_clear_error(
    tmp_path: Path, emulator: EmulatorServer, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rotations.yaml").write_text(_spec(emulator, NAMES[:3]))
    monkeypatch.setenv("ROTATOR_FANOUT_BATCH", "0")
    with pytest.raises(ConfigError, match=r"ROTATOR_FANOUT_BATCH: '0' is not a whole number"):
        handler({"action": "dispatch"}, None)
    monkeypatch.delenv("ROTATOR_FANOUT_QUEUE_URL")
    with pytest.raises(ConfigError, match="set ROTATOR_FANOUT_QUEUE_URL"):
        handler({"action": "dispatch"}, None)
    assert _drain(queue) == []


def test_sam_template_fans_out_through_sqs_with_least_privilege() -> None:
    """The queue and its DLQ, the SQS event reporting batch item failures, SendMessage on the queue only."""
    resources = _template()["Resources"]
    function = resources["RotatorFunction"]["Properties"]
    assert function["Environment"]["Variables"]["ROTATOR_FANOUT_QUEUE_URL"] == {"Ref": "FanoutQueue"}
    sqs_event = function["Events"]["FanOut"]
    assert sqs_event["Type"] == "SQS"
    assert sqs_event["Properties"]["Queue"] == {"GetAtt": "FanoutQueue.Arn"}
    assert sqs_event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = resources["FanoutQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"GetAtt": "FanoutDeadLetterQueue.Arn"}
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"]  # AWS's advice for Lambda consumers
    assert resources["FanoutDeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    statements = {
        s["Sid"]: s for s in function["Policies"][0]["Statement"] if isinstance(s, dict) and "Sid" in s
    }
    send = statements["FanOutKeys"]
    assert send["Action"] == "sqs:SendMessage" and send["Resource"] == {"GetAtt": "FanoutQueue.Arn"}
    every = [s.get("Action") for s in statements.values()]
    assert sum("sqs" in json.dumps(a) for a in every) == 1  # no other SQS grant of ours
