"""One environment variable of a Lambda function behind :class:`rotator.abc.WriteOnlyTarget`.

A function reads its environment when an execution environment starts, so once an update of
the configuration is ``Successful`` every new invocation gets the new key (environments
started before keep the old one until Lambda retires them; the drain waits for that).

Write. ``GetFunctionConfiguration`` gives the whole environment and the ``RevisionId``;
only ``variable`` is changed, every other variable is sent back as it was, and
``UpdateFunctionConfiguration`` carries the ``RevisionId`` so a concurrent change fails it
(``PreconditionFailedException``; ``ResourceConflictException`` while another update is in
progress). Either way the configuration is read again and the write retried, a few times,
then :class:`StoreConflict`. Before reading, the write waits for the function to settle
(``State`` not ``Pending``, ``LastUpdateStatus`` not ``InProgress``): Lambda refuses an
update meanwhile. After the update it polls until ``LastUpdateStatus`` is ``Successful``
(``Failed`` is a :class:`StoreError` quoting ``LastUpdateStatusReason``), then checks that
the variable holds the value written (another writer may have changed it since); a read that
still shows the revision from before the update is taken as stale and read again. A value
already in place is not written again.

An environment encrypted with a customer managed KMS key reads back without its variables
(``Environment.Error``) for credentials that may not decrypt it: writing then would drop the
other variables, so it is :class:`StoreAccessDenied`.

``check_access``: ``GetFunctionConfiguration`` (the function exists, its environment can be
read), then ``UpdateFunctionConfiguration`` with a ``RevisionId`` no function has. Lambda
authorizes the call before it compares revisions, so ``PreconditionFailedException`` proves
the update permission and nothing changes; ``AccessDenied`` disproves it.

Values. Lambda's messages may quote the environment (the 4 KB limit's "String measured:
{...}"), so every AWS message is cut before such a quote and scrubbed of every variable value
the function holds; botocore's own errors are named by class only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotator.abc import Stamp
from rotator.aws_errors import MESSAGE_LIMIT, BotoKind, Kind, classify, classify_botocore
from rotator.aws_session import client as aws_client
from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.secret import Secret, fingerprint

if TYPE_CHECKING:
    from mypy_boto3_lambda.client import LambdaClient
    from mypy_boto3_lambda.type_defs import FunctionConfigurationResponseTypeDef

    from rotator.builtin.stores import LambdaEnvTarget

log = logging.getLogger("rotator.stores")

ROUNDS = 4
"""Writes tried in all when a concurrent change wins the race, before StoreConflict."""
WAIT_SECONDS = 300.0
"""How long a write waits for the function to settle and for its update to finish."""
POLL_SECONDS = 1.0
_NO_REVISION = "00000000-0000-0000-0000-000000000000"
"""A RevisionId no function has: check_access's update is refused before it changes anything."""
_RACES = {"PreconditionFailedException", "ResourceConflictException"}
_QUOTE_MARKERS = ("String measured", "{")


def open_write_only(
    spec: LambdaEnvTarget,
    *,
    base_dir: Path,
    client: Any | None = None,
    wait: float = WAIT_SECONDS,
    poll: float = POLL_SECONDS,
) -> LambdaEnvironment:
    """The target for ``spec``; ``client`` (a Lambda client) replaces the one built from it."""
    del base_dir  # nothing of a function is a local path
    name = _name(spec)
    if client is None:
        with _translated(name, "connect", ()):
            client = _build_client(spec)
    return LambdaEnvironment(spec, client, wait=wait, poll=poll)


def _name(spec: LambdaEnvTarget) -> str:
    return f"lambda_env:{spec.function}#{spec.variable}"


def _build_client(spec: LambdaEnvTarget) -> LambdaClient:
    """The process's shared lambda client for this spec's region, endpoint and credentials."""
    built: LambdaClient = aws_client(
        "lambda",
        region=spec.region,
        endpoint_url=spec.endpoint_url,
        profile=spec.profile,
        role_arn=spec.role_arn,
        attempts=3,
    )
    return built


class LambdaEnvironment:
    """One variable of one function's environment; the other variables are kept."""

    def __init__(
        self,
        spec: LambdaEnvTarget,
        client: LambdaClient,
        *,
        wait: float = WAIT_SECONDS,
        poll: float = POLL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self._client = client
        self._name = _name(spec)
        self._function = spec.function
        self._variable = spec.variable
        self._wait = wait
        self._poll = poll
        self._clock = clock
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"LambdaEnvironment({self._name})"

    def write(self, value: Secret, stamp: Stamp) -> None:
        for _ in range(ROUNDS):
            config = self._settled("write")
            variables = self._variables(config, "write")
            held = variables.get(self._variable)
            same = held is not None and fingerprint(held) == value.fingerprint
            if same and config.get("LastUpdateStatus") != "Failed":
                log.info("%s: already holds key %s (fp %s)", self._name, stamp.key_id, stamp.fingerprint)
                return
            variables[self._variable] = value.reveal()
            if self._update(config, variables):
                break
        else:
            raise StoreConflict(self._name, f"write: the function kept changing ({ROUNDS} tries)")
        self._confirm(value, config.get("RevisionId"), variables.values())
        log.info(
            "%s: wrote key %s (fp %s, attempt %s)", self._name, stamp.key_id, stamp.fingerprint, stamp.attempt
        )

    def check_access(self) -> None:
        config = self._get("check_access", ())
        self._variables(config, "check_access")
        from botocore.exceptions import ClientError

        try:
            with _translated(self._name, "check_access", (), passthrough=_RACES):
                self._client.update_function_configuration(
                    FunctionName=self._function,
                    RevisionId=_NO_REVISION,
                    Description=config.get("Description", ""),
                )
        except ClientError:
            return  # refused for the revision (or a running update): authorized, nothing changed
        log.warning("%s: check_access: the update was not refused for its RevisionId", self._name)

    # ------------------------------------------------------------------ steps

    def _update(self, config: FunctionConfigurationResponseTypeDef, variables: dict[str, str]) -> bool:
        """Send ``variables``; ``False`` when a concurrent change won (read again and retry)."""
        from botocore.exceptions import ClientError

        revision = config.get("RevisionId")
        if not revision:
            raise StoreError(
                self._name, "write: Lambda gave no RevisionId; an unconditional update could lose a change"
            )
        try:
            with _translated(self._name, "write", variables.values(), passthrough=_RACES):
                self._client.update_function_configuration(
                    FunctionName=self._function,
                    RevisionId=revision,
                    Environment={"Variables": variables},
                )
        except ClientError as exc:
            log.info("%s: write raced another change (%s); reading again", self._name, _code(exc))
            return False
        return True

    def _confirm(self, value: Secret, before: str | None, values: Iterable[str]) -> None:
        """Wait for the update to finish, then check the variable holds ``value``. A read still
        showing the revision ``before`` the update is stale: it is read again."""

        def finished(config: FunctionConfigurationResponseTypeDef) -> bool:
            return config.get("RevisionId") != before and config.get("LastUpdateStatus") != "InProgress"

        config = self._poll_until("write", finished, "its update to finish", values)
        if config.get("LastUpdateStatus") == "Failed":
            reason = _scrub(
                f"{config.get('LastUpdateStatusReasonCode', '')}: {config.get('LastUpdateStatusReason', '')}",
                values,
            )
            raise StoreError(self._name, f"write: the function's update failed ({reason})")
        held = self._variables(config, "write").get(self._variable)
        if held is None or fingerprint(held) != value.fingerprint:
            raise StoreConflict(self._name, "write: another writer changed the variable after this update")

    def _settled(self, action: str) -> FunctionConfigurationResponseTypeDef:
        """The configuration once the function is neither being created nor updated."""
        config = self._poll_until(action, _settled, "the function to settle", ())
        if config.get("State") == "Failed":
            reason = _scrub(f"{config.get('StateReasonCode', '')}: {config.get('StateReason', '')}", ())
            raise StoreError(self._name, f"{action}: the function is in state Failed ({reason})")
        return config

    def _poll_until(
        self,
        action: str,
        done: Callable[[FunctionConfigurationResponseTypeDef], bool],
        what: str,
        values: Iterable[str],
    ) -> FunctionConfigurationResponseTypeDef:
        secrets = list(values)
        deadline = self._clock() + self._wait
        while True:
            config = self._get(action, secrets)
            if done(config):
                return config
            if self._clock() >= deadline:
                raise StoreUnavailable(
                    self._name,
                    f"{action}: waited {self._wait:g}s for {what} (State {config.get('State')}, "
                    f"LastUpdateStatus {config.get('LastUpdateStatus')})",
                )
            self._sleep(self._poll)

    def _get(self, action: str, values: Iterable[str]) -> FunctionConfigurationResponseTypeDef:
        with _translated(self._name, action, values):
            return self._client.get_function_configuration(FunctionName=self._function)

    def _variables(self, config: FunctionConfigurationResponseTypeDef, action: str) -> dict[str, str]:
        environment = config.get("Environment", {})
        error = environment.get("Error")
        if error:
            raise StoreAccessDenied(
                self._name,
                f"{action}: the function's environment cannot be read with these credentials "
                f"({error.get('ErrorCode', 'unknown')}); writing would drop its other variables",
            )
        return dict(environment.get("Variables", {}))


def _settled(config: FunctionConfigurationResponseTypeDef) -> bool:
    return config.get("State") != "Pending" and config.get("LastUpdateStatus") != "InProgress"


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "?"))


def _scrub(message: str, values: Iterable[str]) -> str:
    """``message`` cut before any quoted environment, without any of ``values``, one short line."""
    for marker in _QUOTE_MARKERS:
        message = message.split(marker, 1)[0]
    for secret in sorted(values, key=len, reverse=True):
        if len(secret) >= 4:
            message = message.replace(secret, "[...]")
    return " ".join(message.split())[:MESSAGE_LIMIT].rstrip(" :")


# --------------------------------------------------------------------------- errors


@contextmanager
def _translated(
    name: str, action: str, values: Iterable[str], *, passthrough: set[str] | None = None
) -> Iterator[None]:
    """Raise boto3 and botocore errors as :class:`StoreError` kinds naming ``name``; codes in
    ``passthrough`` are re-raised as they are, for the caller to handle."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if passthrough and _code(exc) in passthrough:
            raise
        raise _from_client_error(name, action, exc.response, values) from None
    except BotoCoreError as exc:
        raise _from_botocore_error(name, action, exc) from None


def _from_client_error(name: str, action: str, response: Any, values: Iterable[str]) -> StoreError:
    failure = classify(response)
    text = f"{action}: {failure.code}: {_scrub(failure.message, values)}".rstrip(": ")
    if failure.kind is Kind.NOT_FOUND:
        return StoreNotFound(name, text)
    if failure.kind is Kind.DENIED:
        return StoreAccessDenied(name, text)
    if failure.kind.transient:
        return StoreUnavailable(name, text)
    return StoreError(name, text)


def _from_botocore_error(name: str, action: str, exc: Exception) -> StoreError:
    kind, name_of = classify_botocore(exc), type(exc).__name__
    if kind in (BotoKind.NOT_SENT, BotoKind.LOST):
        return StoreUnavailable(name, f"{action}: cannot reach Lambda ({name_of})")
    if kind is BotoKind.CREDENTIALS:
        return StoreAccessDenied(name, f"{action}: no usable AWS credentials ({name_of})")
    return StoreError(name, f"{action}: {name_of}")
