"""Lambda fan-out: one dispatcher lists the keys and sends them in batches through SQS.

The scheduled event (when ``ROTATOR_FANOUT_QUEUE_URL`` is set) or a direct invoke
``{"action": "dispatch"}`` sends one SQS message per batch of keys (``ROTATOR_FANOUT_BATCH``
names each, 10 by default) to the queue; the same function, invoked by the queue's event
source mapping, runs one pass over the keys of the messages it receives and reports the
messages whose keys failed as ``batchItemFailures``, so SQS redelivers only those (and
moves them to the dead-letter queue after ``maxReceiveCount`` tries).

A message body is JSON: ``{"keys": [NAME, ...]}``: key names only, never a value.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from rotator.errors import ConfigError, RotatorError

log = logging.getLogger("rotator.lambda")

QUEUE_ENV = "ROTATOR_FANOUT_QUEUE_URL"
BATCH_ENV = "ROTATOR_FANOUT_BATCH"
DEFAULT_BATCH = 10
_SEND_MAX = 10  # SendMessageBatch takes at most 10 entries
_MAX_BATCH = 1000  # names of at most 256 characters stay under SQS's 256 KiB per message


def queue_url() -> str | None:
    """The fan-out queue, when the function fans out (``ROTATOR_FANOUT_QUEUE_URL``)."""
    return os.environ.get(QUEUE_ENV) or None


def batch_size() -> int:
    """Keys per message: ``ROTATOR_FANOUT_BATCH``, 1 to 1000, default 10."""
    text = os.environ.get(BATCH_ENV, "")
    if not text:
        return DEFAULT_BATCH
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= _MAX_BATCH:
        raise ConfigError(f"{BATCH_ENV}: {text!r} is not a whole number of keys from 1 to {_MAX_BATCH}")
    return size


def batches(keys: Sequence[str], size: int) -> list[list[str]]:
    """``keys`` cut into lists of at most ``size``, in order."""
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


def dispatch(keys: Sequence[str], url: str, *, size: int, client: Any = None) -> int:
    """Send ``keys`` to the queue at ``url``, ``size`` per message; return the number of messages.

    :raises RotatorError: SQS refused a message (after one retry of the refused entries).
    """
    if client is None:
        import boto3

        client = boto3.session.Session().client("sqs")
    bodies = [json.dumps({"keys": batch}) for batch in batches(keys, size)]
    for start in range(0, len(bodies), _SEND_MAX):
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + _SEND_MAX])]
        for attempt in (1, 2):
            failed = _send(client, url, entries)
            if not failed:
                break
            if attempt == 2:
                raise RotatorError(f"SQS refused {len(failed)} fan-out message(s) to {url}: {failed[0]}")
            ids = {f.split(":", 1)[0] for f in failed}
            entries = [e for e in entries if e["Id"] in ids]
    return len(bodies)


def _send(client: Any, url: str, entries: list[dict[str, str]]) -> list[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = client.send_message_batch(QueueUrl=url, Entries=entries)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise RotatorError(f"cannot send fan-out messages to {url} ({code})") from None
    except BotoCoreError as exc:
        raise RotatorError(f"cannot send fan-out messages to {url} ({type(exc).__name__})") from None
    return [f"{f['Id']}: {f.get('Code', 'error')}" for f in answer.get("Failed", [])]


def is_sqs_event(event: dict[str, Any]) -> bool:
    """True for an SQS event source mapping's invoke."""
    records = event.get("Records")
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def keys_of(records: Sequence[dict[str, Any]]) -> tuple[dict[str, list[str]], list[str]]:
    """``({message id: its keys}, [ids of messages that are not a fan-out batch])``."""
    found: dict[str, list[str]] = {}
    bad: list[str] = []
    for record in records:
        message_id = str(record.get("messageId", ""))
        try:
            body = json.loads(record.get("body") or "")
        except ValueError:
            body = None
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            log.error('fan-out message %s is not {"keys": [...]}: dropped to the retries', message_id)
            bad.append(message_id)
            continue
        found[message_id] = keys
    return found, bad


def failures(by_message: dict[str, list[str]], outcomes: dict[str, str], bad: Sequence[str]) -> list[str]:
    """Ids of the messages SQS should deliver again: unreadable, or holding a key whose pass failed.

    A held key is not retried (a person must act; a retry changes nothing), nor a busy one
    (another runner has it) nor a key the rotation file no longer declares.
    """
    retry = list(bad)
    for message_id, keys in by_message.items():
        if any(outcomes.get(k) == "failed" for k in keys):
            retry.append(message_id)
    return retry
