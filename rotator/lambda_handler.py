"""AWS Lambda entry point (``rotator.lambda_handler.handler``): one function, four events.

1. An EventBridge schedule (``"source": "aws.events"``, ``"detail-type": "Scheduled
   Event"``): one pass over every key of the rotation file, as ``rotator apply``.
2. A Secrets Manager rotation step (``Step``, ``SecretId``, ``ClientRequestToken``).
   The key is the one with an ``aws`` target for that secret (by ARN or name), and
   that target **must be the key's first target**: a mint stages the new key in the
   first target only, and Secrets Manager expects ``createSecret`` to leave it there
   as ``AWSPENDING``. The token is the rotation's attempt id (so the version id).

   ============  ==============================================================
   createSecret  mint, stage ``AWSPENDING`` in the Secrets Manager target
   setSecret     stage the new key in the other targets
   testSecret    probe the pending key at the vendor; raise if it is rejected
   finishSecret  promote it everywhere (``AWSCURRENT``); never revoke
   ============  ==============================================================

   The old key stays active: a later scheduled pass revokes it once the vendor's
   activity data shows it drained. Secrets Manager retries steps; each one repeated
   is a no-op. A step that cannot be done raises, so the rotation fails visibly.
3. A direct invoke ``{"action": "emergency", "key": ..., "reason": ...}``.
4. Fan-out (``rotator.fanout``): with ``ROTATOR_FANOUT_QUEUE_URL`` set, the schedule (or a
   direct ``{"action": "dispatch"}``) sends the keys in batches to that SQS queue instead of
   passing them; an SQS event (``Records`` from ``aws:sqs``) runs one pass over its batches'
   keys and answers ``batchItemFailures`` with the messages whose keys failed.

The rotation file comes from ``ROTATOR_FILE_S3`` (``s3://bucket/key``), else
``ROTATOR_FILE_CONTENT`` (the YAML itself), else ``ROTATOR_FILE`` or the
``rotations.yaml`` packaged at the function's root. The state directory
defaults to ``/tmp/rotator`` (Lambda's only writable place). When the file
chooses no DynamoDB lease, ``ROTATOR_LEASE_TABLE`` (set by the SAM template)
supplies one. Answers and logs name keys by id, prefix and fingerprint only.
Logs are JSON lines unless ``ROTATOR_LOG_FORMAT=text``. Each pass ends with its
notifications (the rotation file's ``notify:``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from rotator.abc import StoredVersion, TargetState
from rotator.builtin.stores import AwsTarget
from rotator.engine.lease import Lease
from rotator.engine.runner import Engine, KeyResult
from rotator.errors import ConfigError, RotatorError
from rotator.logs import JsonFormatter, redact
from rotator.notify import notify
from rotator.spec import (
    DynamoDBLeaseSpec,
    RotationFile,
    Settings,
    load_rotation_file,
    max_file_bytes,
    parse_rotation_file,
    too_large,
)

log = logging.getLogger("rotator.lambda")

_ARN = re.compile(r"arn:[\w-]+:secretsmanager:(?P<region>[\w-]*):(?P<account>\d*):secret:(?P<name>.+)")
_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}")  # Secrets Manager appends it to a secret's name in its ARN


class RotationStepFailed(RotatorError):
    """A Secrets Manager rotation step could not be done; Secrets Manager shows the message."""


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Serve one Lambda invocation; see the module docstring for the four events."""
    _configure_logging()
    if not isinstance(event, dict):
        raise ValueError("the event must be a JSON object")
    from rotator import fanout

    scheduled = event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event"
    if event.get("action") == "dispatch" or (scheduled and fanout.queue_url()):
        return _dispatch()
    if fanout.is_sqs_event(event):
        return _fanned_out(event["Records"], context)
    if scheduled:
        return _scheduled(context)
    if "Step" in event and "SecretId" in event:
        return _rotation_step(event, context)
    if event.get("action") == "emergency":
        return _emergency(event, context)
    raise ValueError(f"unknown event (fields: {', '.join(sorted(map(str, event)))})")


# --------------------------------------------------------------------------- the three events


def _scheduled(context: Any) -> dict[str, Any]:
    with _engine(context) as engine:
        results = engine.apply(list(engine.spec.keys))
        notify(engine, results)
    for r in results:  # the journal lives in /tmp: these lines are the lasting record
        level = logging.ERROR if r.outcome in ("held", "failed") else logging.INFO
        log.log(level, "%s: %s (%s), steps %s: %s", r.key, r.outcome, r.phase, r.steps or "none", r.message)
    return _safe(
        {
            "event": "schedule",
            "ok": all(r.outcome in ("ok", "waiting", "busy") for r in results),
            "results": [r.as_dict() for r in results],
        }
    )


def _dispatch() -> dict[str, Any]:
    from rotator import fanout

    url = fanout.queue_url()
    if url is None:
        raise ConfigError(f"a dispatch needs the fan-out queue: set {fanout.QUEUE_ENV}")
    size = fanout.batch_size()
    spec, _ = load_spec(settings())
    keys = list(spec.keys)
    messages = fanout.dispatch(keys, url, size=size)
    log.info("dispatched %d key(s) in %d message(s) of up to %d", len(keys), messages, size)
    return {"event": "dispatch", "keys": len(keys), "messages": messages}


def _fanned_out(records: list[dict[str, Any]], context: Any) -> dict[str, Any]:
    from rotator import fanout

    by_message, bad = fanout.keys_of(records)
    with _engine(context) as engine:
        wanted = list(dict.fromkeys(k for keys in by_message.values() for k in keys))
        gone = [k for k in wanted if k not in engine.spec.keys]
        if gone:  # dispatched before the rotation file changed: nothing to do for them
            log.warning("fan-out: %s no longer declared; skipped", ", ".join(gone))
        results = engine.apply([k for k in wanted if k in engine.spec.keys])
        notify(engine, results)
    for r in results:
        level = logging.ERROR if r.outcome in ("held", "failed") else logging.INFO
        log.log(level, "%s: %s (%s), steps %s: %s", r.key, r.outcome, r.phase, r.steps or "none", r.message)
    retry = fanout.failures(by_message, {r.key: r.outcome for r in results}, bad)
    return _safe(
        {
            "event": "fanout",
            "results": [r.as_dict() for r in results],
            "batchItemFailures": [{"itemIdentifier": m} for m in retry],
        }
    )


def _rotation_step(event: dict[str, Any], context: Any) -> dict[str, Any]:
    step, secret_id, token = event.get("Step"), event.get("SecretId"), event.get("ClientRequestToken")
    if step not in _STEP_FNS or not isinstance(secret_id, str) or not isinstance(token, str) or not token:
        raise ValueError(f"not a Secrets Manager rotation step: Step={step!r}")
    with _engine(context) as engine:
        key = find_key(engine.spec, secret_id)
        first = engine.stores(key)[0]
        done = carrying(first.read(), token)
        if done is None and step != "createSecret":
            raise RotationStepFailed(
                f"{key}: {step}: no version of {first.name} carries token {token}; "
                "createSecret did not run, or another rotation replaced it"
            )
        result = _STEP_FNS[step](engine, key, token, done)
    log.info("%s: %s for token %s done", key, step, token)
    answer: dict[str, Any] = {"event": "rotation", "step": step, "key": key, "token": token}
    if result is not None:
        answer["result"] = result.as_dict()
    return _safe(answer)


def _create(engine: Engine, key: str, token: str, done: StoredVersion | None) -> KeyResult | None:
    """Mint and stage ``AWSPENDING`` in the first target, unless that token's version exists."""
    if done is not None:
        return None
    result = engine.reconcile(key, force=True, attempt=token, stop_before={"stage", "promote", "revoke"})
    _check(key, "createSecret", result)
    if carrying(engine.stores(key)[0].read(), token) is None:
        raise RotationStepFailed(_why_not(key, "createSecret", token, result))
    return result


def _set(engine: Engine, key: str, token: str, done: StoredVersion | None) -> KeyResult:
    """Stage the new key in the other targets."""
    assert done is not None
    # a step after createSecret never starts a rotation of its own: mint and reset stop too
    result = engine.reconcile(key, attempt=token, stop_before={"mint", "reset", "promote", "revoke"})
    _check(key, "setSecret", result)
    lagging = [s.name for s in engine.stores(key) if not _holds(s.read(), done)]
    if lagging:
        raise RotationStepFailed(
            f"{key}: setSecret: {', '.join(lagging)} do not hold the new key "
            f"(fingerprint {done.fingerprint}): {result.phase}: {result.message}"
        )
    return result


def _test(engine: Engine, key: str, token: str, done: StoredVersion | None) -> None:
    """Probe the new key at the vendor; a rejection raises, so Secrets Manager retries."""
    assert done is not None
    if not engine.issuer(key).probe(done.value):
        raise RotationStepFailed(
            f"{key}: testSecret: the vendor rejects the pending key (fingerprint "
            f"{done.fingerprint}); the old key keeps serving"
        )


def _finish(engine: Engine, key: str, token: str, done: StoredVersion | None) -> KeyResult:
    """Promote the new key everywhere; the old key is left to drain (a scheduled pass revokes it)."""
    result = engine.reconcile(key, attempt=token, stop_before={"mint", "reset", "revoke"})
    _check(key, "finishSecret", result)
    current = engine.stores(key)[0].read().current
    if current is None or carrying(TargetState(current, None), token) is None:
        raise RotationStepFailed(_why_not(key, "finishSecret", token, result))
    return result


_STEP_FNS: dict[str, Callable[[Engine, str, str, StoredVersion | None], KeyResult | None]] = {
    "createSecret": _create,
    "setSecret": _set,
    "testSecret": _test,
    "finishSecret": _finish,
}


def _emergency(event: dict[str, Any], context: Any) -> dict[str, Any]:
    key, reason = event.get("key"), event.get("reason")
    if not isinstance(key, str) or not isinstance(reason, str) or not reason.strip():
        raise ValueError("an emergency needs a key and a reason")
    try:
        emergency = importlib.import_module("rotator.emergency")
    except ModuleNotFoundError as exc:
        if exc.name != "rotator.emergency":
            raise
        return {"error": "emergency not available"}
    with _engine(context) as engine:
        if key not in engine.spec.keys:
            raise ConfigError(f"unknown key {key!r} (declared: {', '.join(engine.spec.keys)})")
        report = emergency.run_emergency(engine, key, reason=reason, leaked_since=None, keep_serving=False)
        notify(engine, [], emergency=report)
    return _safe({"event": "emergency", "key": key, "report": _plain(report)})


# --------------------------------------------------------------------------- matching


def find_key(spec: RotationFile, secret_id: str) -> str:
    """The key whose first target is the Secrets Manager secret ``secret_id`` (ARN or name).

    :raises ConfigError: when no key, or more than one, has such a target, or when it is
        not the key's first target.
    """
    found: dict[str, int] = {}
    for name, key in spec.keys.items():
        for i, target in enumerate(key.readable_targets()):
            if isinstance(target, AwsTarget) and same_secret(target, secret_id):
                found.setdefault(name, i)
    if not found:
        raise ConfigError(f"no key of the rotation file has an aws target for secret {secret_id}")
    if len(found) > 1:
        raise ConfigError(f"secret {secret_id} is a target of several keys: {', '.join(sorted(found))}")
    name, index = next(iter(found.items()))
    if index != 0:
        raise ConfigError(
            f"key {name}: the Secrets Manager secret {secret_id} is its target #{index + 1}; a "
            "rotation Lambda needs it to be the first target (a mint stages the new key there, "
            "as AWSPENDING)"
        )
    return name


def same_secret(target: AwsTarget, secret_id: str) -> bool:
    """True when ``secret_id`` (an ARN, partial ARN or name) names ``target``'s secret."""
    mine = target.secret_id
    if mine == secret_id:
        return True
    theirs, ours = _ARN.fullmatch(secret_id), _ARN.fullmatch(mine)
    if theirs and ours:  # a partial ARN (no suffix) against the full one
        return secret_id.startswith(mine) and bool(_SUFFIX.fullmatch(secret_id[len(mine) :]))
    if ours:
        theirs, mine, secret_id = ours, secret_id, mine
    if theirs is None:
        return False
    region = target.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and theirs["region"] and region != theirs["region"]:
        return False
    name = theirs["name"]
    return name == mine or (name.startswith(mine) and bool(_SUFFIX.fullmatch(name[len(mine) :])))


def carrying(state: TargetState, token: str) -> StoredVersion | None:
    """The version of ``state`` written by rotation ``token`` (its version id or stamp)."""
    for version in (state.pending, state.current):
        if version is not None and (
            version.version == token or (version.stamp is not None and version.stamp.attempt == token)
        ):
            return version
    return None


def _holds(state: TargetState, version: StoredVersion) -> bool:
    return any(v is not None and v.fingerprint == version.fingerprint for v in (state.current, state.pending))


def _check(key: str, step: str, result: KeyResult) -> None:
    if result.outcome in ("held", "failed", "busy"):
        raise RotationStepFailed(f"{key}: {step}: {result.outcome} ({result.phase}): {result.message}")


def _why_not(key: str, step: str, token: str, result: KeyResult | None) -> str:
    where = "pending" if step == "createSecret" else "current"
    why = f"{result.phase}: {result.message}" if result is not None else "no step was taken"
    return (
        f"{key}: {step}: the key of token {token} is not {where} in the Secrets Manager target "
        f"({why}); if another rotation is in flight, let `rotator apply` finish it first"
    )


# --------------------------------------------------------------------------- wiring


def settings() -> Settings:
    """Settings from ``ROTATOR_*``; the state directory defaults to ``<tmp>/rotator``."""
    found = Settings()
    if found.state_dir is None:
        found = found.model_copy(update={"state_dir": Path(tempfile.gettempdir()) / "rotator"})
    if "ROTATOR_LOG_FORMAT" not in os.environ:  # CloudWatch Logs Insights reads JSON lines
        found = found.model_copy(update={"log_format": "json"})
    return found


def load_spec(found: Settings) -> tuple[RotationFile, Path]:
    """The rotation file, and the directory its relative paths resolve against."""
    assert found.state_dir is not None
    work = found.state_dir
    s3 = os.environ.get("ROTATOR_FILE_S3")
    if s3:
        path = _fetch_s3(s3, work / "rotations.yaml")
        return load_rotation_file(path), work
    content = os.environ.get("ROTATOR_FILE_CONTENT")
    if content:
        return parse_rotation_file(content, "ROTATOR_FILE_CONTENT"), work
    path = found.file
    if not path.is_absolute() and "ROTATOR_FILE" not in os.environ:
        path = Path(os.environ.get("LAMBDA_TASK_ROOT", ".")) / path
    return load_rotation_file(path), path.resolve().parent


def _fetch_s3(url: str, dest: Path) -> Path:
    match = re.fullmatch(r"s3://([^/]+)/(.+)", url)
    if match is None:
        raise ConfigError(f"ROTATOR_FILE_S3: {url!r} is not s3://bucket/key")
    from botocore.exceptions import BotoCoreError, ClientError

    from rotator.aws_session import client

    cap = max_file_bytes()
    try:
        answer = client("s3").get_object(Bucket=match[1], Key=match[2])
        data = answer["Body"].read(cap + 1)  # never more than the cap into memory or /tmp
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise ConfigError(f"{url}: cannot fetch the rotation file ({code})") from None
    except BotoCoreError as exc:
        raise ConfigError(f"{url}: cannot fetch the rotation file ({type(exc).__name__})") from None
    if len(data) > cap:
        raise too_large(url, max(int(answer.get("ContentLength") or 0), len(data)), cap)
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest.write_bytes(data)
    return dest


def lease_for(spec: RotationFile) -> Lease | None:
    """The lease: the file's DynamoDB table, else ``ROTATOR_LEASE_TABLE``'s, else ``None``."""
    table = os.environ.get("ROTATOR_LEASE_TABLE")
    if not table:
        return None
    if isinstance(spec.lease, DynamoDBLeaseSpec):
        if spec.lease.table != table:
            raise ConfigError(
                f"the rotation file's lease table {spec.lease.table} is not the function's "
                f"table {table} (ROTATOR_LEASE_TABLE): runners would not exclude each other"
            )
        return None
    from rotator.engine.lease_dynamodb import DynamoDBLease

    return DynamoDBLease(DynamoDBLeaseSpec(type="dynamodb", table=table))


@contextmanager
def _engine(context: Any) -> Iterator[Engine]:
    found = settings()
    spec, base_dir = load_spec(found)
    engine = Engine(spec, base_dir=base_dir, settings=found, lease=lease_for(spec))
    timer = _stop_before_timeout(engine, context)
    try:
        yield engine
    finally:
        if timer is not None:
            timer.cancel()
        engine.close()


def _stop_before_timeout(engine: Engine, context: Any) -> threading.Timer | None:
    """Ask the engine to end its pass between steps before Lambda's timeout cuts it short."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    seconds = remaining() / 1000
    delay = seconds - min(30.0, seconds * 0.2)
    if delay <= 0:
        engine.stopping.set()
        return None
    timer = threading.Timer(delay, engine.stopping.set)
    timer.daemon = True
    timer.start()
    return timer


_configured = False


def _configure_logging() -> None:
    """In Lambda, mask key-shaped text in every log line and honour ``ROTATOR_LOG_LEVEL``."""
    global _configured  # noqa: PLW0603 - once per execution environment
    if _configured or "AWS_LAMBDA_FUNCTION_NAME" not in os.environ:
        return
    root = logging.getLogger()
    found = settings()
    for h in root.handlers:  # keep the runtime's handler (it adds the request id)
        h.addFilter(_redact_record)
        if found.log_format == "json":
            h.setFormatter(JsonFormatter())
    root.setLevel(found.log_level)
    for noisy in ("botocore", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def _redact_record(record: logging.LogRecord) -> bool:
    record.msg, record.args = redact(record.getMessage()), None
    return True


def _plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _safe(data: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of ``data`` with anything shaped like a vendor key masked."""
    out: dict[str, Any] = json.loads(redact(json.dumps(data, default=str)))
    return out
