"""Reading vendor answers (rotator.vendors._answers) and the vendor clock (_vendor_time),
each on its own, without a transport."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from rotator.errors import (
    KeyLimitReached,
    VendorAuthError,
    VendorError,
    VendorNotFound,
    VendorProtocolError,
    VendorRejected,
    VendorUnavailable,
)
from rotator.vendors._answers import MAX_BODY, read_answer
from rotator.vendors._vendor_time import DateOffset

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
KEY = "adj_live_" + "0123456789abcdef" * 4
EP = "emu GET /api/v1/api-keys"


def _error(status: int, body: object, **headers: str) -> VendorError:
    answer = read_answer(EP, status, json.dumps(body).encode(), headers, lambda: NOW)
    with pytest.raises(VendorError) as info:
        answer.reply(want_data=True)
    return info.value


def test_a_2xx_object_is_a_reply() -> None:
    answer = read_answer(EP, 200, b'{"data": {"a": 1}, "request_id": "r1"}', {}, lambda: NOW)
    reply = answer.reply(want_data=True)
    assert (reply.where, reply.status, reply.request_id) == (f"{EP} (HTTP 200)", 200, "r1")
    assert reply.data().integer("a") == 1


@pytest.mark.parametrize(
    ("raw", "want_data", "problem"),
    [
        (None, False, f"answer larger than {MAX_BODY} bytes"),
        (b"<html>", False, "answer is not a JSON object"),
        (b"[1]", False, "answer is not a JSON object"),
        (b"\xff", False, "answer is not a JSON object"),
        (b"{}", True, "answer has no 'data'"),
    ],
)
def test_a_2xx_that_breaks_the_contract(raw: bytes | None, want_data: bool, problem: str) -> None:
    answer = read_answer(EP, 200, raw, {}, lambda: NOW)
    with pytest.raises(VendorProtocolError, match=problem):
        answer.reply(want_data=want_data)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "INVALID_API_KEY", VendorAuthError),
        (403, "FORBIDDEN", VendorAuthError),
        (404, "NOT_FOUND", VendorNotFound),
        (409, "KEY_LIMIT_REACHED", KeyLimitReached),
        (409, "CONFLICT", VendorRejected),
        (422, "VALIDATION", VendorRejected),
        (429, "RATE_LIMITED", VendorUnavailable),
        (503, "UNAVAILABLE", VendorUnavailable),
        (302, "MOVED", VendorProtocolError),
    ],
)
def test_status_and_code_give_the_kind(status: int, code: str, kind: type[VendorError]) -> None:
    error = _error(status, {"error": {"code": code, "message": "m"}, "request_id": "r9"})
    assert type(error) is kind
    assert (error.status, error.code) == (status, code)
    assert str(error).startswith(f"{EP} (HTTP {status}) {code}: m (request_id r9)")


def test_vendor_messages_lose_key_like_runs() -> None:
    error = _error(422, {"error": {"code": "BAD", "message": f"key {KEY}\nis\tbad " + "x" * 300}})
    assert KEY not in str(error) and "key [...] is bad [...]" in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("headers", "body_hint", "wait"),
    [
        ({"retry-after": "7"}, None, 7.0),
        ({"retry-after": "Tue, 01 Jan 2030 12:00:30 GMT"}, None, 30.0),
        ({"retry-after": "Tue, 01 Jan 2030 11:00:00 GMT"}, None, 0.0),  # past: no wait
        ({"retry-after": "soon"}, None, None),
        ({}, 4, 4.0),
        ({"retry-after": "2"}, 9, 9.0),  # the longer of the two
    ],
)
def test_retry_after_from_header_or_body(
    headers: dict[str, str], body_hint: int | None, wait: float | None
) -> None:
    data = {"retry_after_seconds": body_hint} if body_hint is not None else {}
    error = _error(429, {"error": {"code": "RATE_LIMITED", "data": data}}, **headers)
    assert isinstance(error, VendorUnavailable) and error.retry_after == wait


def test_date_offset_learns_the_vendors_lead() -> None:
    local = NOW + timedelta(microseconds=600000)
    offset = DateOffset(lambda: local)
    assert offset.now() is None
    for useless in (None, "", "not a date"):
        offset.learn(useless)
        assert offset.now() is None
    offset.learn("Tue, 01 Jan 2030 12:00:30 GMT")
    assert offset.now() == local + timedelta(seconds=29.4)
    offset.learn("Tue, 01 Jan 2030 12:00:31 GMT")  # tighter: kept
    offset.learn("Tue, 01 Jan 2030 12:00:30 GMT")
    assert offset.now() == local + timedelta(seconds=30.4)
    offset.learn("Tue, 01 Jan 2030 11:59:50 GMT")  # the vendor's clock was set
    assert offset.now() == local - timedelta(seconds=10.6)
