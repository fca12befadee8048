"""Properties of ``decide`` over arbitrary observed states (hypothesis).

The generated worlds mix vendor keys of every status (ours or made by hand, used or not),
targets holding current and pending versions that are stamped or not, whose stamps name
the right key or another, promoted or not, values the vendor does not know, any clock and
any policy. Whatever the world, ``decide`` must:

* never revoke a key that a target holds as current (and never an orphan held anywhere);
* never mint while an attempt is unresolved: a stored version whose key is active,
  targets whose current versions disagree while one of them works, or two active keys;
* revoke an old key in the drain only once every target holds the new key and the drain
  (or the timeout, with ``on_timeout: revoke``) has passed;
* never answer an action without a reason and the fields that action needs.

Each vendor key ``i`` has its own raw value, so a stored value belongs to one key only
(the vendor shows a prefix; telling apart keys whose prefixes collide is what stamps do).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rotator.abc import Capabilities, KeyStatus, Stamp, StoredVersion, TargetState, VendorKey
from rotator.engine.decide import decide
from rotator.engine.model import Decision, Observation, TargetObs, attempt_name
from rotator.secret import Secret
from rotator.spec import VerifyPolicy

T0 = datetime(2026, 11, 1, tzinfo=UTC)
OVERLAP = Capabilities(max_active=2, overlap=True, prefix_len=13)
RESET = Capabilities(max_active=1, overlap=False, prefix_len=12)
UNKNOWN = 9
"""The index of a value no vendor key has."""
EXAMPLES = settings(max_examples=300, deadline=None)


def raw(i: int, *, reset: bool = False) -> Secret:
    if reset:
        return Secret(f"sk_live_{i:04d}" + "A" * 36)
    return Secret(f"adj_agent_{i:03x}" + "0" * 45)


def seconds(low: int = 0, high: int = 200_000) -> st.SearchStrategy[datetime]:
    return st.integers(low, high).map(lambda s: T0 + timedelta(seconds=s))


@st.composite
def vendor_keys(draw: st.DrawFn, *, reset: bool = False) -> list[VendorKey]:
    keys = []
    for i in range(draw(st.integers(0, 4))):
        status: KeyStatus = draw(st.sampled_from(["active", "active", "revoked", "inactive"]))
        created = draw(seconds(0, 100_000))
        keys.append(
            VendorKey(
                id=f"key_{i}",
                prefix=raw(i, reset=reset).prefix(12 if reset else 13),
                name=attempt_name("k", f"a{i}") if draw(st.booleans()) else "made by hand",
                status=status,
                created_at=created,
                last_used_at=draw(st.none() | seconds()),
                revoked_at=None
                if status == "active"
                else created + timedelta(seconds=draw(st.integers(0, 9_999))),
            )
        )
    return keys


@st.composite
def versions(draw: st.DrawFn, n_keys: int, *, reset: bool = False) -> StoredVersion | None:
    if draw(st.integers(0, 3)) == 0:
        return None
    i = draw(st.sampled_from([*range(n_keys), UNKNOWN]))
    value = raw(i, reset=reset)
    stamp = None
    if draw(st.booleans()):
        key_id = draw(st.sampled_from([f"key_{i}", f"key_{(i + 1) % 5}"]))  # matching or not
        attempt = draw(st.sampled_from([f"a{i}", "adopted", f"a{(i + 1) % 5}"]))
        stamp = Stamp(key_id, value.fingerprint, attempt, draw(st.none() | seconds()))
    return StoredVersion(f"v{i}", value, stamp)


@st.composite
def observations(draw: st.DrawFn, *, reset: bool = False) -> Observation:
    vendor = draw(vendor_keys(reset=reset))
    targets = []
    for t in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 30)) == 0:
            targets.append(TargetObs(f"t{t}", None, f"t{t}: unreachable"))
            continue
        state = TargetState(
            draw(versions(len(vendor), reset=reset)), draw(versions(len(vendor), reset=reset))
        )
        targets.append(TargetObs(f"t{t}", state))
    policy = VerifyPolicy(
        drain=timedelta(seconds=draw(st.integers(0, 5_000))),
        propagation=timedelta(seconds=draw(st.integers(0, 1_000))),
        timeout=timedelta(seconds=draw(st.integers(0, 100_000))),
        on_timeout=draw(st.sampled_from(["hold", "revoke"])),
        require_new_traffic=draw(st.booleans()),
    )
    return Observation(
        key="k",
        now=draw(seconds(0, 300_000)),
        vendor=tuple(vendor),
        targets=tuple(targets),
        capabilities=RESET if reset else OVERLAP,
        strategy="cutover" if reset else "overlap",
        policy=policy,
        max_age=timedelta(seconds=draw(st.integers(1, 200_000))),
        next_schedule_fire=draw(st.none() | seconds(0, 300_000)),
        force=draw(st.booleans()),
        delete_after=draw(st.none() | st.integers(0, 50_000).map(lambda s: timedelta(seconds=s))),
    )


@st.composite
def in_flight(draw: st.DrawFn) -> Observation:
    """A rotation under way: an old and a newer key active, the targets mostly moved to the
    new one (stamped, promoted or cut short), some lagging or holding leftovers."""
    old_at = draw(seconds(0, 50_000))
    new_at = old_at + timedelta(seconds=draw(st.integers(1, 50_000)))
    promoted = new_at + timedelta(seconds=draw(st.integers(0, 50_000)))
    old = VendorKey(
        "key_0",
        raw(0).prefix(13),
        draw(st.sampled_from(["made by hand", attempt_name("k", "a0")])),
        "active",
        old_at,
        draw(st.none() | seconds()),
    )
    new = VendorKey(
        "key_1", raw(1).prefix(13), attempt_name("k", "a1"), "active", new_at, draw(st.none() | seconds())
    )
    gone = [
        VendorKey(f"key_{i}", raw(i).prefix(13), attempt_name("k", f"a{i}"), "revoked", old_at, None, old_at)
        for i in range(2, 2 + draw(st.integers(0, 2)))
    ]

    def version(i: int) -> StoredVersion:
        at = draw(st.sampled_from([promoted, promoted, None]))
        stamp = Stamp(f"key_{i}", raw(i).fingerprint, f"a{i}", at) if draw(st.integers(0, 5)) else None
        return StoredVersion(f"v{i}", raw(i), stamp)

    targets = []
    for t in range(draw(st.integers(1, 3))):
        current = version(draw(st.sampled_from([1, 1, 1, 0, 2])))
        pending = version(draw(st.sampled_from([0, 1, 2]))) if draw(st.integers(0, 3)) == 0 else None
        targets.append(TargetObs(f"t{t}", TargetState(current, pending)))
    policy = VerifyPolicy(
        drain=timedelta(seconds=draw(st.integers(0, 5_000))),
        propagation=timedelta(seconds=draw(st.integers(0, 1_000))),
        timeout=timedelta(seconds=draw(st.integers(0, 100_000))),
        on_timeout=draw(st.sampled_from(["hold", "revoke"])),
        require_new_traffic=draw(st.booleans()),
    )
    return Observation(
        key="k",
        now=promoted + timedelta(seconds=draw(st.integers(0, 120_000))),
        vendor=(old, new, *gone),
        targets=tuple(targets),
        capabilities=OVERLAP,
        strategy="overlap",
        policy=policy,
        max_age=timedelta(seconds=draw(st.integers(1, 200_000))),
        force=draw(st.booleans()),
    )


WORLDS = st.one_of(observations(), in_flight())


# --------------------------------------------------------------------------- helpers


def owner(obs: Observation, version: StoredVersion | None) -> VendorKey | None:
    """The vendor key whose raw value ``version`` holds (each key has its own value)."""
    if version is None:
        return None
    return next(
        (
            k
            for k in obs.vendor
            if obs.capabilities.prefix_len and version.value.prefix(obs.capabilities.prefix_len) == k.prefix
        ),
        None,
    )


def states(obs: Observation) -> list[TargetState]:
    return [t.state for t in obs.targets if t.state is not None]


def assert_well_formed(obs: Observation, d: Decision) -> None:
    assert d.reason.strip(), d
    if d.action in ("stage", "promote"):
        assert d.targets and all(0 <= i < len(obs.targets) for i in d.targets), d
        assert d.version is not None and d.version.stamp is not None, d
        assert d.version.stamp.fingerprint == d.version.fingerprint, d
    if d.action == "promote":
        assert d.promoted_at is not None, d
    if d.action == "revoke":
        assert d.key_id in {k.id for k in obs.vendor}, d
    if d.action == "wait":
        assert d.until is not None, d


# --------------------------------------------------------------------------- overlap


@EXAMPLES
@given(WORLDS)
def test_never_revokes_a_key_a_target_holds(obs: Observation) -> None:
    """A revoke never names a key some target holds as current; an orphan's is held nowhere."""
    d = decide(obs)
    assert_well_formed(obs, d)
    if d.action != "revoke":
        return
    for state in states(obs):
        current = owner(obs, state.current)
        assert current is None or current.id != d.key_id, (d, state)
        if d.phase == "minted":  # an orphan
            pending = owner(obs, state.pending)
            assert pending is None or pending.id != d.key_id, (d, state)


@EXAMPLES
@given(WORLDS)
def test_never_mints_while_an_attempt_is_unresolved(obs: Observation) -> None:
    """No mint beside a staged key that works, across targets that disagree, or with two keys active."""
    d = decide(obs)
    if d.action != "mint":
        return
    active = [k for k in obs.vendor if k.active]
    assert len(active) < obs.capabilities.max_active, d
    for state in states(obs):
        pending = owner(obs, state.pending)
        assert pending is None or not pending.active, (d, state)
    currents = {s.current.fingerprint if s.current else None for s in states(obs)}
    working = [k for s in states(obs) if (k := owner(obs, s.current)) is not None and k.active]
    assert len(currents) == 1 or not working, d


@EXAMPLES
@given(WORLDS)
def test_old_key_is_revoked_only_after_the_drain(obs: Observation) -> None:
    """A drain revoke: every target holds one working new key, and the drain or the timeout is over."""
    d = decide(obs)
    if not (d.action == "revoke" and d.phase == "draining"):
        return
    currents = [s.current for s in states(obs)]
    assert all(c is not None for c in currents), d
    assert len({c.fingerprint for c in currents if c is not None}) == 1, d
    new = owner(obs, currents[0])
    old = next(k for k in obs.vendor if k.id == d.key_id)
    assert new is not None and new.active and new.id != old.id, d
    assert d.promoted_at is not None
    policy = obs.policy
    quiet_from = d.promoted_at + policy.propagation
    drained = obs.now >= max(quiet_from, old.last_used_at or quiet_from) + policy.drain
    timed_out = policy.on_timeout == "revoke" and obs.now >= d.promoted_at + policy.timeout
    assert drained or timed_out, d
    if not timed_out and policy.require_new_traffic:
        assert new.last_used_at is not None and new.last_used_at >= d.promoted_at, d


@EXAMPLES
@given(observations())
def test_an_unreadable_target_stops_every_step(obs: Observation) -> None:
    """With any target unreadable the answer is to fail, naming it, and to do nothing."""
    d = decide(obs)
    broken = [t for t in obs.targets if t.state is None]
    if broken:
        assert d.action == "fail" and all(t.name in d.reason for t in broken), d
    else:
        assert d.action != "fail", d


# --------------------------------------------------------------------------- cutover


@EXAMPLES
@given(observations(reset=True))
def test_cutover_resets_only_from_a_key_every_target_holds(obs: Observation) -> None:
    """A reset vendor is never minted on, and reset only when every target holds its current key."""
    d = decide(obs)
    assert_well_formed(obs, d)
    assert d.action not in ("mint", "promote"), d
    if d.action == "reset":
        active = [k for k in obs.vendor if k.active]
        current = max(active, key=lambda k: k.created_at)
        for state in states(obs):
            assert owner(obs, state.current) == current, (d, state)
    if d.action == "revoke":
        raise AssertionError(f"a cutover never revokes: {d}")
