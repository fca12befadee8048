"""Regressions found by the chaos harness (tests/chaos) and the bad-input corpus, each reduced
to a deterministic case.

A promote that a SIGKILL cut short in one store (the file store writes the file consumers
read, then its stamp; Secrets Manager moves AWSCURRENT, then tags ``promoted_at``) left the
new key current but unstamped, or stamped without ``promoted_at``. ``decide`` then either
built an adoption stamp for it and asked the other targets to promote an attempt they never
staged (every later pass failed the same way), or held the key for a person although the
rotator had minted and promoted it itself.

OpenBao's errors came through as three lines, and an unreadable target was named twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from providers.vault import open_store as open_vault
from rotator.abc import Capabilities, Stamp, StoredVersion, TargetState, VendorKey
from rotator.engine.decide import decide
from rotator.engine.model import Observation, TargetObs, attempt_name
from rotator.engine.runner import Engine
from rotator.errors import StoreAccessDenied
from rotator.sandbox.emulator import EmulatorServer
from rotator.secret import Secret
from rotator.spec import Settings, VaultAuth, VaultTarget, VerifyPolicy, load_rotation_file
from tests.e2e_helpers import agent_keys, read_dotenv_key, read_json_key, write_spec
from tests.harnesses.aws import AwsHarness
from tests.harnesses.vault import OpenBaoServer

FAST = Settings(retry_initial=0.01, probe_timeout=5)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _engine(path: Path) -> Engine:
    return Engine(load_rotation_file(path), base_dir=path.parent, settings=FAST)


def _stage_only(engine: Engine) -> None:
    """A forced rotation that stops where the promote would start."""
    result = engine.reconcile("payments", force=True, stop_before=("promote",))
    assert result.steps[0] == "mint" and result.phase == "staged", result


def _cut_short_file_promote(tmp_path: Path) -> str:
    """What a SIGKILL inside FileStore.promote leaves: the file holds the new key, the
    sidecar still names the old one, the pending copy is still there."""
    pending = (tmp_path / "secrets/a.env.rotator-pending").read_text()
    (tmp_path / "secrets/a.env").write_text(f"ADJUDON_API_KEY={pending}\n")
    return pending


def test_promote_cut_short_in_one_file_target_converges(
    tmp_path: Path, emulator: EmulatorServer, admin: str
) -> None:
    """The unstamped copy left by a cut-short promote does not derail the other targets' promote."""
    engine = _engine(write_spec(tmp_path, emulator, drain="0s", propagation="0s"))
    assert engine.apply(["payments"])[0].outcome == "ok"
    _stage_only(engine)
    new = _cut_short_file_promote(tmp_path)
    result = engine.apply(["payments"], wait=True)[0]
    assert result.outcome == "ok", result.message
    assert result.steps == ["promote", "revoke"]
    assert read_dotenv_key(tmp_path / "secrets/a.env") == new == read_json_key(tmp_path / "secrets/b.json")
    assert not (tmp_path / "secrets/a.env.rotator-pending").exists()
    assert len(agent_keys(emulator, active=True)) == 1


def test_promote_cut_short_in_the_only_target_is_finished_not_held(
    tmp_path: Path, emulator: EmulatorServer, admin: str
) -> None:
    """A key whose only target was cut short mid-promote is promoted again and drained, not held."""
    engine = _engine(write_spec(tmp_path, emulator, drain="0s", propagation="0s", targets=1))
    assert engine.apply(["payments"])[0].outcome == "ok"
    _stage_only(engine)
    new = _cut_short_file_promote(tmp_path)
    result = engine.apply(["payments"], wait=True)[0]
    assert result.outcome == "ok", result.message
    assert result.steps == ["promote", "revoke"]
    assert emulator.emulator.key_accepted(new)
    assert [k["prefix"] for k in agent_keys(emulator, active=True)] == [new[:13]]


def test_aws_promote_cut_short_after_the_label_move_is_finished(
    tmp_path: Path, emulator: EmulatorServer, admin: str, aws_harness: AwsHarness
) -> None:
    """AWSCURRENT moved but promoted_at never tagged: the next pass tags it and drains."""
    path = write_spec(
        tmp_path,
        emulator,
        drain="0s",
        propagation="0s",
        targets=0,
        extra=("      - {type: aws, secret_id: regress/cut-short, region: us-east-1}\n"),
    )
    engine = _engine(path)
    assert engine.apply(["payments"])[0].outcome == "ok"
    _stage_only(engine)
    store = engine.stores("payments")[0]
    staged = store.read()
    assert staged.pending is not None and staged.pending.stamp is not None
    assert staged.current is not None and staged.current.stamp is not None
    aws_harness.client.update_secret_version_stage(  # the promote's first call, then the kill
        SecretId="regress/cut-short",
        VersionStage="AWSCURRENT",
        MoveToVersionId=staged.pending.stamp.attempt,
        RemoveFromVersionId=staged.current.stamp.attempt,
    )
    result = engine.apply(["payments"], wait=True)[0]
    assert result.outcome == "ok", result.message
    assert result.steps == ["promote", "revoke"]
    current = store.read().current
    assert current is not None and current.stamp is not None and current.stamp.promoted_at is not None
    assert len(agent_keys(emulator, active=True)) == 1


# --------------------------------------------------------------------------- decide alone


def _raw(n: int) -> Secret:
    return Secret(f"adj_agent_{n:04x}" + "0" * 44)


def _key(n: int, created: datetime) -> VendorKey:
    return VendorKey(f"key_{n}", _raw(n).prefix(13), attempt_name("k", f"a{n}"), "active", created)


def _version(n: int, *, stamped: bool = True, promoted: datetime | None = None) -> StoredVersion:
    stamp = Stamp(f"key_{n}", _raw(n).fingerprint, f"a{n}", promoted) if stamped else None
    return StoredVersion(str(n), _raw(n), stamp)


def _observe(*targets: TargetState) -> Observation:
    return Observation(
        key="k",
        now=T0 + timedelta(days=1),
        vendor=(_key(1, T0), _key(2, T0 + timedelta(hours=1))),
        targets=tuple(TargetObs(f"t{i}", s) for i, s in enumerate(targets)),
        capabilities=Capabilities(max_active=2, overlap=True, prefix_len=13),
        strategy="overlap",
        policy=VerifyPolicy(),
        max_age=timedelta(days=30),
    )


def test_decide_promotes_with_the_minting_attempt_not_an_adoption_stamp() -> None:
    """With an unstamped and a stamped copy of the new key, the promote names the attempt that staged it."""
    cut_short = TargetState(_version(2, stamped=False), _version(2))
    lagging = TargetState(_version(1, promoted=T0), _version(2))
    d = decide(_observe(cut_short, lagging))
    assert d.action == "promote"
    assert d.version is not None and d.version.stamp is not None and d.version.stamp.attempt == "a2"
    assert d.targets == (0, 1)


def test_decide_finishes_a_promote_missing_its_timestamp() -> None:
    """Current everywhere under our attempt but with no promoted_at anywhere: promote again, no hold."""
    d = decide(_observe(TargetState(_version(2), None)))
    assert (d.action, d.targets) == ("promote", (0,))
    assert d.promoted_at == T0 + timedelta(days=1)


# --------------------------------------------------------------------------- messages


def test_vault_denial_is_one_line(
    openbao_server: OpenBaoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenBao's "1 error occurred:\\n\\t* permission denied" reaches the user on one line."""
    client = openbao_server.client()
    client.sys.create_or_update_policy(
        name="regress-elsewhere", policy='path "secret/data/elsewhere/*" { capabilities = ["read"] }\n'
    )
    monkeypatch.setenv("REGRESS_VAULT_TOKEN", openbao_server.token("regress-elsewhere"))
    target = VaultTarget(
        type="vault",
        url=openbao_server.url,
        path="regress/denied",
        auth=VaultAuth(token_env="REGRESS_VAULT_TOKEN"),
    )
    with pytest.raises(StoreAccessDenied) as caught:
        open_vault(target, base_dir=tmp_path).read()
    message = str(caught.value)
    assert "\n" not in message and "\t" not in message
    assert "cannot read metadata of it: permission denied (check the token's policy" in message


def test_unreadable_target_is_named_once() -> None:
    """A store error that already names its store is not prefixed with the name again."""
    obs = _observe(TargetState(_version(2, promoted=T0), None))
    broken = Observation(
        **{
            **obs.__dict__,
            "targets": (
                *obs.targets,
                TargetObs("vault:secret/x#k", None, "vault:secret/x#k: cannot read it: denied"),
                TargetObs("t9", None, "unreachable"),
            ),
        }
    )
    d = decide(broken)
    assert d.action == "fail"
    assert d.reason.count("vault:secret/x#k") == 1 and "t9: unreachable" in d.reason
