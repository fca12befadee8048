"""Properties of ``decide`` for keys with write-only targets and consumers (hypothesis), over
the rotations in flight of ``tests/test_properties.py`` with any journal record of writes,
rolls and failed rolls. Whatever the record, ``decide`` must:

* revoke the old key only once every consumer of the new key's attempt is rolled and every
  write-only target holds the new key, and the drain counted from the last roll is over;
* roll only consumers not yet rolled for that attempt, in file order, only for a key the
  rotator minted, and only once the new key is current in every readable target and written
  to every write-only one;
* never drain nor mint while a roll of the current attempt is pending (it is done, or held,
  first).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from rotator.engine.decide import decide
from rotator.engine.model import Observation, Publish, Roll, attempt_of
from tests.test_properties import EXAMPLES, in_flight, owner, raw, seconds, states


@st.composite
def with_record(draw: st.DrawFn) -> Observation:
    obs = draw(in_flight())
    consumers = tuple(f"c{i}" for i in range(draw(st.integers(0, 3))))
    write_only = tuple(f"w{i}" for i in range(draw(st.integers(0, 2))))
    attempts = ("a1", "a0", "a2")
    rolled = {(a, c): draw(seconds(0, 300_000)) for a in attempts for c in consumers if draw(st.booleans())}
    failures = {
        (a, c): f"{c}: exit status 1" for a in attempts for c in consumers if draw(st.integers(0, 3)) == 0
    }
    fps = [raw(1).fingerprint, raw(0).fingerprint]
    published = {w: draw(st.sampled_from(fps)) for w in write_only if draw(st.integers(0, 3))}
    return replace(
        obs,
        consumers=consumers,
        write_only=write_only,
        rolled=rolled,
        roll_failures={k: v for k, v in failures.items() if k not in rolled},
        published=published,
        emergency=draw(st.booleans()),
    )


def _minted_attempt(obs: Observation) -> str | None:
    """The attempt of the key every target holds as current, when the rotator minted it."""
    currents = [s.current for s in states(obs)]
    if not currents or any(c is None for c in currents) or len({c.fingerprint for c in currents if c}) != 1:
        return None
    new = owner(obs, currents[0])
    if new is None:
        return None
    for c in currents:
        if c is not None and c.stamp is not None and c.stamp.key_id == new.id:
            return c.stamp.attempt if attempt_of(obs.key, new) == c.stamp.attempt else None
    return None


@EXAMPLES
@given(with_record())
def test_old_key_revoked_only_after_every_roll_and_write(obs: Observation) -> None:
    d = decide(obs)
    if not (d.action == "revoke" and d.phase == "draining"):
        return
    current = states(obs)[0].current
    assert current is not None
    assert all(obs.published.get(w) == current.fingerprint for w in obs.write_only), d
    attempt = _minted_attempt(obs)
    assert d.promoted_at is not None
    start = d.promoted_at
    if attempt is not None:
        assert all((attempt, c) in obs.rolled for c in obs.consumers), d
        start = max([start, *(obs.rolled[(attempt, c)] for c in obs.consumers)])
    old = next(k for k in obs.vendor if k.id == d.key_id)
    policy = obs.policy
    quiet_from = start + policy.propagation
    drained = obs.now >= max(quiet_from, old.last_used_at or quiet_from) + policy.drain
    timed_out = policy.on_timeout == "revoke" and obs.now >= start + policy.timeout
    assert drained or timed_out, d


@EXAMPLES
@given(with_record())
def test_rolls_only_what_is_pending_once_everything_is_written(obs: Observation) -> None:
    d = decide(obs)
    if isinstance(d, Publish):
        assert d.targets == tuple(sorted(d.targets)) and d.targets, d
        assert all(obs.published.get(obs.write_only[i]) != d.version.fingerprint for i in d.targets), d
        assert all(
            s.current is not None and s.current.fingerprint == d.version.fingerprint for s in states(obs)
        )
    if not isinstance(d, Roll):
        return
    attempt = _minted_attempt(obs)
    assert attempt == d.attempt, d
    pending = tuple(i for i, c in enumerate(obs.consumers) if (attempt, c) not in obs.rolled)
    assert d.consumers == pending and pending, d
    assert all(obs.published.get(w) == d.fingerprint for w in obs.write_only), d
    assert d.roll_phase == ("emergency" if obs.emergency else "rotation"), d


@EXAMPLES
@given(with_record())
def test_a_pending_roll_comes_before_the_drain_and_the_next_mint(obs: Observation) -> None:
    """While a consumer of the current attempt is not rolled: no drain revoke, no mint; a hold
    past the timeout names what is pending."""
    attempt = _minted_attempt(obs)
    pending = [c for c in obs.consumers if (attempt, c) not in obs.rolled]
    if attempt is None or not pending:
        return
    d = decide(obs)
    assert d.action != "mint", d
    assert not (d.action == "revoke" and d.phase == "draining"), d
    if isinstance(d, Roll):
        assert [obs.consumers[i] for i in d.consumers] == pending
