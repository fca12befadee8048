"""One way to reach a Kubernetes API server, shared by the ``kubernetes`` store and consumer.

* :func:`api_client` builds an ``ApiClient`` of the official client from the in-cluster
  service account (when no ``kubeconfig`` is named and the process runs in a pod), else from
  the kubeconfig (``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``) and its
  ``context``. Clients are cached per (kubeconfig, context) for the process; the cache is
  thread-safe. The server must be https, or plain http to a loopback address
  (:mod:`rotator.net`).
* :func:`call` runs one API method and returns the answer as the JSON the server sent: a
  plain ``dict``. The client's models are skipped on purpose, since their validation errors
  quote the values they refuse (a Secret's data).
* :func:`failure` reads an exception of the client (an ``ApiException``, a urllib3 error) as a
  :class:`Failure`: its kind (401/403 denied, 404 not found, 409 conflict, 429/5xx and
  network errors unavailable) and a text that is safe to show. The text is built from the
  ``Status`` object's ``reason``, ``code`` and field names, and its ``message`` only for
  401/403/404/409, whose messages the server builds from names alone; never from the rest of
  a response body, which may quote an object's data.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from rotator.net import tls_problem

TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for every request."""

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

Kind = Literal["denied", "not_found", "conflict", "unavailable", "rejected"]


class KubeConfigError(Exception):
    """No usable cluster configuration; the message says what is missing (never a token)."""


@dataclass(frozen=True)
class Failure:
    """What went wrong in one API call, fit for an error message."""

    kind: Kind
    detail: str
    status: int | None = None


_clients: dict[tuple[str | None, str | None], k8s.ApiClient] = {}
_lock = threading.Lock()


def api_client(kubeconfig: str | None, context: str | None, *, base_dir: Path) -> k8s.ApiClient:
    """The cached client for ``kubeconfig`` (relative: to ``base_dir``) and ``context``.

    :raises KubeConfigError: when no configuration can be loaded or the server breaks the
        endpoint rule.
    """
    path = str((base_dir / Path(kubeconfig).expanduser()).resolve()) if kubeconfig else None
    cache_key = (path, context)
    with _lock:
        found = _clients.get(cache_key)
        if found is None:
            found = _build(path, context)
            _clients[cache_key] = found
        return found


def _build(path: str | None, context: str | None) -> k8s.ApiClient:
    if path is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            if not _any_file(_default_files()):
                raise KubeConfigError(f"in-cluster configuration: {exc}") from None
        else:
            return _checked(k8s.ApiClient(configuration))
    files = path or _default_files()
    if not _any_file(files):
        named = "" if path else " (no kubeconfig named, $KUBECONFIG unset or missing, not in a pod)"
        raise KubeConfigError(f"kubeconfig {files}: no such file{named}")
    try:
        built = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=files, context=context, persist_config=False
        )
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        where = f"kubeconfig {files}" + (f" context {context}" if context else "")
        raise KubeConfigError(f"{where}: {_config_problem(exc)}") from None
    return _checked(built)


def _config_problem(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, ConfigException):
        return str(exc).splitlines()[0][:200]  # the loader's own words: names, never credentials
    return f"unreadable ({type(exc).__name__})"


def _default_files() -> str:
    """``$KUBECONFIG`` (one path or several, as kubectl reads it), else ``~/.kube/config``."""
    return os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def _any_file(files: str) -> bool:
    return any(Path(p).expanduser().is_file() for p in files.split(os.pathsep) if p)


def _checked(built: k8s.ApiClient) -> k8s.ApiClient:
    host = str(built.configuration.host)
    problem = tls_problem(host)
    if problem:
        raise KubeConfigError(f"API server {problem}")
    return built


def server(built: k8s.ApiClient) -> str:
    """The API server a client talks to, for messages."""
    return str(built.configuration.host)


def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one generated API method and return the server's JSON answer as a dict."""
    answer = method(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
    data = answer.data
    parsed = json.loads(data) if data else {}
    if not isinstance(parsed, dict):
        raise ApiException(status=500, reason="the API server answered with JSON that is not an object")
    return parsed


KUBE_ERRORS: tuple[type[BaseException], ...] = (ApiException, urllib3.exceptions.HTTPError, OSError)
"""What an API call may raise besides our own errors: read each with :func:`failure`."""


def failure(exc: BaseException) -> Failure:
    """``exc`` (one of :data:`KUBE_ERRORS`) as a kind and a text safe to show."""
    if not isinstance(exc, ApiException):
        return Failure("unavailable", f"could not reach the API server ({_network_cause(exc)})")
    status = exc.status if isinstance(exc.status, int) else None
    shown = _status_text(status, exc.body if isinstance(exc.body, str) else None)
    if status in (401, 403):
        return Failure("denied", shown, status)
    if status == 404:
        return Failure("not_found", shown, status)
    if status == 409:
        return Failure("conflict", shown, status)
    if status is None or status in (408, 429) or status >= 500:
        return Failure("unavailable", shown, status)
    return Failure("rejected", shown, status)


def _network_cause(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # MaxRetryError keeps the last error in .reason
    inner = reason if isinstance(reason, BaseException) else exc
    return type(inner).__name__


def _status_text(status: int | None, body: str | None) -> str:
    """``HTTP <status> <reason>``, plus the Status message where the server builds it from
    names only, plus the fields a validation error names (never their values)."""
    head = f"HTTP {status}" if status is not None else "no HTTP status"
    try:
        answer = json.loads(body) if body else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("kind") != "Status":
        return head
    reason = answer.get("reason")
    text = f"{head} {reason}" if isinstance(reason, str) and reason else head
    message = answer.get("message")
    if status in (401, 403, 404, 409) and isinstance(message, str) and message:
        text += f": {message[:300]}"
    details = answer.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if isinstance(causes, list):
        fields = sorted({str(c["field"]) for c in causes if isinstance(c, dict) and c.get("field")})
        if fields:
            text += f" (fields: {', '.join(fields)[:300]})"
    return text
