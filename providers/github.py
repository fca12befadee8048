"""A GitHub Actions secret behind :class:`rotator.abc.WriteOnlyTarget`.

GitHub never gives a secret back, so the rotator only writes it, the way the REST API
(version 2022-11-28) asks:

1. ``GET {api_url}/repos/{owner}/{repo}/actions/secrets/public-key`` (for an environment:
   ``.../environments/{environment}/secrets/public-key``) gives the scope's Curve25519
   public key (base64) and its ``key_id``;
2. the value is sealed with libsodium's sealed box (PyNaCl ``SealedBox``): only GitHub, with
   the private key, can open it;
3. ``PUT .../secrets/{secret_name}`` with ``encrypted_value`` (base64) and ``key_id``; GitHub
   answers 201 (created) or 204 (updated). Writing the same value again is harmless.

GitHub rotates a scope's key now and then: a 422 after which the public key has a new
``key_id`` is sealed again with the new key, once.

The token comes from the environment variable named by ``token`` (``GITHUB_TOKEN`` by
default) when it is first needed; it is sent as ``Authorization: Bearer``. A fine-grained
token (or a GitHub App) needs the repository permission "Secrets" (read and write), or for an
environment secret "Environments" (read and write); a classic token the ``repo`` scope.

Answers: 401 and 403 are :class:`StoreAccessDenied`, 404 :class:`StoreNotFound` (GitHub
also answers 404 for a private repository the token cannot see), 422 and other 4xx a
:class:`StoreError`. 429, 5xx, a 403 of a rate limit (``x-ratelimit-remaining: 0``, a
``Retry-After``) and network failures are retried with back-off, honouring ``Retry-After``
and ``x-ratelimit-reset``, a bounded number of times, then :class:`StoreUnavailable`.

``check_access`` fetches the public key: the repository (or environment) exists and the
token may read its secrets. GitHub offers no way to prove the write permission without
writing, so a token that may only read passes here and fails at the first write.

Neither the value nor the token ever reaches a message: GitHub's own messages are quoted
(cut to one short line), and they never echo a request.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

from rotator import __version__
from rotator.abc import Stamp
from rotator.errors import (
    StoreAccessDenied,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.net import require_tls
from rotator.secret import Secret

if TYPE_CHECKING:
    from rotator.builtin.stores import GithubTarget

log = logging.getLogger("rotator.stores")

API_VERSION = "2022-11-28"
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class Retry:
    """Bounds on retrying 429, 5xx, rate-limit 403 and network failures."""

    attempts: int = 5
    initial: float = 1.0
    """First back-off in seconds; doubled each try (when GitHub gives no wait of its own)."""
    max_total: float = 120.0
    """Give up rather than wait more than this in all (or when GitHub asks for longer)."""


@dataclass(frozen=True)
class _PublicKey:
    key_id: str
    key: bytes


def open_write_only(
    spec: GithubTarget,
    *,
    base_dir: Path,
    http: httpx.Client | None = None,
    retry: Retry | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> GithubSecret:
    """The target for ``spec``; ``http`` replaces the client built for it (then not closed here)."""
    del base_dir  # nothing of a GitHub secret is a local path
    return GithubSecret(spec, http=http, retry=retry, sleep=sleep)


class GithubSecret:
    """One Actions secret of a repository, or of one of its environments."""

    def __init__(
        self,
        spec: GithubTarget,
        *,
        http: httpx.Client | None = None,
        retry: Retry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 15.0,
    ) -> None:
        self.spec = spec
        where = f"{spec.repository}@{spec.environment}" if spec.environment else spec.repository
        self._name = f"github:{where}#{spec.secret_name}"
        require_tls(f"{self._name}: api_url", spec.api_url)
        owner, repo = spec.repository.split("/", 1)
        base = f"{spec.api_url.rstrip('/')}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"
        if spec.environment is not None:
            base += f"/environments/{quote(spec.environment, safe='')}"
        else:
            base += "/actions"
        self._secrets_url = f"{base}/secrets"
        self._owned = http is None
        self._http = http if http is not None else httpx.Client(follow_redirects=False)
        self._timeout = httpx.Timeout(timeout, connect=5.0)
        self._retry = retry or Retry()
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"GithubSecret({self._name})"

    def write(self, value: Secret, stamp: Stamp) -> None:
        key = self._public_key("write")
        response = self._put(value, key)
        if response.status_code == 422:
            fresh = self._public_key("write")
            if fresh.key_id != key.key_id:  # GitHub rotated the key between our two calls
                log.info(
                    "%s: the public key changed (%s -> %s); sealing again",
                    self._name,
                    key.key_id,
                    fresh.key_id,
                )
                response = self._put(value, fresh)
        if response.status_code not in (201, 204):
            raise self._refused("write", response)
        log.info(
            "%s: %s with key %s (fp %s, attempt %s)",
            self._name, "created" if response.status_code == 201 else "updated",
            stamp.key_id, stamp.fingerprint, stamp.attempt,
        )  # fmt: skip

    def check_access(self) -> None:
        self._public_key("check_access")

    def close(self) -> None:
        if self._owned:
            self._http.close()

    # ------------------------------------------------------------------ calls

    def _public_key(self, action: str) -> _PublicKey:
        response = self._call(action, "GET", f"{self._secrets_url}/public-key")
        if response.status_code != 200:
            raise self._refused(action, response)
        try:
            data = response.json()
            key = base64.b64decode(data["key"], validate=True)
            key_id = str(data["key_id"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise StoreError(self._name, f"{action}: the public key answer is not {{key_id, key}}") from None
        if len(key) != 32:
            raise StoreError(self._name, f"{action}: the public key is {len(key)} bytes, not 32")
        return _PublicKey(key_id, key)

    def _put(self, value: Secret, key: _PublicKey) -> httpx.Response:
        from nacl.public import PublicKey, SealedBox

        sealed = SealedBox(PublicKey(key.key)).encrypt(value.reveal().encode())
        body = {"encrypted_value": base64.b64encode(sealed).decode(), "key_id": key.key_id}
        return self._call(
            "write", "PUT", f"{self._secrets_url}/{quote(self.spec.secret_name, safe='')}", body
        )

    def _call(self, action: str, method: str, url: str, body: dict[str, str] | None = None) -> httpx.Response:
        """One request, retried while GitHub says to wait or fails transiently."""
        headers = self._headers(action)
        waited = 0.0
        for attempt in range(1, self._retry.attempts + 1):
            try:
                response = self._http.request(method, url, json=body, headers=headers, timeout=self._timeout)
            except httpx.TransportError as exc:
                problem, wait = f"cannot reach {self.spec.api_url} ({type(exc).__name__})", None
            else:
                if not _transient(response):
                    return response
                problem, wait = f"HTTP {response.status_code}: {_message(response)}", _wait_hint(response)
            delay = wait if wait is not None else self._backoff(attempt)
            if attempt == self._retry.attempts or waited + delay > self._retry.max_total:
                break
            log.info("%s: %s: %s; retrying in %.1fs", self._name, action, problem, delay)
            self._sleep(delay)
            waited += delay
        error = StoreUnavailable(self._name, f"{action}: {problem} (gave up after {attempt} tries)")
        error.retry_after = wait
        raise error

    def _backoff(self, attempt: int) -> float:
        jitter = 1 + random.random() / 4  # noqa: S311 - spreads retries, no security role
        return float(self._retry.initial * 2 ** (attempt - 1) * jitter)

    def _headers(self, action: str) -> dict[str, str]:
        env = self.spec.token.env
        token = os.environ.get(env, "").strip()
        if not token:
            raise StoreAccessDenied(
                self._name, f"{action}: no GitHub token: the environment variable {env} is not set"
            )
        if not token.isascii() or not token.isprintable():
            raise StoreAccessDenied(self._name, f"{action}: the token in {env} has characters no token has")
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": f"rotator/{__version__}",
        }

    def _refused(self, action: str, response: httpx.Response) -> StoreError:
        status = response.status_code
        text = f"{action}: HTTP {status}: {_message(response)}"
        if status == 401:
            return StoreAccessDenied(
                self._name, f"{text} (the token in {self.spec.token.env} is invalid or expired)"
            )
        if status == 403:
            needs = "Environments" if self.spec.environment else "Secrets"
            return StoreAccessDenied(
                self._name, f"{text} (the token needs {needs}: read and write on {self.spec.repository})"
            )
        if status == 404:
            what = "repository or environment" if self.spec.environment else "repository"
            return StoreNotFound(self._name, f"{text} (no such {what}, or the token cannot see it)")
        return StoreError(self._name, text)


def _transient(response: httpx.Response) -> bool:
    status = response.status_code
    if status == 429 or status >= 500:
        return True
    limited = response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers
    return status == 403 and (limited or "rate limit" in _message(response).lower())


def _wait_hint(response: httpx.Response) -> float | None:
    """Seconds GitHub asks to wait: ``Retry-After``, else until ``x-ratelimit-reset``."""
    after = response.headers.get("retry-after")
    if after:
        try:
            return max(0.0, float(after))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(after).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    reset = response.headers.get("x-ratelimit-reset")
    if response.headers.get("x-ratelimit-remaining") == "0" and reset and reset.isdigit():
        return max(0.0, int(reset) - time.time())
    return None


def _message(response: httpx.Response) -> str:
    """GitHub's ``message``, one short line (never a request's content: GitHub does not echo it)."""
    try:
        data = response.json()
        message = str(data.get("message", "")) if isinstance(data, dict) else ""
    except ValueError:
        message = ""
    return " ".join(message.split())[:_MESSAGE_LIMIT] or response.reason_phrase
