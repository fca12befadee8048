"""The engine's seams: observe, decide and act import one way; decisions are small frozen
types tried by numbered rules; optional abilities are declared Protocols, never ``getattr``;
each step returns what it did."""

from __future__ import annotations

import ast
import dataclasses
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from providers.aws import AwsStore
from providers.file import FileStore
from providers.gcp import GcpStore
from providers.vault import VaultStore
from rotator import abc
from rotator.abc import LeaseInfo, Stamp, StoredVersion
from rotator.engine import decide as decide_module
from rotator.engine.lease_dynamodb import DynamoDBLeaseInfo
from rotator.engine.model import (
    Delete,
    Done,
    Fail,
    Hold,
    Mint,
    Promote,
    Publish,
    Reactivate,
    Reset,
    Revoke,
    RevokeLeaked,
    RevokeOrphan,
    Roll,
    Stage,
    Wait,
)
from rotator.engine.runner import Engine
from rotator.errors import RotatorError
from rotator.sandbox.emulator import EmulatorServer
from rotator.secret import Secret
from rotator.spec import Settings, load_rotation_file
from rotator.vendors.adjudon import AdjudonIssuer
from rotator.vendors.adjutor import AdjutorIssuer
from rotator.vendors.aws_iam import AwsIamIssuer
from tests.e2e_helpers import ADMIN_ENV, journal, write_spec

ROOT = Path(__file__).resolve().parent.parent
ABILITIES = ("close", "retire", "reactivate", "verify_chain", "lost", "delete_after", "app_id", "vendor_now")


def _module_imports() -> dict[str, set[str]]:
    """Each module of rotator/ and providers/ -> the modules of both it imports at module
    level (``if TYPE_CHECKING`` blocks included: they are cycles all the same)."""
    paths: dict[str, Path] = {}
    for pkg in ("rotator", "providers"):
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, p in paths.items():
        deps: set[str] = set()
        todo = list(ast.parse(p.read_text()).body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.If):
                todo += [*node.body, *node.orelse]
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def test_no_import_cycle() -> None:
    """No module reaches itself through module-level imports (act and runner used to)."""
    graph = _module_imports()
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            mod = todo.pop()
            assert mod != start, f"{start} imports itself through {sorted(seen)}"
            if mod not in seen:
                seen.add(mod)
                todo += graph[mod]


def test_observe_decide_act_import_one_way() -> None:
    """The runner wires the three; none of them imports the runner, and none reaches another
    one's state (act uses decide's naming helper only)."""
    graph = _module_imports()
    engine = "rotator.engine."
    allowed = {
        "model": set(),
        "decide": {"model"},
        "observe": {"model"},
        "act": {"model", "decide", "faults"},
    }
    for mod, ok in allowed.items():
        inside = {d.removeprefix(engine) for d in graph[engine + mod] if d.startswith(engine)}
        assert inside <= ok, f"{mod} imports {sorted(inside - ok)}"
    assert {engine + m for m in ("observe", "decide", "act")} <= graph[engine + "runner"]


def test_no_getattr_for_abilities() -> None:
    """Optional abilities are asked with isinstance on a Protocol of abc.py, which mypy checks."""
    names = "|".join(ABILITIES)
    pattern = re.compile(rf"""getattr\([^)]*["']({names})["']""")
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for pkg in ("rotator", "providers")
        for p in (ROOT / pkg).rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_abilities_are_declared_by_the_backends_that_have_them() -> None:
    """The Protocols match the real backends that have each ability, and only those."""
    assert issubclass(AwsIamIssuer, abc.Reactivating)
    assert not issubclass(AdjudonIssuer, abc.Reactivating)
    assert not issubclass(AdjutorIssuer, abc.Reactivating)
    assert issubclass(AdjudonIssuer, abc.ChainAuditing)
    assert not issubclass(AdjutorIssuer, abc.ChainAuditing)
    assert not issubclass(AwsIamIssuer, abc.ChainAuditing)
    for issuer in (AdjudonIssuer, AdjutorIssuer, AwsIamIssuer):
        assert issubclass(issuer, abc.Closeable), issuer
    assert issubclass(GcpStore, abc.Retiring)
    for store in (FileStore, AwsStore, VaultStore):
        assert not issubclass(store, abc.Retiring), store
    now = datetime.now(UTC)
    assert isinstance(DynamoDBLeaseInfo("k", "me", now), abc.Losable)
    assert not isinstance(LeaseInfo("k", "me", now), abc.Losable)


def test_lease_protocol_lives_in_abc() -> None:
    """``Lease`` and ``LeaseInfo`` are seams: one definition, in abc.py, re-exported."""
    from rotator.engine import lease

    assert lease.Lease is abc.Lease and lease.LeaseInfo is abc.LeaseInfo


def _all_decisions(value: Secret) -> list[object]:
    version = StoredVersion("1", value, Stamp("key_2", value.fingerprint, "a1"))
    now = datetime.now(UTC)
    return [
        Mint("due"),
        Reset("due", key_id="k1"),
        Stage("minted", "stage", (0,), (None,), version, "key_2"),
        Promote("promote", (0,), version, "key_2", now),
        Publish("publish", (0,), version, "key_2"),
        Roll("roll", (0, 1), "a1", "key_2", value.prefix(8), value.fingerprint, "rotation"),
        Revoke("drained", "key_1", now),
        Delete("ripe", "key_1"),
        RevokeOrphan("orphan", "key_3"),
        Wait("draining", "wait", until=now),
        Hold("held"),
        Fail("failed"),
        Done("current", "key_2", until=now),
        RevokeLeaked("key_1"),
        Reactivate("key_1"),
    ]


def test_decisions_are_frozen_and_never_show_a_value() -> None:
    """Every decision and order is immutable, and its repr names ids and fingerprints only."""
    canary = "adj_agent_CANARY_decision_0123456789"
    for d in _all_decisions(Secret(canary)):
        assert canary not in repr(d) and canary not in str(d), type(d)
        with pytest.raises(dataclasses.FrozenInstanceError):
            d.reason = "changed"  # type: ignore[attr-defined]


def test_decision_kinds_keep_their_action_and_phase() -> None:
    """The journal, progress lines and ``stop_before`` still speak of the same verbs and phases."""
    shown = [(d.action, getattr(d, "phase", None)) for d in _all_decisions(Secret("x"))]
    assert shown == [
        ("mint", "due"),
        ("reset", "due"),
        ("stage", "minted"),
        ("promote", "staged"),
        ("publish", "promoted"),
        ("roll", "rolling"),
        ("revoke", "draining"),
        ("revoke", "revoked"),
        ("revoke", "minted"),
        ("wait", "draining"),
        ("hold", "held"),
        ("fail", "failed"),
        ("done", "current"),
        ("revoke-leaked", None),
        ("reactivate", None),
    ]
    assert [d.terminal for d in _all_decisions(Secret("x"))[:13]] == [False] * 9 + [True] * 4


def test_rules_are_tried_in_the_docstrings_order() -> None:
    """Rule n of the list is rule n of decide.py's docstring, which names it."""
    doc = decide_module.__doc__ or ""
    overlap = doc[doc.index("overlap (") : doc.index("cutover (")]
    cutover = doc[doc.index("cutover (") :]
    rules = [
        ("Rule", decide_module._OVERLAP_RULES, overlap),
        ("Cutover rule", decide_module._CUTOVER_RULES, cutover),
    ]
    for label, functions, section in rules:
        for n, rule in enumerate(functions, 1):
            assert (rule.__doc__ or "").startswith(f"{label} {n}:"), rule.__name__
            assert f"\n  {n}. " in section, (label, n)
        assert f"\n  {len(functions) + 1}. otherwise" in section  # the steady rest, _steady


def test_reset_time_is_returned_not_left_on_the_engine(tmp_path: Path, emulator: EmulatorServer) -> None:
    """A reset pass returns the instant the vendor answered (the old key died then): the
    emergency reads it from the result, and the engine keeps no per-key leftovers."""
    raw = emulator.emulator.create_app("app_9")
    (tmp_path / "app.key").write_text(raw + "\n")
    (tmp_path / "rotations.yaml").write_text(f"""\
version: 1
issuers:
  lendsqr: {{type: adjutor, base_url: "{emulator.url}", app_id: app_9}}
keys:
  app:
    issuer: lendsqr
    targets: [{{type: file, path: app.key}}]
""")
    engine = Engine(
        load_rotation_file(tmp_path / "rotations.yaml"),
        base_dir=tmp_path,
        settings=Settings(retry_initial=0.01, probe_timeout=5),
    )
    before = time.monotonic()
    result = engine.reconcile("app", force=True)
    after = time.monotonic()
    assert result.outcome == "ok" and "reset" in result.steps
    assert result.reset_at is not None and before < result.reset_at < after
    assert "reset_at" not in result.as_dict()
    assert not hasattr(engine, "last_reset")
    again = engine.reconcile("app")
    assert again.steps == [] and again.reset_at is None


def test_reactivate_on_a_final_revoke_is_refused_by_act(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An issuer without the ability is refused in one line, and nothing is journalled."""
    monkeypatch.setenv(ADMIN_ENV, emulator.emulator.bootstrap_workspace_key())
    engine = Engine(load_rotation_file(write_spec(tmp_path, emulator)), base_dir=tmp_path)
    with pytest.raises(RotatorError, match="cannot reactivate a key: its revoke is final"):
        engine.act("payments", Reactivate("key_1"))
    assert journal(tmp_path) == []
