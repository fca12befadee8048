"""The decide step, from hand-built observations: each rule of rotator.engine.decide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rotator.abc import Capabilities, Stamp, StoredVersion, TargetState, VendorKey
from rotator.engine.decide import decide
from rotator.engine.model import Observation, TargetObs, attempt_name
from rotator.secret import Secret
from rotator.spec import VerifyPolicy

T0 = datetime(2026, 11, 1, tzinfo=UTC)
OVERLAP = Capabilities(max_active=2, overlap=True, prefix_len=13)
RESET = Capabilities(max_active=1, overlap=False, prefix_len=12)
POLICY = VerifyPolicy(
    drain=timedelta(minutes=15), propagation=timedelta(minutes=2), timeout=timedelta(hours=24)
)


def raw(n: int) -> Secret:
    return Secret(f"adj_agent_{n:04x}" + "0" * 44)


def vkey(
    n: int,
    *,
    created: datetime = T0,
    active: bool = True,
    used: datetime | None = None,
    ours: str | None = None,
) -> VendorKey:
    return VendorKey(
        id=f"key_{n}",
        prefix=raw(n).prefix(13),
        name=attempt_name("k", ours) if ours else "manual",
        status="active" if active else "revoked",
        created_at=created,
        last_used_at=used,
    )


def version(n: int, *, attempt: str | None = "a", promoted: datetime | None = None) -> StoredVersion:
    stamp = Stamp(f"key_{n}", raw(n).fingerprint, attempt, promoted) if attempt else None
    return StoredVersion(str(n), raw(n), stamp)


def obs(
    vendor: list[VendorKey],
    targets: list[TargetState],
    *,
    now: datetime = T0 + timedelta(days=1),
    policy: VerifyPolicy = POLICY,
    force: bool = False,
    caps: Capabilities = OVERLAP,
    bootstrap: Secret | None = None,
) -> Observation:
    return Observation(
        key="k",
        now=now,
        vendor=tuple(vendor),
        targets=tuple(TargetObs(f"t{i}", s) for i, s in enumerate(targets)),
        capabilities=caps,
        strategy="overlap" if caps.overlap else "cutover",
        policy=policy,
        max_age=timedelta(days=30),
        force=force,
        bootstrap=bootstrap,
    )


EMPTY = TargetState(None, None)


def test_first_run_mints() -> None:
    """Empty targets and no key at the vendor: mint."""
    d = decide(obs([], [EMPTY, EMPTY]))
    assert (d.action, d.phase) == ("mint", "due")


def test_unreadable_target_stops_everything() -> None:
    """A target that cannot be read: fail, naming it, and take no step."""
    o = obs([vkey(1)], [TargetState(version(1, promoted=T0), None)])
    o = Observation(**{**o.__dict__, "targets": (*o.targets, TargetObs("vault:x", None, "denied"))})
    d = decide(o)
    assert d.action == "fail"
    assert "vault:x: denied" in d.reason


def test_orphan_is_revoked() -> None:
    """A key minted by an attempt but stored nowhere, newer than the stored one: revoke it."""
    d = decide(
        obs(
            [vkey(1), vkey(2, created=T0 + timedelta(hours=1), ours="x")],
            [TargetState(version(1, promoted=T0), None)],
        )
    )
    assert (d.action, d.key_id) == ("revoke", "key_2")
    assert "orphan" in d.reason


def test_manual_extra_key_is_never_revoked_as_orphan() -> None:
    """A newer key the rotator did not mint is held for a person, not revoked."""
    d = decide(
        obs(
            [vkey(1), vkey(2, created=T0 + timedelta(hours=1))],
            [TargetState(version(1, promoted=T0), None)],
        )
    )
    assert d.action == "hold"
    assert "not minted by the rotator" in d.reason


def test_stage_where_missing_then_promote() -> None:
    """A new key pending in one target is staged to the others before any promote."""
    new = vkey(2, created=T0 + timedelta(hours=1), ours="b")
    staged = TargetState(version(1, promoted=T0), version(2, attempt="b"))
    d = decide(obs([vkey(1), new], [staged, TargetState(version(1, promoted=T0), None)]))
    assert (d.action, d.targets) == ("stage", (1,))
    assert d.version is not None and d.version.stamp is not None
    assert d.version.stamp.attempt == "b"
    d = decide(obs([vkey(1), new], [staged, staged]))
    assert (d.action, d.targets) == ("promote", (0, 1))


def test_partial_promote_keeps_first_promotion_time() -> None:
    """If one target was promoted before a crash, the rest get the same promoted_at."""
    new = vkey(2, created=T0 + timedelta(hours=1), ours="b")
    p = T0 + timedelta(hours=2)
    d = decide(
        obs(
            [vkey(1), new],
            [
                TargetState(version(2, attempt="b", promoted=p), None),
                TargetState(version(1, promoted=T0), version(2, attempt="b")),
            ],
        )
    )
    assert (d.action, d.targets, d.promoted_at) == ("promote", (1,), p)


def _drained(now: datetime, used: datetime | None, policy: VerifyPolicy = POLICY) -> str:
    p = T0 + timedelta(hours=2)
    d = decide(
        obs(
            [vkey(1, used=used), vkey(2, created=T0 + timedelta(hours=1), ours="b")],
            [TargetState(version(2, attempt="b", promoted=p), None)],
            now=now,
            policy=policy,
        )
    )
    return d.action


def test_drain_waits_then_revokes() -> None:
    """The old key is revoked only after propagation + drain with no use."""
    p = T0 + timedelta(hours=2)
    assert _drained(p + timedelta(minutes=16), p) == "wait"
    assert _drained(p + timedelta(minutes=17), p + timedelta(minutes=1)) == "revoke"


def test_late_use_restarts_the_drain() -> None:
    """Use of the old key after the propagation budget pushes the revoke back."""
    p = T0 + timedelta(hours=2)
    assert _drained(p + timedelta(minutes=20), p + timedelta(minutes=10)) == "wait"
    assert _drained(p + timedelta(minutes=26), p + timedelta(minutes=10)) == "revoke"


def test_drain_timeout_holds_or_revokes() -> None:
    """At timeout a still-used old key is held; with on_timeout: revoke it is revoked."""
    p = T0 + timedelta(hours=2)
    late = p + timedelta(hours=23, minutes=59)
    assert _drained(p + timedelta(hours=24), late) == "hold"
    revoke = VerifyPolicy(**{**POLICY.model_dump(), "on_timeout": "revoke"})
    assert _drained(p + timedelta(hours=24), late, revoke) == "revoke"


def test_require_new_traffic() -> None:
    """With require_new_traffic, a drained old key waits for the new key to be used."""
    policy = VerifyPolicy(**{**POLICY.model_dump(), "require_new_traffic": True})
    assert _drained(T0 + timedelta(hours=3), None, policy) == "wait"


def test_due_by_age_and_force() -> None:
    """A current key older than max_age is due; younger is done unless forced."""
    state = [TargetState(version(1, promoted=T0), None)]
    assert decide(obs([vkey(1)], state, now=T0 + timedelta(days=31))).action == "mint"
    d = decide(obs([vkey(1)], state))
    assert (d.action, d.phase) == ("done", "current")
    assert decide(obs([vkey(1)], state, force=True)).action == "mint"


def test_adopts_unstamped_key() -> None:
    """A key put in one target by hand is adopted and spread to the other targets, stamped."""
    d = decide(obs([vkey(1)], [TargetState(version(1, attempt=None), None), EMPTY]))
    assert (d.action, d.targets) == ("stage", (1,))
    assert d.version is not None and d.version.stamp is not None
    assert d.version.stamp.key_id == "key_1"


def test_revoked_stored_key_mints_new() -> None:
    """A target holding a key the vendor revoked gets a fresh key."""
    d = decide(obs([vkey(1, active=False)], [TargetState(version(1, promoted=T0), None)]))
    assert d.action == "mint"


def test_limit_reached_with_unknown_keys_holds() -> None:
    """Two active keys that no target holds: never mint around them."""
    d = decide(obs([vkey(1), vkey(2)], [EMPTY]))
    assert d.action == "hold"


def _reset_raw(n: int) -> Secret:
    return Secret(f"sk_live_{n:04d}" + "A" * 36)


def _app(n: int) -> VendorKey:
    return VendorKey(
        id=f"app@{_reset_raw(n).prefix(12)}",
        prefix=_reset_raw(n).prefix(12),
        name="app",
        status="active",
        created_at=T0,
    )


def test_cutover_due_resets() -> None:
    """On a reset vendor a due key is reset, not minted."""
    state = TargetState(StoredVersion("1", _reset_raw(1), None), None)
    d = decide(obs([_app(1)], [state], caps=RESET, force=True))
    assert d.action == "reset"


def test_cutover_lost_value_holds_with_recovery() -> None:
    """The vendor's key is in no target: hold with recovery steps, never reset again."""
    state = TargetState(StoredVersion("1", _reset_raw(1), None), None)
    d = decide(obs([_app(2)], [state], caps=RESET))
    assert d.action == "hold"
    assert "bootstrap" in d.reason


def test_cutover_bootstrap_adopts() -> None:
    """A bootstrap value matching the vendor's key is written to every target."""
    d = decide(obs([_app(1)], [EMPTY, EMPTY], caps=RESET, bootstrap=_reset_raw(1)))
    assert (d.action, d.targets) == ("stage", (0, 1))


def _inactive(n: int, deactivated: datetime) -> VendorKey:
    k = vkey(n, created=T0 - timedelta(days=40))
    return VendorKey(k.id, k.prefix, k.name, "inactive", k.created_at, None, deactivated)


def test_two_step_revoke_deletes_after_delay() -> None:
    """An inactive key (two-step issuers) is deleted once delete_after has passed, not before."""
    state = [TargetState(version(1, promoted=T0), None)]
    base = obs([vkey(1), _inactive(2, T0)], state)
    early = Observation(**{**base.__dict__, "delete_after": timedelta(days=7)})
    assert decide(early).action == "done"
    late = Observation(**{**early.__dict__, "now": T0 + timedelta(days=8)})
    d = decide(late)
    assert (d.action, d.phase, d.key_id) == ("revoke", "revoked", "key_2")


def test_inactive_key_deleted_before_minting() -> None:
    """A leftover inactive key is deleted before a due rotation mints into its slot."""
    state = [TargetState(version(1, promoted=T0), None)]
    base = obs([vkey(1), _inactive(2, T0)], state, force=True)
    d = decide(Observation(**{**base.__dict__, "delete_after": timedelta(days=7)}))
    assert (d.action, d.key_id) == ("revoke", "key_2")


def test_stage_carries_the_observed_revisions() -> None:
    """A stage decision names each target's revision as seen, so a later write is a conflict."""
    new = vkey(2, created=T0 + timedelta(hours=1), ours="b")
    staged = TargetState(version(1, promoted=T0), version(2, attempt="b"), revision="r0")
    behind = TargetState(version(1, promoted=T0), None, revision="r1")
    d = decide(obs([vkey(1), new], [staged, behind]))
    assert (d.action, d.targets, d.revisions) == ("stage", (1,), ("r1",))


def test_no_mint_over_an_unaccounted_pending_copy() -> None:
    """A pending copy of the live key that no attempt of ours explains holds instead of minting."""
    unstamped = version(1, attempt=None)
    d = decide(obs([vkey(1)], [TargetState(version(1, promoted=T0), unstamped)], force=True))
    assert d.action == "hold"
    assert "pending copy" in d.reason
