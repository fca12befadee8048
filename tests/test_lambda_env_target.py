"""The lambda_env write-only target on moto, with Lambda's revisions and update states
(tests/fakes/moto_lambda.py): what only a function's environment has. The write-only contract
suite checks the rest."""

from __future__ import annotations

import json
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest

from providers.lambda_env import ROUNDS, open_write_only
from rotator.abc import Stamp
from rotator.errors import StoreAccessDenied, StoreConflict, StoreError, StoreUnavailable
from rotator.secret import Secret
from tests.fakes.moto_lambda import ENV_LIMIT, FAILED_REASON
from tests.harnesses.write_only_lambda_env import OTHERS, VARIABLE, LambdaEnvHarness

CANARY = f"cny{uuid.uuid4().hex[:12]}"


def _value() -> Secret:
    return Secret(f"{CANARY}_{uuid.uuid4().hex}")


def _stamp(value: Secret) -> Stamp:
    return Stamp(key_id="key-1", fingerprint=value.fingerprint, attempt=str(uuid.uuid4()))


def _clean(exc: BaseException, *also: str) -> str:
    """The error's whole text, checked to hold neither the canary nor any of ``also``."""
    whole = "".join(traceback.format_exception(exc)) + repr(exc)
    for secret in (CANARY, *also):
        assert secret not in whole, f"{secret[:8]}... leaked into {type(exc).__name__}"
    return str(exc)


def test_a_concurrent_change_is_read_again_and_kept(write_only_lambda_env_harness: LambdaEnvHarness) -> None:
    """Another writer's change between our read and our update: the write re-reads and keeps it."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    h.updates.interfere(function)
    value = _value()
    h.target(function).write(value, _stamp(value))
    variables = h.variables(function)
    assert variables[VARIABLE] == value.reveal()
    assert variables["INTERFERED"] == "0" and {k: variables[k] for k in OTHERS} == OTHERS
    assert h.updates.of(function).updates == 2  # theirs, then ours: the refused one changed nothing


def test_a_function_that_keeps_changing_is_a_conflict(
    write_only_lambda_env_harness: LambdaEnvHarness,
) -> None:
    """Losing the RevisionId race every time: StoreConflict after a bounded number of tries."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    h.updates.interfere(function, times=ROUNDS)
    target = h.target(function)
    value = _value()
    with pytest.raises(StoreConflict) as info:
        target.write(value, _stamp(value))
    assert _clean(info.value).startswith(f"{target.name}: write: the function kept changing")
    assert VARIABLE not in h.variables(function)


def test_a_failed_update_is_an_error_with_lambda_reason(
    write_only_lambda_env_harness: LambdaEnvHarness,
) -> None:
    """LastUpdateStatus Failed: a StoreError quoting LastUpdateStatusReason, not a success."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    h.updates.fail_next(function)
    target = h.target(function)
    value = _value()
    with pytest.raises(StoreError) as info:
        target.write(value, _stamp(value))
    assert not isinstance(info.value, StoreConflict | StoreUnavailable)
    assert FAILED_REASON in _clean(info.value) and "update failed" in str(info.value)

    target.write(value, _stamp(value))  # the next write, the update succeeding, is done
    assert h.variables(function)[VARIABLE] == value.reveal()


def test_a_pending_function_is_waited_for(write_only_lambda_env_harness: LambdaEnvHarness) -> None:
    """State Pending refuses updates: the write waits until the function is Active."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    h.updates.pending_for(function, 0.4)
    value = _value()
    t0 = time.monotonic()
    h.target(function).write(value, _stamp(value))
    assert time.monotonic() - t0 >= 0.4
    assert h.variables(function)[VARIABLE] == value.reveal()


def test_an_update_in_progress_is_waited_for(write_only_lambda_env_harness: LambdaEnvHarness) -> None:
    """Someone else's update still InProgress: the write waits for it instead of colliding."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    h.client.update_function_configuration(FunctionName=function, Description="deployed by CI")
    value = _value()
    h.target(function).write(value, _stamp(value))
    assert h.variables(function)[VARIABLE] == value.reveal()
    config = h.client.get_function_configuration(FunctionName=function)
    assert config["Description"] == "deployed by CI"


def test_reads_from_before_the_update_are_read_again(write_only_lambda_env_harness: LambdaEnvHarness) -> None:
    """A read right after the update still shows the old revision: it is stale, not a conflict."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    h.updates.stale_reads(function, 3)
    value = _value()
    h.target(function).write(value, _stamp(value))
    assert h.updates.of(function).snapshots == []  # the stale reads were served, and read past
    assert h.variables(function)[VARIABLE] == value.reveal()


def test_an_update_that_never_finishes_is_unavailable(
    write_only_lambda_env_harness: LambdaEnvHarness,
) -> None:
    """Still InProgress after the wait: StoreUnavailable (transient; the next pass writes again)."""
    h = write_only_lambda_env_harness
    h.updates.delay = 60
    function = h.new_function()
    target = open_write_only(h.spec(function), base_dir=Path.cwd(), client=h.client, wait=0.3, poll=0.02)
    value = _value()
    with pytest.raises(StoreUnavailable, match=r"waited 0\.3s for its update to finish"):
        target.write(value, _stamp(value))


def test_an_environment_over_the_limit_is_refused_without_quoting_it(
    write_only_lambda_env_harness: LambdaEnvHarness,
) -> None:
    """Lambda's 4 KB error quotes the variables: the error keeps its code and drops every value."""
    h = write_only_lambda_env_harness
    room = ENV_LIMIT - 30 - len(json.dumps({**OTHERS, "BULKY": ""}, separators=(",", ":")))
    bulky = (f"bulky-{uuid.uuid4().hex}" * 200)[:room]  # fits, until our variable is added
    function = h.new_function({**OTHERS, "BULKY": bulky})
    target = h.target(function)
    value = _value()
    with pytest.raises(StoreError) as info:
        target.write(value, _stamp(value))
    text = _clean(info.value, bulky[:40], OTHERS["DATABASE_URL"])
    assert "InvalidParameterValueException" in text and "4KB limit" in text


def test_an_undecryptable_environment_is_never_overwritten(
    write_only_lambda_env_harness: LambdaEnvHarness,
) -> None:
    """Variables hidden behind a KMS key we may not use: writing would drop them, so it is denied."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    h.updates.undecryptable(function)
    target = h.target(function)
    value = _value()
    with pytest.raises(StoreAccessDenied, match="cannot be read with these credentials"):
        target.write(value, _stamp(value))
    with pytest.raises(StoreAccessDenied):
        target.check_access()
    assert h.updates.of(function).updates == 0


def test_same_value_and_check_access_update_nothing(write_only_lambda_env_harness: LambdaEnvHarness) -> None:
    """A value already in place is not written again, and check_access changes no revision."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    target = h.target(function)
    value = _value()
    target.write(value, _stamp(value))
    revision = h.client.get_function_configuration(FunctionName=function)["RevisionId"]
    target.write(value, _stamp(value))
    target.check_access()
    assert h.client.get_function_configuration(FunctionName=function)["RevisionId"] == revision
    assert h.updates.of(function).updates == 1


def test_through_the_endpoint_of_a_moto_server(
    write_only_lambda_env_harness: LambdaEnvHarness, moto_server: str
) -> None:
    """The target built from its declaration alone (endpoint_url, region) writes over real HTTP."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    target = open_write_only(h.spec(function, endpoint_url=moto_server), base_dir=Path.cwd(), poll=0.02)
    value = _value()
    target.write(value, _stamp(value))
    target.check_access()
    assert h.variables(function)[VARIABLE] == value.reveal()


def test_concurrent_writers_of_two_variables_both_land(
    write_only_lambda_env_harness: LambdaEnvHarness,
) -> None:
    """Two targets on two variables of one function, written at once: neither loses the other's."""
    h = write_only_lambda_env_harness
    function = h.new_function()
    first = h.target(function)
    second = open_write_only(
        h.spec(function).model_copy(update={"variable": "SECOND_KEY"}),
        base_dir=Path.cwd(),
        client=h.client,
        poll=0.02,
    )
    a, b = _value(), _value()
    errors: list[BaseException] = []

    def write(target: object, value: Secret) -> None:
        try:
            target.write(value, _stamp(value))  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=pair) for pair in ((first, a), (second, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    variables = h.variables(function)
    assert variables[VARIABLE] == a.reveal() and variables["SECOND_KEY"] == b.reveal()
