"""The decide rules for write-only targets and consumers (overlap rules 5, 6 and 9's start;
cutover rules 5 and 6), from hand-built observations."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from rotator.abc import Stamp, StoredVersion, TargetState, VendorKey
from rotator.engine.decide import adoption_attempt, decide
from rotator.engine.model import Hold, Observation, Publish, Roll, Wait
from tests.test_decide import EMPTY, POLICY, RESET, T0, _app, _reset_raw, obs, raw, version, vkey

P = T0 + timedelta(days=31)
"""When the new key (key_2, attempt "b") was promoted."""
PROPAGATION, DRAIN, TIMEOUT = POLICY.propagation, POLICY.drain, POLICY.timeout
OLD = vkey(1)


def _new(**kw: object) -> VendorKey:
    return vkey(2, created=P - timedelta(minutes=1), ours="b", **kw)  # type: ignore[arg-type]


def rotating(
    *,
    now: datetime = P + timedelta(minutes=1),
    old: VendorKey | None = OLD,
    new: VendorKey | None = None,
    targets: int = 2,
    **fields: object,
) -> Observation:
    """key_2 (minted by attempt b) current in every readable target since P, the old key_1
    active beside it unless ``old`` is None; ``fields`` set the consumer/write-only fields."""
    new = new or _new()
    states = [TargetState(version(2, attempt="b", promoted=P), None)] * targets
    o = obs([*([old] if old else []), new], states, now=now)
    return replace(o, **fields)  # type: ignore[arg-type]


FP2 = raw(2).fingerprint


def test_no_consumers_no_write_only_drains_as_before() -> None:
    """A key with neither decides from promoted_at exactly as without this feature."""
    d = decide(rotating())
    assert isinstance(d, Wait) and d.phase == "promoted"
    assert d.until == P + PROPAGATION + DRAIN
    assert d.promoted_at == P


def test_publish_before_roll_and_drain() -> None:
    """Current in every readable target: the write-only targets the journal shows without the
    new key are written first, each named."""
    d = decide(rotating(write_only=("gh", "fn"), published={"fn": FP2}, consumers=("c1",)))
    assert isinstance(d, Publish)
    assert d.targets == (0,) and d.key_id == "key_2"
    assert d.version.fingerprint == FP2 and d.version.stamp is not None
    assert d.version.stamp.attempt == "b" and d.version.stamp.promoted_at is None
    assert "gh" in d.reason and "fn" not in d.reason.split("writing it to")[1]


def test_publish_not_before_every_readable_target_is_current() -> None:
    """A target still lagging: promote first, publish after."""
    states = [
        TargetState(version(2, attempt="b", promoted=P), None),
        TargetState(version(1, promoted=T0), version(2, attempt="b")),
    ]
    o = replace(obs([OLD, _new()], states, now=P), write_only=("gh",), consumers=("c1",))
    assert decide(o).action == "promote"


def test_published_once_per_attempt_then_again_for_the_next() -> None:
    """Written once for key_2; a later rotation's key_3 is written again."""
    done = rotating(write_only=("gh",), published={"gh": FP2})
    assert decide(done).action == "wait"
    k3 = vkey(3, created=P + timedelta(days=30), ours="c")
    next_one = obs(
        [_new(), k3],
        [TargetState(version(3, attempt="c", promoted=P + timedelta(days=30)), None)],
        now=P + timedelta(days=30, minutes=1),
    )
    d = decide(replace(next_one, write_only=("gh",), published={"gh": FP2}))
    assert isinstance(d, Publish) and d.version.fingerprint == raw(3).fingerprint


def test_roll_in_file_order_skipping_those_rolled() -> None:
    """The consumers of attempt b not yet rolled, in file order; the event names the new key."""
    d = decide(rotating(consumers=("c1", "c2", "c3"), rolled={("b", "c2"): P + timedelta(seconds=5)}))
    assert isinstance(d, Roll)
    assert (d.action, d.phase) == ("roll", "rolling")
    assert d.consumers == (0, 2)
    assert (d.attempt, d.key_id, d.prefix, d.fingerprint) == ("b", "key_2", _new().prefix, FP2)
    assert d.roll_phase == "rotation"
    assert "c1, c3" in d.reason


def test_a_roll_of_another_attempt_does_not_count() -> None:
    """Rolled for an earlier attempt: rolled again for this one."""
    d = decide(rotating(consumers=("c1",), rolled={("a", "c1"): P - timedelta(days=30)}))
    assert isinstance(d, Roll) and d.consumers == (0,)


def test_roll_comes_before_the_revoke() -> None:
    """Even with the old key quiet for far longer than the drain, unrolled consumers roll first."""
    late = P + PROPAGATION + DRAIN + timedelta(hours=1)
    d = decide(rotating(now=late, consumers=("c1",)))
    assert isinstance(d, Roll)
    assert decide(rotating(now=late)).action == "revoke"  # the same key without consumers


def test_drain_counts_from_the_last_roll() -> None:
    """Propagation and drain start at rolled_at: the old key, used until its consumers rolled
    (after promoted_at + propagation), is revoked after rolled_at + propagation + drain."""
    rolled_at = P + timedelta(minutes=10)
    old = vkey(1, used=rolled_at - timedelta(seconds=30))
    fields = {
        "consumers": ("c1", "c2"),
        "rolled": {("b", "c1"): P + timedelta(minutes=1), ("b", "c2"): rolled_at},
    }
    ready = rolled_at + PROPAGATION + DRAIN

    d = decide(rotating(now=ready - timedelta(seconds=1), old=old, **fields))
    assert isinstance(d, Wait) and d.phase == "draining"
    assert d.until == ready and d.promoted_at == P
    revoke = decide(rotating(now=ready, old=old, **fields))
    assert revoke.action == "revoke" and revoke.key_id == "key_1"
    assert "after the last roll at" in revoke.reason
    # without consumers the drain counts from that last use: done a little earlier
    plain = decide(rotating(now=ready - timedelta(seconds=1), old=old))
    assert plain.action == "revoke" and "after promotion at" in plain.reason


def test_drain_timeout_counts_from_the_last_roll() -> None:
    """The drain's hold comes at rolled_at + timeout, not promoted_at + timeout."""
    rolled_at = P + timedelta(hours=20)
    fields = {"consumers": ("c1",), "rolled": {("b", "c1"): rolled_at}}

    def busy(at: datetime) -> Observation:  # the old key used a minute ago, every time
        return rotating(now=at, old=vkey(1, used=at - timedelta(minutes=1)), **fields)

    assert decide(busy(P + TIMEOUT + timedelta(hours=1))).action == "wait"
    assert decide(busy(rolled_at + TIMEOUT - timedelta(seconds=1))).action == "wait"
    held = decide(busy(rolled_at + TIMEOUT))
    assert isinstance(held, Hold) and held.promoted_at == P
    assert "still used" in held.reason


def test_failed_consumer_is_retried_then_held_at_timeout() -> None:
    """A roll that failed is tried again, its error in the reason; at promoted_at + timeout the
    key holds naming it and its error, and the old key is never revoked."""
    fields = {
        "consumers": ("c1", "c2"),
        "rolled": {("b", "c1"): P + timedelta(seconds=3)},
        "roll_failures": {("b", "c2"): "c2: exit status 1"},
    }
    d = decide(rotating(now=P + timedelta(hours=1), **fields))
    assert isinstance(d, Roll) and d.consumers == (1,)
    assert "last try: c2: exit status 1" in d.reason
    held = decide(rotating(now=P + TIMEOUT, **fields))
    assert isinstance(held, Hold)
    assert held.key_id == "key_1" and held.promoted_at == P
    assert "c2" in held.reason and "exit status 1" in held.reason and "stays active" in held.reason
    assert "c1" not in held.reason.split(":", 2)[2].split(";")[0]
    assert decide(rotating(now=P + TIMEOUT + timedelta(days=3), **fields)).action == "hold"


def test_held_rolls_are_tried_again_when_a_person_asks() -> None:
    """`rotator rotate` past the timeout rolls the pending consumers again."""
    fields = {"consumers": ("c1",), "roll_failures": {("b", "c1"): "c1: refused"}}
    d = decide(rotating(now=P + TIMEOUT + timedelta(hours=1), force=True, **fields))
    assert isinstance(d, Roll) and d.consumers == (0,)


def test_never_roll_blind_when_the_journal_does_not_know() -> None:
    """Past the timeout, the old key gone and no failure on record (the journal was not kept,
    or the consumers were declared later): rest, never restart workloads on a guess."""
    d = decide(rotating(now=P + TIMEOUT + timedelta(hours=1), old=None, consumers=("c1",)))
    assert d.action == "done"
    # within the timeout the same key's consumers are rolled (an emergency that revoked first)
    assert decide(rotating(now=P + timedelta(minutes=5), old=None, consumers=("c1",))).action == "roll"


def test_adopted_key_rolls_nothing_but_is_published() -> None:
    """A key the rotator adopted (not minted): written to the write-only targets, no consumer rolled."""
    adopted = vkey(2, created=P - timedelta(days=2))  # named by a person, not by an attempt
    state = TargetState(version(2, attempt=adoption_attempt("key_2"), promoted=P), None)
    o = replace(obs([adopted], [state], now=P + timedelta(minutes=1)), consumers=("c1",), write_only=("gh",))
    d = decide(o)
    assert isinstance(d, Publish) and d.targets == (0,)
    assert decide(replace(o, published={"gh": FP2})).action == "done"


def test_a_stamp_of_another_attempt_rolls_nothing() -> None:
    """The vendor's name says attempt b; a stamp of attempt x (copied by hand) is not it."""
    state = TargetState(version(2, attempt="x", promoted=P), None)
    o = replace(obs([OLD, _new()], [state], now=P + timedelta(minutes=1)), consumers=("c1",))
    assert decide(o).action == "wait"


def test_emergency_tells_consumers_so() -> None:
    d = decide(rotating(consumers=("c1",), emergency=True))
    assert isinstance(d, Roll) and d.roll_phase == "emergency"


def test_rolled_at_in_the_vendors_clock() -> None:
    """rolled_at is the vendor's time; the wait's end comes back in ours."""
    offset = timedelta(minutes=30)  # the vendor's clock is ahead
    rolled_at = P + timedelta(minutes=5)
    o = rotating(now=P - offset + timedelta(minutes=6), consumers=("c1",), rolled={("b", "c1"): rolled_at})
    d = decide(replace(o, clock_offset=offset))
    assert isinstance(d, Wait) and d.until == rolled_at + PROPAGATION + DRAIN - offset


# --------------------------------------------------------------------------- cutover


def _reset_state(n: int, attempt: str | None) -> TargetState:
    value = _reset_raw(n)
    stamp = Stamp(_app(n).id, value.fingerprint, attempt, T0 + timedelta(hours=1)) if attempt else None
    return TargetState(StoredVersion(str(n), value, stamp), None)


CP = T0 + timedelta(hours=1)
"""When the reset's key was promoted (the app's key, created at T0, is young)."""


def _cut(states: list[TargetState], **fields: object) -> Observation:
    o = obs([_app(2)], states, caps=RESET, now=CP + timedelta(seconds=5))
    return replace(o, **fields)  # type: ignore[arg-type]


def test_cutover_publishes_then_rolls_after_the_reset() -> None:
    """A reset's key in every target: write-only targets, then consumers, in the same pass."""
    states = [_reset_state(2, "r")] * 2
    fp = _reset_raw(2).fingerprint
    d = decide(_cut(states, write_only=("gh",), consumers=("c1", "c2")))
    assert isinstance(d, Publish) and d.version.fingerprint == fp
    roll = decide(_cut(states, write_only=("gh",), published={"gh": fp}, consumers=("c1", "c2")))
    assert isinstance(roll, Roll)
    assert (roll.consumers, roll.attempt, roll.roll_phase) == ((0, 1), "r", "reset")
    rolled = {("r", "c1"): CP, ("r", "c2"): CP}
    rest = decide(
        _cut(states, write_only=("gh",), published={"gh": fp}, consumers=("c1", "c2"), rolled=rolled)
    )
    assert rest.action == "done"


def test_cutover_stages_a_lagging_target_before_rolling() -> None:
    states = [_reset_state(2, "r"), _reset_state(1, "q")]
    d = decide(_cut(states, consumers=("c1",)))
    assert d.action == "stage" and d.phase == "reset"


def test_cutover_adopted_or_bootstrap_key_rolls_nothing() -> None:
    """An unstamped adopted key, or the bootstrap's adoption stamp: no roll."""
    boot = _reset_state(2, adoption_attempt(_app(2).id))
    assert decide(_cut([boot], consumers=("c1",))).action == "done"
    assert decide(_cut([_reset_state(2, None)], consumers=("c1",))).action == "done"
    bare = decide(_cut([EMPTY], consumers=("c1",), bootstrap=_reset_raw(2)))
    assert bare.action == "stage"


def test_cutover_failed_roll_holds_at_timeout() -> None:
    states = [_reset_state(2, "r")]
    fields = {"consumers": ("c1",), "roll_failures": {("r", "c1"): "c1: timed out"}}
    o = replace(_cut(states, **fields), now=CP + TIMEOUT)
    held = decide(o)
    assert isinstance(held, Hold) and "c1: timed out" in held.reason
    assert "stays active" not in held.reason
