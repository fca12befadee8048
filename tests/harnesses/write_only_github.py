"""The github backend for the write-only contract suite (see tests/consumer_harness.py).

Runs against the fake GitHub API (tests/fakes/github_api.py) over real HTTP on 127.0.0.1,
spoken to by the target's own httpx client. Each target is a secret of a fresh repository
that already holds another secret; the fake opens every sealed box with the repository's
private key, so ``read_back`` is what the workflows would get. The token is read from an
environment variable, as in production; the denied target's token may not touch the
repository.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.github import GithubSecret, Retry, open_write_only
from rotator.abc import WriteOnlyTarget
from rotator.builtin.stores import GithubTarget
from tests.fakes.github_api import FakeGitHub

OWNER = "acme"
SECRET = "ADJUDON_API_KEY"
TOKEN_ENV = "ROTATOR_TEST_GITHUB_TOKEN"
DENIED_ENV = "ROTATOR_TEST_GITHUB_OTHER_TOKEN"
OTHER = ("DEPLOY_KEY", "keep-me-as-i-am")
FAST = Retry(attempts=4, initial=0.01, max_total=5.0)


class GithubHarness:
    name = "github"

    def __init__(self, api: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> None:
        self.api = api
        self.token = api.add_token()
        monkeypatch.setenv(TOKEN_ENV, self.token)
        monkeypatch.setenv(DENIED_ENV, api.add_token(repos={f"{OWNER}/elsewhere"}))

    def new_repo(self, *, environments: tuple[str, ...] = ()) -> str:
        """A fresh repository holding one other secret (and in each environment too)."""
        full = f"{OWNER}/app-{uuid.uuid4().hex[:8]}"
        self.api.add_repo(full, environments=environments)
        self.api.set_secret(full, *OTHER)
        for env in environments:
            self.api.set_secret(full, *OTHER, environment=env)
        return full

    def spec(self, repository: str, **extra: Any) -> GithubTarget:
        data = {
            "type": "github",
            "repository": repository,
            "secret_name": SECRET,
            "api_url": self.api.url,
            "token": {"env": TOKEN_ENV},
        }
        return GithubTarget.model_validate({**data, **extra})

    def target(self, repository: str, **extra: Any) -> GithubSecret:
        return open_write_only(self.spec(repository, **extra), base_dir=Path.cwd(), retry=FAST)

    # ------------------------------------------------------------------ WriteOnlyHarness

    def make_target(self) -> GithubSecret:
        return self.target(self.new_repo())

    def read_back(self, target: WriteOnlyTarget) -> str | None:
        spec = _spec(target)
        return self.api.secret(spec.repository, spec.secret_name, spec.environment)

    def other_content(self, target: WriteOnlyTarget) -> dict[str, str]:
        spec = _spec(target)
        held = self.api.secrets_of(spec.repository, spec.environment)
        return {k: v for k, v in held.items() if k != spec.secret_name.upper()}

    def denied_target(self, target: WriteOnlyTarget) -> GithubSecret:
        spec = _spec(target)
        return self.target(spec.repository, environment=spec.environment, token={"env": DENIED_ENV})

    def missing_target(self) -> GithubSecret:
        return self.target(f"{OWNER}/missing-{uuid.uuid4().hex[:8]}")


def _spec(target: WriteOnlyTarget) -> GithubTarget:
    assert isinstance(target, GithubSecret), target
    return target.spec


@pytest.fixture
def github_api() -> Iterator[FakeGitHub]:
    """A fresh fake GitHub API on a free loopback port."""
    api = FakeGitHub().start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def write_only_github_harness(github_api: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> GithubHarness:
    """The github target against the fake API, its tokens in environment variables."""
    return GithubHarness(github_api, monkeypatch)
