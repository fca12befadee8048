"""The github write-only target against the fake GitHub API over real HTTP: what only GitHub has
(environments, key rotation, rate limits, tokens). The write-only contract suite checks the rest."""

from __future__ import annotations

import json
import traceback
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from providers.github import Retry, open_write_only
from rotator.abc import Stamp
from rotator.builtin.stores import GithubTarget
from rotator.errors import StoreAccessDenied, StoreError, StoreUnavailable
from rotator.secret import Secret
from tests.fakes.github_api import API_VERSION, FakeGitHub
from tests.harnesses.write_only_github import FAST, OTHER, SECRET, TOKEN_ENV, GithubHarness

CANARY = f"cny{uuid.uuid4().hex[:12]}"


def _value() -> Secret:
    return Secret(f"{CANARY}_{uuid.uuid4().hex}")


def _write(target: object, value: Secret) -> None:
    stamp = Stamp(key_id="key-1", fingerprint=value.fingerprint, attempt=str(uuid.uuid4()))
    target.write(value, stamp)  # type: ignore[attr-defined]


def _clean(exc: BaseException) -> str:
    whole = "".join(traceback.format_exception(exc)) + repr(exc)
    assert CANARY not in whole, f"a value leaked into {type(exc).__name__}"
    return str(exc)


def test_the_value_travels_sealed_with_the_documented_headers(
    write_only_github_harness: GithubHarness,
) -> None:
    """Only a sealed box crosses the wire, with GitHub's bearer, media type and API version."""
    h = write_only_github_harness
    repo = h.new_repo()
    value = _value()
    _write(h.target(repo), value)
    assert h.api.secret(repo, SECRET) == value.reveal()
    (get, put) = h.api.requests
    assert get == ("GET", f"/repos/{repo}/actions/secrets/public-key", 200)
    assert put == ("PUT", f"/repos/{repo}/actions/secrets/{SECRET}", 201)
    for headers, body in h.api.received:
        assert CANARY.encode() not in body
        assert headers["authorization"] == f"Bearer {h.token}"
        assert headers["accept"] == "application/vnd.github+json"
        assert headers["x-github-api-version"] == API_VERSION
        assert headers["user-agent"].startswith("rotator/")
    sent = json.loads(h.api.received[1][1])
    assert set(sent) == {"encrypted_value", "key_id"}


def test_a_second_write_is_an_update(write_only_github_harness: GithubHarness) -> None:
    """GitHub answers 204 when the secret exists: that is success too."""
    h = write_only_github_harness
    repo = h.new_repo()
    target = h.target(repo)
    _write(target, _value())
    new = _value()
    _write(target, new)
    assert [status for _, _, status in h.api.requests if status in (201, 204)] == [201, 204]
    assert h.api.secret(repo, SECRET) == new.reveal()


def test_an_environment_secret_is_written_in_that_environment(
    write_only_github_harness: GithubHarness,
) -> None:
    """With environment, the environment's key and secrets are used, and the repository's are untouched."""
    h = write_only_github_harness
    repo = h.new_repo(environments=("production",))
    target = h.target(repo, environment="production")
    assert target.name == f"github:{repo}@production#{SECRET}"
    value = _value()
    _write(target, value)
    assert h.api.secret(repo, SECRET, "production") == value.reveal()
    assert h.api.secret(repo, SECRET) is None
    assert h.api.requests[0][1] == f"/repos/{repo}/environments/production/secrets/public-key"

    missing = h.target(repo, environment="staging")
    with pytest.raises(Exception, match=r"HTTP 404.*no such repository or environment") as info:
        missing.check_access()
    assert type(info.value).__name__ == "StoreNotFound"


def test_a_key_rotated_between_the_two_calls_is_sealed_again(
    write_only_github_harness: GithubHarness,
) -> None:
    """GitHub rotates the repository key after we fetched it: 422, a fresh key, one more PUT."""
    h = write_only_github_harness
    repo = h.new_repo()
    rotated: list[str] = []

    def rotate_once(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/public-key") and not rotated:
            h.api.rotate_key(repo)
            rotated.append(repo)

    client = httpx.Client(event_hooks={"response": [rotate_once]})
    target = open_write_only(h.spec(repo), base_dir=Path.cwd(), http=client, retry=FAST)
    value = _value()
    _write(target, value)
    assert [(m, s) for m, _, s in h.api.requests] == [("GET", 200), ("PUT", 422), ("GET", 200), ("PUT", 201)]
    assert h.api.secret(repo, SECRET) == value.reveal()
    client.close()


def test_a_refused_secret_name_is_an_error_and_not_retried(write_only_github_harness: GithubHarness) -> None:
    """422 for a name GitHub refuses (GITHUB_ prefix): one StoreError quoting GitHub, no retry."""
    h = write_only_github_harness
    repo = h.new_repo()
    target = h.target(repo, secret_name="GITHUB_KEY")
    with pytest.raises(StoreError) as info:
        _write(target, _value())
    assert "HTTP 422" in _clean(info.value) and "must not start with a number or GITHUB_" in str(info.value)
    assert [m for m, _, _ in h.api.requests] == ["GET", "PUT", "GET"]  # the key was checked, not rotated


@pytest.mark.parametrize("primary", [False, True])
def test_rate_limits_are_waited_out(
    write_only_github_harness: GithubHarness, monkeypatch: pytest.MonkeyPatch, primary: bool
) -> None:
    """429 with Retry-After, and a primary limit's 403 with x-ratelimit-remaining 0: waited, then written."""
    h = write_only_github_harness
    repo = h.new_repo()
    slept: list[float] = []
    target = open_write_only(h.spec(repo), base_dir=Path.cwd(), retry=FAST, sleep=slept.append)
    h.api.rate_limit(2, retry_after=0.25, primary=primary)
    value = _value()
    _write(target, value)
    assert h.api.secret(repo, SECRET) == value.reveal()
    assert len(slept) == 2
    if primary:
        assert all(0 <= s <= 1.25 for s in slept), slept  # until x-ratelimit-reset, a whole second
    else:
        assert slept == [0.25, 0.25]


def test_a_server_that_keeps_failing_is_unavailable(write_only_github_harness: GithubHarness) -> None:
    """5xx on every try: StoreUnavailable after the bounded attempts."""
    h = write_only_github_harness
    repo = h.new_repo()
    h.api.fail(50)
    target = h.target(repo)
    with pytest.raises(StoreUnavailable, match=r"HTTP 502: Server Error \(gave up after 4 tries\)") as info:
        target.check_access()
    assert _clean(info.value).startswith(f"{target.name}: check_access:")
    assert len(h.api.requests) == FAST.attempts


def test_a_wait_longer_than_the_budget_gives_up_at_once(write_only_github_harness: GithubHarness) -> None:
    """GitHub asks for more than the retry budget: no sleeping, StoreUnavailable with retry_after."""
    h = write_only_github_harness
    repo = h.new_repo()
    h.api.rate_limit(1, retry_after=600)
    slept: list[float] = []
    target = open_write_only(
        h.spec(repo), base_dir=Path.cwd(), retry=Retry(attempts=5, max_total=60), sleep=slept.append
    )
    with pytest.raises(StoreUnavailable) as info:
        _write(target, _value())
    assert slept == [] and info.value.retry_after == 600


def test_a_missing_token_names_the_variable(
    write_only_github_harness: GithubHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No token in the environment: StoreAccessDenied naming the variable, and no request sent."""
    h = write_only_github_harness
    repo = h.new_repo()
    monkeypatch.delenv(TOKEN_ENV)
    target = h.target(repo)
    with pytest.raises(
        StoreAccessDenied, match=f"no GitHub token: the environment variable {TOKEN_ENV} is not set"
    ):
        _write(target, _value())
    assert h.api.requests == []


def test_an_unknown_token_is_denied(
    write_only_github_harness: GithubHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """401 Bad credentials: StoreAccessDenied saying the token is invalid or expired."""
    h = write_only_github_harness
    repo = h.new_repo()
    monkeypatch.setenv(TOKEN_ENV, "ghp_revoked")
    with pytest.raises(
        StoreAccessDenied, match=f"HTTP 401: Bad credentials .the token in {TOKEN_ENV} is invalid"
    ):
        h.target(repo).check_access()


def test_a_read_only_token_passes_check_access_and_fails_the_write(
    write_only_github_harness: GithubHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GitHub cannot prove a write permission without writing: check_access passes, the write is denied."""
    h = write_only_github_harness
    repo = h.new_repo()
    monkeypatch.setenv(TOKEN_ENV, h.api.add_token(write=False))
    target = h.target(repo)
    target.check_access()
    with pytest.raises(StoreAccessDenied, match="Secrets: read and write"):
        _write(target, _value())
    assert h.api.secrets_of(repo) == {OTHER[0]: OTHER[1]}


def test_github_enterprise_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """api_url with a path (GitHub Enterprise Server's /api/v3) is the root of every call."""
    api = FakeGitHub(prefix="/api/v3").start()
    try:
        h = GithubHarness(api, monkeypatch)
        repo = h.new_repo()
        value = _value()
        _write(h.target(repo), value)
        assert api.url.endswith("/api/v3") and api.secret(repo, SECRET) == value.reveal()
        assert api.requests[0][1] == f"/api/v3/repos/{repo}/actions/secrets/public-key"
    finally:
        api.stop()


def test_an_unreachable_api_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection, retried: StoreUnavailable naming the API."""
    monkeypatch.setenv(TOKEN_ENV, "ghp_x")
    spec = GithubTarget.model_validate(
        {
            "type": "github",
            "repository": "acme/app",
            "secret_name": "K",
            "api_url": "http://127.0.0.1:9",
            "token": {"env": TOKEN_ENV},
        }
    )
    target = open_write_only(spec, base_dir=Path.cwd(), retry=FAST)
    with pytest.raises(StoreUnavailable, match=r"cannot reach http://127.0.0.1:9 \(ConnectError\)"):
        target.check_access()


def test_plain_http_is_refused_off_loopback() -> None:
    """api_url follows the one TLS rule: https, or http to a loopback address."""
    with pytest.raises(ValidationError, match="only https, or plain http to a loopback address"):
        GithubTarget.model_validate(
            {
                "type": "github",
                "repository": "acme/app",
                "secret_name": "K",
                "api_url": "http://github.internal/api/v3",
            }
        )
