"""The example plugin (``tests/plugins/rotator-example``), a distribution of its own installed
into the test venv: found by entry point, validated with line numbers, passing the issuer and
store contract suites unchanged, and rotating a key end to end through the command line.

Its vendor (``example``: keys ``exk_`` + 32 hex) runs in process on loopback
(``rotator_example.emulator``); its store (``exdir``) is a directory, one file per secret.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# installed by `make test` (pip install -e tests/plugins/rotator-example): never skipped
from rotator_example.emulator import ExampleVendor
from rotator_example.models import DirTarget, ExampleIssuerSpec
from rotator_example.store import DirStore

from rotator import plugins
from rotator.abc import Issuer, SecretStore
from rotator.errors import ConfigError
from rotator.secret import Secret
from rotator.spec import KeySpec, parse_rotation_file
from tests.conftest import run_cli
from tests.e2e_helpers import journal
from tests.harnesses.file import _OtherUser

# The contract suites, run unchanged against the plugin's harnesses (defined below).
from tests.test_issuer_contract import (
    test_a_fresh_scope_lists_no_key,
    test_activity_follows_use,
    test_key_limit,
    test_mint_lists_matches_and_probes,
    test_refused_credential_is_an_auth_error,
    test_revoke_is_final_and_idempotent,
)
from tests.test_store_contract import (
    test_access_denied,
    test_concurrent_writer_is_a_conflict,
    test_errors_never_show_values,
    test_field_merge_keeps_other_fields,
    test_missing_secret_reads_empty,
    test_not_json_with_a_field,
    test_promote_survives_a_fresh_process,
    test_promote_unknown_attempt,
    test_read_back_fingerprint,
    test_restage_same_attempt_is_idempotent,
    test_second_rotation,
    test_secret_deleted_mid_rotation,
    test_stage_leaves_current_alone,
    test_unstamped_value_is_adopted,
)

CONTRACT_TESTS = (  # collected here too, with this module's harness fixtures
    test_a_fresh_scope_lists_no_key,
    test_activity_follows_use,
    test_key_limit,
    test_mint_lists_matches_and_probes,
    test_refused_credential_is_an_auth_error,
    test_revoke_is_final_and_idempotent,
    test_access_denied,
    test_concurrent_writer_is_a_conflict,
    test_errors_never_show_values,
    test_field_merge_keeps_other_fields,
    test_missing_secret_reads_empty,
    test_not_json_with_a_field,
    test_promote_survives_a_fresh_process,
    test_promote_unknown_attempt,
    test_read_back_fingerprint,
    test_restage_same_attempt_is_idempotent,
    test_second_rotation,
    test_secret_deleted_mid_rotation,
    test_stage_leaves_current_alone,
    test_unstamped_value_is_adopted,
)
ADMIN_ENV = "EXAMPLE_ADMIN_TOKEN"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def vendor() -> Iterator[ExampleVendor]:
    with ExampleVendor() as server:
        yield server


# --------------------------------------------------------------------------- harnesses


class ExampleIssuerHarness:
    """The example vendor: one account per vendor, so each issuer gets a vendor of its own."""

    name = "example"

    def __init__(self) -> None:
        self.vendors: list[ExampleVendor] = []

    def _issuer(self, vendor: ExampleVendor, token: str) -> Issuer:
        spec = ExampleIssuerSpec(type="example", base_url=vendor.url, credential={"env": ADMIN_ENV})  # type: ignore[arg-type]
        key = KeySpec(issuer="ex", targets=[DirTarget(type="exdir", dir="d", name="k")])
        return spec.make_issuer(key, credential=lambda: Secret(token))

    def make_issuer(self) -> Issuer:
        vendor = ExampleVendor().__enter__()
        self.vendors.append(vendor)
        return self._issuer(vendor, vendor.admin_token)

    def denied_issuer(self) -> Issuer:
        return self._issuer(self.vendors[-1], "exadmin_" + "0" * 32)

    def use(self, value: str) -> bool:
        return any(v.use(value) for v in self.vendors)

    def close(self) -> None:
        for vendor in self.vendors:
            vendor.__exit__()


@pytest.fixture
def issuer_harness() -> Iterator[ExampleIssuerHarness]:
    harness = ExampleIssuerHarness()
    yield harness
    harness.close()


class DirHarness:
    """Secrets of ``exdir`` stores under the test's temporary directory."""

    name = "exdir"
    invisible_staging = True

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.count = 0
        self.locked: list[Path] = []

    def make_store(self, *, field: str | None = None) -> SecretStore:
        self.count += 1
        target = DirTarget(type="exdir", dir=f"secrets-{self.count}", name="app", field=field)
        return target.open_store(base_dir=self.base_dir)

    def reopen(self, store: SecretStore) -> SecretStore:
        return _dir(store).target.open_store(base_dir=self.base_dir)

    def external_write(self, store: SecretStore, raw: str) -> None:
        path = _dir(store).path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(raw)

    def read_raw(self, store: SecretStore) -> str | None:
        path = _dir(store).path
        return path.read_text() if path.exists() else None

    def delete(self, store: SecretStore) -> None:
        for path in _dir(store).folder.iterdir():
            path.unlink()

    def denied_store(self, store: SecretStore) -> SecretStore:
        folder = _dir(store).folder
        folder.chmod(0)
        self.locked.append(folder)
        return _OtherUser(self.reopen(store))  # type: ignore[arg-type]

    def restore(self) -> None:
        for folder in self.locked:
            folder.chmod(0o700)


def _dir(store: SecretStore) -> DirStore:
    assert isinstance(store, DirStore), f"not an exdir store: {store!r}"
    return store


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DirHarness]:
    found = DirHarness(tmp_path)
    yield found
    found.restore()


# --------------------------------------------------------------------------- found by entry point


def test_found_by_entry_point() -> None:
    """Both models come from the plugin's distribution, registered under their type names."""
    assert "example" in plugins.names(plugins.ISSUERS)
    assert "exdir" in plugins.names(plugins.STORES)
    assert plugins.distribution(plugins.ISSUERS, "example") == "rotator-example"
    assert plugins.model(plugins.ISSUERS, "example") is ExampleIssuerSpec
    assert plugins.model(plugins.STORES, "exdir") is DirTarget
    assert plugins.distribution(plugins.STORES, "file") == "rotator"  # built-ins register alike


def _imports_after(text: str) -> set[str]:
    """The plugin modules a fresh process has imported after parsing rotation file ``text``."""
    code = (
        "import sys\nfrom rotator.spec import parse_rotation_file\n"
        f"parse_rotation_file({text!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('rotator_example', 'providers.', 'rotator.vendors'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(proc.stdout.replace("'", '"')))


def test_plugins_are_imported_only_when_named(tmp_path: Path) -> None:
    """A file that names no example type imports none of the plugin; one that does imports its
    models only (no client, no store), and no built-in implementation either."""
    builtin = (
        "version: 1\nissuers:\n  a: {type: adjudon, credential: {env: X}}\n"
        "keys:\n  k: {issuer: a, targets: [{type: file, path: k.key}]}\n"
    )
    assert _imports_after(builtin) == set()
    assert _imports_after(_rotation_file("http://127.0.0.1:1")) == {
        "rotator_example",
        "rotator_example.models",
    }


# --------------------------------------------------------------------------- validation


def _rotation_file(url: str, *, issuer_extra: str = "", target_extra: str = "", key_extra: str = "") -> str:
    return f"""\
version: 1
state_dir: state
defaults:
  verify: {{drain: 0s, propagation: 0s, timeout: 60s}}
issuers:
  ex:
    type: example
    base_url: {url}
    credential: {{env: {ADMIN_ENV}}}{issuer_extra}
keys:
  payments:
    issuer: ex{key_extra}
    targets:
      - type: exdir
        dir: secrets
        name: payments{target_extra}
      - {{type: file, path: payments.key}}
"""


def test_plugin_fields_are_validated_with_their_lines() -> None:
    """An unknown field of the plugin's models, a bad value of one, and the plugin's own per-key
    rule each name their field and YAML line."""
    text = _rotation_file(
        "http://127.0.0.1:1",
        issuer_extra="\n    colour: blue",
        target_extra="\n        field: 7",
        key_extra="\n    kind: agent\n    agent_id: a1",
    )
    with pytest.raises(ConfigError) as info:
        parse_rotation_file(text)
    assert info.value.problems == [
        "rotations.yaml:10: issuers.ex.colour: unknown field",
        "rotations.yaml:20: keys.payments.targets.0.field: Input should be a valid string",
    ]
    with pytest.raises(ConfigError) as info:
        parse_rotation_file(
            _rotation_file("http://127.0.0.1:1", key_extra="\n    kind: agent\n    agent_id: a1")
        )
    assert str(info.value) == "rotations.yaml:13: keys.payments.kind: example keys have no kind"
    with pytest.raises(ConfigError) as info:
        parse_rotation_file(_rotation_file("http://example.com"))
    assert str(info.value).startswith("rotations.yaml:8: issuers.ex.base_url: ")


def test_unknown_type_lists_the_plugins_types() -> None:
    """A type no plugin registers is refused on its line, naming the installed ones, plugins too."""
    with pytest.raises(ConfigError) as info:
        parse_rotation_file(_rotation_file("http://127.0.0.1:1").replace("type: exdir", "type: exdri"))
    message = str(info.value)
    assert message.startswith("rotations.yaml:14: keys.payments.targets.0: ")
    assert "'exdri'" in message and "'exdir'" in message and "'file'" in message


def test_schema_includes_the_plugin_models(tmp_path: Path) -> None:
    """`rotator schema` describes installed plugins' models; `--builtin` leaves them out."""
    everything = json.loads(run_cli("schema", cwd=tmp_path).stdout)
    builtin = json.loads(run_cli("schema", "--builtin", cwd=tmp_path).stdout)
    assert {"ExampleIssuerSpec", "DirTarget"} <= everything["$defs"].keys()
    assert not {"ExampleIssuerSpec", "DirTarget"} & builtin["$defs"].keys()
    assert "ExampleIssuerSpec" not in (REPO / "schema" / "rotations.schema.json").read_text()


# --------------------------------------------------------------------------- end to end


def test_rotates_end_to_end_through_the_cli(tmp_path: Path, vendor: ExampleVendor) -> None:
    """validate, a first run (mint, stage, promote), `rotate --wait` (a second key,
    the old one drained and revoked): through the real command line, with no key in its output."""
    (tmp_path / "rotations.yaml").write_text(_rotation_file(vendor.url))
    env = {ADMIN_ENV: vendor.admin_token}
    check = run_cli("validate", cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stderr
    assert "1 keys, 1 issuers" in check.stdout

    first = run_cli("apply", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    old = (tmp_path / "secrets" / "payments").read_text().strip()
    assert old.startswith("exk_") and (tmp_path / "payments.key").read_text().strip() == old
    assert vendor.active_values() == {old}

    second = run_cli("rotate", "payments", "--wait", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    new = (tmp_path / "secrets" / "payments").read_text().strip()
    assert new != old and new.startswith("exk_")
    assert vendor.active_values() == {new}
    assert not vendor.use(old) and vendor.use(new)
    for proc in (check, first, second):
        for value in (old, new, vendor.admin_token):
            assert value not in proc.stdout + proc.stderr
    events = journal(tmp_path)
    assert [e["event"] for e in events if e["event"] in ("minted", "promoted", "revoked")][-3:] == [
        "minted", "promoted", "revoked",
    ]  # fmt: skip
    text = (tmp_path / "state" / "audit.jsonl").read_text()
    assert old not in text and new not in text and vendor.admin_token not in text


# --------------------------------------------------------------------------- the seams


def test_core_names_no_concrete_vendor_or_store() -> None:
    """The engine, the spec package and the CLI code reach vendors and stores only through the
    registry and the declared abilities: none of them names a concrete model or client."""
    concrete = (
        "AdjudonIssuerSpec", "AdjutorIssuerSpec", "AwsIamIssuerSpec", "FileTarget", "AwsTarget",
        "VaultTarget", "GcpTarget", "AdjudonIssuer", "AdjutorIssuer", "AwsIamIssuer", "FileStore",
        "AwsStore", "VaultStore", "GcpStore",
    )  # fmt: skip
    files = [*(REPO / "rotator" / "engine").glob("*.py"), *(REPO / "rotator" / "spec").glob("*.py")]
    files.append(REPO / "rotator" / "cli.py")
    for path in files:
        text = path.read_text()
        named = [name for name in concrete if name in text]
        assert not named, f"{path.relative_to(REPO)} names {named}"


def test_rotator_knows_nothing_of_the_plugin() -> None:
    """Adding the plugin touched no file of rotator/ or providers/: none names it."""
    for folder in ("rotator", "providers"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            assert "rotator_example" not in text and "exdir" not in text, path.relative_to(REPO)
