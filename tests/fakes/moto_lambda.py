"""What moto's Lambda lacks of the service's update model, added to its backend in process.

moto 5 keeps a function's configuration, but gives it no ``RevisionId`` and reports every
update ``Successful`` at once. Lambda itself (API reference, "Lambda function states"):

* every change of the configuration gets a new ``RevisionId``; ``UpdateFunctionConfiguration``
  whose ``RevisionId`` is not the latest fails with ``PreconditionFailedException`` (412);
* an update is ``LastUpdateStatus: InProgress`` for a while, then ``Successful`` or ``Failed``
  with ``LastUpdateStatusReason(Code)``; another update meanwhile fails with
  ``ResourceConflictException`` (409), as it does while the function is ``State: Pending``;
* the environment is at most 4 KB, and the error says so with the variables it measured.

:class:`LambdaUpdates` patches moto's classes to behave so, for the time it is installed
(in-process ``mock_aws`` and a ``ThreadedMotoServer`` alike). Per function it can fail the
next updates (:meth:`fail_next`), keep the function ``Pending`` for a while
(:meth:`pending_for`), hide its environment behind a KMS key (:meth:`undecryptable`), serve
reads from before an update for a while (:meth:`stale_reads`), or let another writer change the configuration just before our next
updates land (:meth:`interfere`).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from moto.awslambda.models import LambdaBackend, LambdaFunction
from moto.core.exceptions import JsonRESTError

ENV_LIMIT = 4096
KMS_DENIED = "Lambda was unable to decrypt the environment variables because KMS access was denied."
FAILED_REASON = "The KMS key used to encrypt the environment variables is disabled."


class _Refused(JsonRESTError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = status


@dataclass
class _Function:
    revision: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "Successful"
    done_at: float = 0.0
    outcome: str = "Successful"
    pending_until: float = 0.0
    fail: int = 0
    interfere: int = 0
    undecryptable: bool = False
    stale: int = 0
    """Reads after the next update that still show the configuration from before it."""
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    updates: int = 0
    """Updates applied (ours and the interfering writer's)."""

    def now_status(self) -> str:
        if self.status == "InProgress" and time.monotonic() >= self.done_at:
            self.status = self.outcome
        return self.status


@dataclass
class LambdaUpdates:
    """Lambda's revisions and update states on moto (see the module doc)."""

    delay: float = 0.15
    """How long each update stays ``InProgress``."""
    functions: dict[str, _Function] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def of(self, name: str) -> _Function:
        with self._lock:
            return self.functions.setdefault(name, _Function())

    def fail_next(self, name: str, times: int = 1) -> None:
        self.of(name).fail += times

    def pending_for(self, name: str, seconds: float) -> None:
        self.of(name).pending_until = time.monotonic() + seconds

    def undecryptable(self, name: str) -> None:
        """The function's environment is under a KMS key the caller may not use: Lambda then
        answers its configuration with ``Environment.Error`` instead of the variables."""
        self.of(name).undecryptable = True

    def stale_reads(self, name: str, times: int = 1) -> None:
        """The next update is followed by ``times`` reads showing the configuration before it
        (a read served by a replica that has not seen the update yet)."""
        self.of(name).stale += times

    def interfere(self, name: str, times: int = 1) -> None:
        """Another writer changes variable ``INTERFERED`` just before each of our next updates."""
        self.of(name).interfere += times

    @contextmanager
    def installed(self) -> Iterator[LambdaUpdates]:
        updates = self
        original_config = LambdaFunction.get_configuration
        original_update = LambdaBackend.update_function_configuration

        def get_configuration(fn: LambdaFunction, on_create: bool = False) -> dict[str, Any]:
            return updates._shown(fn, original_config(fn, on_create), on_create)

        def update_function_configuration(
            backend: LambdaBackend, function_name: str, qualifier: str, body: dict[str, Any]
        ) -> dict[str, Any] | None:
            fn = backend.get_function(function_name, qualifier)
            with updates._lock:
                state = updates.of(fn.function_name)
                if state.interfere:
                    state.interfere -= 1
                    other = {**fn.environment_vars, "INTERFERED": str(state.updates)}
                    original_update(backend, function_name, qualifier, {"Environment": {"Variables": other}})
                    updates._applied(state)
                    state.status = "Successful"  # theirs finished before ours arrives: a stale revision
                updates._check(fn, state, body)
                if state.stale:
                    state.snapshots = [copy.deepcopy(get_configuration(fn)) for _ in range(state.stale)]
                    state.stale = 0
                result = original_update(backend, function_name, qualifier, body)
                updates._applied(state)
                if result is not None:
                    result.update(RevisionId=state.revision, LastUpdateStatus="InProgress")
                return result

        LambdaFunction.get_configuration = get_configuration  # type: ignore[method-assign]
        LambdaBackend.update_function_configuration = update_function_configuration  # type: ignore[method-assign]
        try:
            yield self
        finally:
            LambdaFunction.get_configuration = original_config  # type: ignore[method-assign]
            LambdaBackend.update_function_configuration = original_update  # type: ignore[method-assign]

    def _shown(self, fn: LambdaFunction, config: dict[str, Any], on_create: bool) -> dict[str, Any]:
        """moto's configuration of ``fn`` as Lambda would show it now."""
        with self._lock:
            state = self.of(fn.function_name)
            if state.snapshots and not on_create:
                return state.snapshots.pop(0)
            config["RevisionId"] = state.revision
            if state.undecryptable:
                config["Environment"] = {
                    "Error": {"ErrorCode": "AccessDeniedException", "Message": KMS_DENIED}
                }
            if time.monotonic() < state.pending_until:
                config["State"] = "Pending"
            if not on_create:
                config["LastUpdateStatus"] = state.now_status()
                if config["LastUpdateStatus"] == "Failed":
                    config["LastUpdateStatusReason"] = FAILED_REASON
                    config["LastUpdateStatusReasonCode"] = "KMSKeyNotFound"
            return config

    def _check(self, fn: LambdaFunction, state: _Function, body: dict[str, Any]) -> None:
        busy = state.now_status() == "InProgress" or time.monotonic() < state.pending_until
        if busy:
            raise _Refused(
                409,
                "ResourceConflictException",
                f"The operation cannot be performed at this time. An update is in progress for resource: {fn.function_arn}",
            )
        if "RevisionId" in body and body["RevisionId"] != state.revision:
            raise _Refused(
                412,
                "PreconditionFailedException",
                "The Revision Id provided does not match the latest Revision Id. "
                "Call the GetFunction/GetAlias API to retrieve the latest Revision Id",
            )
        variables = body.get("Environment", {}).get("Variables")
        if variables is not None:
            measured = json.dumps(variables, separators=(",", ":"))
            if len(measured) > ENV_LIMIT:
                raise _Refused(
                    400,
                    "InvalidParameterValueException",
                    "Lambda was unable to configure your environment variables because the environment "
                    f"variables you have provided exceeded the 4KB limit. String measured: {measured}",
                )

    def _applied(self, state: _Function) -> None:
        state.revision = str(uuid.uuid4())
        state.updates += 1
        state.status, state.done_at = "InProgress", time.monotonic() + self.delay
        state.outcome = "Failed" if state.fail else "Successful"
        if state.fail:
            state.fail -= 1
