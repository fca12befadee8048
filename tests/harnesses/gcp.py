"""The gcp backend for the store contract suite (see tests/store_harness.py).

Runs against the fake Secret Manager gRPC server (``tests/fakes``), spoken to by
the real client library. Consumers read the ``current`` alias, so staging is
invisible to them; ``tests/test_gcp_store.py`` runs the suite again with
consumers reading ``latest``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.gcp import GcpStore, open_store
from rotator.abc import SecretStore
from rotator.spec import GcpTarget
from tests.fakes.gcp_secret_manager import FakeSecretManager, serve

PROJECT = "rotator-test"
DENIED_CALLER = "intruder"


class GcpHarness:
    name = "gcp"

    def __init__(self, server: FakeSecretManager, *, consumers_read: str = "alias") -> None:
        self.server = server
        self.consumers_read = consumers_read
        self.invisible_staging = consumers_read == "alias"
        self.client: Any = server.client()
        self._denied_client: Any = server.client(caller=DENIED_CALLER)
        server.denied_callers.add(DENIED_CALLER)

    def target(self, secret: str, *, field: str | None = None) -> GcpTarget:
        return GcpTarget.model_validate(
            {
                "type": "gcp",
                "project": PROJECT,
                "secret": secret,
                "field": field,
                "endpoint": self.server.address,
                "consumers_read": self.consumers_read,
            }
        )

    def make_store(self, *, field: str | None = None) -> GcpStore:
        target = self.target(f"contract-{uuid.uuid4().hex[:12]}", field=field)
        return open_store(target, base_dir=Path.cwd(), client=self.client)

    def reopen(self, store: SecretStore) -> GcpStore:
        assert isinstance(store, GcpStore)
        return open_store(store.target, base_dir=Path.cwd(), client=self.client)

    def path(self, store: SecretStore) -> str:
        assert isinstance(store, GcpStore)
        return f"projects/{PROJECT}/secrets/{store.target.secret}"

    def external_write(self, store: SecretStore, raw: str) -> None:
        from google.api_core.exceptions import AlreadyExists

        assert isinstance(store, GcpStore)
        with contextlib.suppress(AlreadyExists):
            self.client.create_secret(
                parent=f"projects/{PROJECT}",
                secret_id=store.target.secret,
                secret={"replication": {"automatic": {}}},
            )
        added = self.client.add_secret_version(parent=self.path(store), payload={"data": raw.encode()})
        if store.target.consumers_read == "alias":
            secret = self.client.get_secret(name=self.path(store))
            aliases = dict(secret.version_aliases)
            aliases[store.target.current_alias] = int(added.name.rsplit("/", 1)[1])
            self.client.update_secret(
                secret={"name": secret.name, "version_aliases": aliases},
                update_mask={"paths": ["version_aliases"]},
            )

    def read_raw(self, store: SecretStore) -> str | None:
        from google.api_core.exceptions import NotFound

        assert isinstance(store, GcpStore)
        ref = store.target.current_alias if store.target.consumers_read == "alias" else "latest"
        try:
            answer = self.client.access_secret_version(name=f"{self.path(store)}/versions/{ref}")
        except NotFound:
            return None
        return str(answer.payload.data.decode())

    def delete(self, store: SecretStore) -> None:
        self.client.delete_secret(name=self.path(store))

    def denied_store(self, store: SecretStore) -> GcpStore:
        assert isinstance(store, GcpStore)
        return open_store(store.target, base_dir=Path.cwd(), client=self._denied_client)


@pytest.fixture(scope="session")
def gcp_server() -> Iterator[FakeSecretManager]:
    """The fake Secret Manager server, on 127.0.0.1; control it through its attributes."""
    yield from serve()


@pytest.fixture
def gcp_harness(gcp_server: FakeSecretManager) -> GcpHarness:
    """The gcp harness of the store contract suite (consumers read the ``current`` alias)."""
    return GcpHarness(gcp_server)
