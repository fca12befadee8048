"""The one key-format type of the HTTP vendors: checks, wording, and no value in a message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rotator.abc import VendorKey
from rotator.secret import Secret
from rotator.vendors import adjudon, adjutor
from rotator.vendors._keyformat import KeyFormat

WORKSPACE = "adj_live_" + "0123456789abcdef" * 4
AGENT = "adj_agent_" + "fedcba9876543210" * 3
APP = "sk_live_" + "Ab1" * 13 + "Z"


def _key(prefix: str) -> VendorKey:
    return VendorKey("k1", prefix, "n", "active", created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_the_vendors_formats() -> None:
    assert adjudon.KEY_FORMATS["workspace"].description == "adj_live_ + 64 hex"
    assert adjudon.KEY_FORMATS["agent"].description == "adj_agent_ + 48 hex"
    assert adjutor.KEY_FORMAT.description == "sk_live_ + 40 letters or digits"
    assert adjudon.KEY_FORMATS["workspace"].fits(WORKSPACE)
    assert adjudon.KEY_FORMATS["agent"].fits(AGENT)
    assert adjutor.KEY_FORMAT.fits(APP)
    assert not adjudon.KEY_FORMATS["workspace"].fits(AGENT)
    assert not adjudon.KEY_FORMATS["agent"].fits(WORKSPACE)


@pytest.mark.parametrize(
    "bad",
    [
        WORKSPACE[:-1],  # short
        WORKSPACE + "0",  # long
        WORKSPACE[:-1] + "g",  # out of the alphabet
        WORKSPACE[:-1] + "A",  # hex is lower case
        "adj_livE_" + WORKSPACE[9:],  # the prefix is literal
        "xadj_live_" + WORKSPACE[10:],
        WORKSPACE + "\n",  # no trailing newline slips through a `$`
        "",
    ],
)
def test_fits_is_exact(bad: str) -> None:
    assert not adjudon.KEY_FORMATS["workspace"].fits(bad)


def test_prefix_is_literal_not_a_pattern() -> None:
    dotted = KeyFormat("a dotted key", "k.", 4, "0-9", "digits", 4)
    assert dotted.fits("k.1234")
    assert not dotted.fits("kx1234")


def test_problem_wording_without_the_value() -> None:
    ws = adjudon.KEY_FORMATS["workspace"]
    assert ws.problem(WORKSPACE, WORKSPACE[:13]) is None
    assert ws.problem(None, WORKSPACE[:13]) == "came without its value"
    assert ws.problem(42, WORKSPACE[:13]) == "came without its value"
    short = ws.problem(WORKSPACE[:-1], WORKSPACE[:13])
    assert short == "has a value that is not a workspace key (adj_live_ + 64 hex)"
    other = ws.problem(WORKSPACE, "adj_live_ffff")
    assert other == "has a value that does not start with its prefix 'adj_live_ffff'"
    agent = adjudon.KEY_FORMATS["agent"].problem(WORKSPACE, WORKSPACE[:13])
    assert agent == "has a value that is not an agent key (adj_agent_ + 48 hex)"
    app = adjutor.KEY_FORMAT.problem(APP[:-1], APP[:12])
    assert app == "has a value that is not an app key (sk_live_ + 40 letters or digits)"
    for text in (short, other, agent, app):
        assert text is not None and WORKSPACE[13:] not in text and APP[12:] not in text


def test_matches_needs_the_format_and_the_shown_prefix() -> None:
    ws = adjudon.KEY_FORMATS["workspace"]
    assert ws.matches(Secret(WORKSPACE), _key(WORKSPACE[:13]))
    assert not ws.matches(Secret(WORKSPACE), _key(WORKSPACE[:12]))  # prefix of the wrong length
    assert not ws.matches(Secret(WORKSPACE), _key("adj_live_ffff"))
    assert not ws.matches(Secret(WORKSPACE[:13] + "x" * 60), _key(WORKSPACE[:13]))
    assert adjutor.KEY_FORMAT.matches(Secret(APP), _key(APP[:12]))
    assert not adjutor.KEY_FORMAT.matches(Secret(APP), _key(APP[:13]))
