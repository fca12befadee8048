"""One writer per key across machines: a lease per key in a DynamoDB table.

One item per key (``pk`` = the key's name) holds ``owner`` (``user@host pid N``,
for people), ``lease_id`` (a UUID per acquisition: two runners of one process
are still told apart), ``acquired_at`` (RFC 3339) and ``expires_at`` (epoch
seconds, a Number: the table's TTL attribute).

* Acquire: ``PutItem`` conditioned on ``attribute_not_exists(pk) OR expires_at
  < :now``. DynamoDB evaluates the condition and writes atomically, so of many
  runners exactly one gets a free or expired lease; the others get the holder's
  item back and raise :class:`rotator.errors.LeaseBusy` naming it.
* Renew: a daemon thread moves ``expires_at`` forward every ``ttl / 3`` with an
  ``UpdateItem`` conditioned on ``lease_id``.
* Release: ``DeleteItem`` conditioned on ``lease_id``, so a runner whose lease
  was taken over never deletes its successor's.

The table (string hash key ``pk``, TTL on ``expires_at``) comes from the SAM
template in ``deploy/lambda``; DynamoDB's TTL deletion is lazy, the condition
alone decides expiry.

Limits. A holder whose renewals fail for a whole ``ttl`` (a network partition,
a process paused for long) has lost its lease: the renewal thread logs an error
and sets :attr:`DynamoDBLeaseInfo.lost`, but the engine does not look at that
flag, so the step in hand runs to its end while another runner may take the
key over. Steps are short and idempotent, stores check revisions and the
vendor's two-key limit refuses a third key, which bounds the damage; keep
``ttl`` well above the longest pause expected. Expiry is judged by each
runner's own clock: keep clocks in sync (NTP) and ``ttl`` well above their skew.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rotator.abc import format_time
from rotator.aws_errors import BotoKind, classify, classify_botocore
from rotator.engine.lease import LeaseInfo, default_owner
from rotator.errors import ConfigError, LeaseBusy, RotatorError
from rotator.net import require_tls
from rotator.spec import DynamoDBLeaseSpec

log = logging.getLogger("rotator.lease")

_CONDITION_FAILED = "ConditionalCheckFailedException"


@dataclass(frozen=True)
class DynamoDBLeaseInfo(LeaseInfo):
    """A held DynamoDB lease; :attr:`lost` is set when a renewal finds it gone."""

    lease_id: str = ""
    lost: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


class DynamoDBLease:
    """Leases as items of one DynamoDB table; see the module docstring."""

    def __init__(
        self,
        spec: DynamoDBLeaseSpec,
        *,
        owner: str | None = None,
        client: Any | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if spec.endpoint_url:
            require_tls(f"lease table {spec.table}: endpoint_url", spec.endpoint_url)
        self.spec = spec
        self.table = spec.table
        self.ttl = spec.ttl.total_seconds()
        if self.ttl <= 0:
            raise ConfigError(f"lease table {spec.table}: ttl must be positive")
        self.owner = owner or default_owner()
        self._client = client
        self._client_lock = threading.Lock()
        self.clock = clock

    def client(self) -> Any:
        """The boto3 DynamoDB client, built on first use (the CLI's other commands skip it)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._call("connect", _build_client, self.spec)
            return self._client

    @contextmanager
    def acquire(self, key: str) -> Iterator[LeaseInfo]:
        """Hold ``key``'s lease for the ``with`` block; see :meth:`rotator.engine.lease.Lease.acquire`."""
        if not key:
            raise ValueError("a lease needs a key name")
        info = self._put(key)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(info, stop), name=f"lease-renew:{key}", daemon=True
        )
        renewer.start()
        try:
            yield info
        finally:
            stop.set()
            renewer.join()
            self._release(info)

    # ----------------------------------------------------------------- the three calls

    def _put(self, key: str) -> DynamoDBLeaseInfo:
        for _ in range(3):  # the holder may release between our put and our look at it
            now = self.clock()
            info = DynamoDBLeaseInfo(
                key=key,
                owner=self.owner,
                acquired_at=datetime.fromtimestamp(now, UTC),
                lease_id=str(uuid.uuid4()),
            )
            item = {
                "pk": {"S": key},
                "owner": {"S": info.owner},
                "lease_id": {"S": info.lease_id},
                "acquired_at": {"S": format_time(info.acquired_at)},
                "expires_at": {"N": str(self._expiry(now))},
            }
            try:
                self._call(
                    f"acquire {key}",
                    self.client().put_item,
                    TableName=self.table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(#pk) OR #exp < :now",
                    ExpressionAttributeNames={"#pk": "pk", "#exp": "expires_at"},
                    ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except _Refused as refused:
                held = refused.item or self._get(key)
                if held is not None and float(held.get("expires_at", {}).get("N", "0")) >= now:
                    raise LeaseBusy(key, _describe(held)) from None
                continue
            log.debug("lease on %s taken by %s", key, info.owner)
            return info
        raise LeaseBusy(key, "other runners (the lease kept changing hands)")

    def _renew(self, info: DynamoDBLeaseInfo, stop: threading.Event) -> None:
        """Move ``expires_at`` forward until ``stop``; on loss, log and set ``info.lost``."""
        deadline = self._expiry(info.acquired_at.timestamp())
        interval = self.ttl / 3
        while not stop.wait(interval):
            expires = self._expiry(self.clock())
            try:
                self._call(
                    f"renew {info.key}",
                    self.client().update_item,
                    TableName=self.table,
                    Key={"pk": {"S": info.key}},
                    UpdateExpression="SET #exp = :exp",
                    ConditionExpression="#id = :id",
                    ExpressionAttributeNames={"#id": "lease_id", "#exp": "expires_at"},
                    ExpressionAttributeValues={":exp": {"N": str(expires)}, ":id": {"S": info.lease_id}},
                )
            except _Refused:
                self._lost(info, "another runner has taken it over")
                return
            except Exception as exc:  # noqa: BLE001 - this thread must not die silently
                if self.clock() >= deadline:
                    self._lost(info, f"no renewal succeeded before it expired (last error: {exc})")
                    return
                log.warning("lease on %s: renewal failed, retrying: %s", info.key, exc)
                interval = min(self.ttl / 10, 1.0)
                continue
            deadline, interval = expires, self.ttl / 3

    def _lost(self, info: DynamoDBLeaseInfo, why: str) -> None:
        log.error(
            "lease on %s in table %s lost: %s; the step in hand finishes, another runner may "
            "now work on the key",
            info.key,
            self.table,
            why,
        )
        info.lost.set()

    def _release(self, info: DynamoDBLeaseInfo) -> None:
        try:
            self._call(
                f"release {info.key}",
                self.client().delete_item,
                TableName=self.table,
                Key={"pk": {"S": info.key}},
                ConditionExpression="#id = :id",
                ExpressionAttributeNames={"#id": "lease_id"},
                ExpressionAttributeValues={":id": {"S": info.lease_id}},
            )
        except _Refused:
            log.warning("lease on %s was taken over before its release; left to its holder", info.key)
        except RotatorError as exc:
            # raising here would hide the outcome of the step; the lease expires by itself
            log.warning("lease on %s not released (it expires within %.0fs): %s", info.key, self.ttl, exc)

    def _get(self, key: str) -> dict[str, Any] | None:
        out = self._call(
            f"read the holder of {key}",
            self.client().get_item,
            TableName=self.table,
            Key={"pk": {"S": key}},
            ConsistentRead=True,
        )
        item: dict[str, Any] | None = out.get("Item")
        return item

    # ----------------------------------------------------------------- helpers

    def _expiry(self, now: float) -> int:
        # whole seconds: DynamoDB's TTL reads epoch seconds
        return math.ceil(now + self.ttl)

    def _call(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call boto3; a failed condition is :class:`_Refused`, any other error a RotatorError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            failure = classify(exc.response)
            if failure.code == _CONDITION_FAILED:
                held: Any = exc.response.get("Item")
                raise _Refused(held if isinstance(held, dict) else None) from None
            raise RotatorError(failure.text(f"lease table {self.table}: {action}")) from None
        except BotoCoreError as exc:
            if classify_botocore(exc) is BotoKind.NO_REGION:
                raise RotatorError(
                    f"lease table {self.table}: no AWS region (set lease.region or AWS_REGION)"
                ) from None
            raise RotatorError(f"lease table {self.table}: {action}: {type(exc).__name__}") from None


class _Refused(Exception):
    """A conditional write was refused; ``item`` is the item as it stood, when DynamoDB sent it."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        super().__init__("condition failed")
        self.item = item


def _describe(item: dict[str, Any]) -> str:
    owner = item.get("owner", {}).get("S", "an unnamed runner")
    since = item.get("acquired_at", {}).get("S", "an unknown time")
    until = float(item.get("expires_at", {}).get("N", "0"))
    return f"{owner} since {since} (lease renewed until {format_time(datetime.fromtimestamp(until, UTC))})"


def _build_client(spec: DynamoDBLeaseSpec) -> Any:
    from rotator.aws_session import client

    return client(
        "dynamodb",
        region=spec.region,
        endpoint_url=spec.endpoint_url,
        attempts=4,
        connect_timeout=5,
        read_timeout=10,
    )
