"""The --wait progress view: phase changes as lines, and a live countdown for draining keys."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from rotator.abc import Stamp, StoredVersion
from rotator.engine.model import Mint, Promote, Wait
from rotator.progress import ProgressView
from rotator.secret import Secret


def test_phase_lines_and_live_drain_line() -> None:
    """Each phase change prints once; a waiting key shows its time left until the drain ends."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    view = ProgressView(console=console)
    until = datetime.now(UTC) + timedelta(seconds=90)
    wait = Wait("draining", "draining old key key_1 (adj_agent_abc…)", until=until)
    value = Secret("adj_agent_new")
    version = StoredVersion("2", value, Stamp("key_2", value.fingerprint, "a1"))
    promote = Promote("staged everywhere", (0,), version, "key_2", datetime.now(UTC))
    with view:
        view.update("payments", promote)
        view.update("payments", wait)
        view.update("payments", wait)  # the same phase again: no new line
        live = view._render().plain
    text = out.getvalue()
    assert text.count("payments: draining -> wait") == 1
    assert "payments: staged -> promote" in text
    assert "payments: draining," in live and "s left" in live
    left = int(live.split(",")[1].split("s left")[0])
    assert 85 <= left <= 90


def test_disabled_view_prints_nothing() -> None:
    """With --output json the view stays silent, so stdout and stderr hold only the JSON."""
    out = io.StringIO()
    view = ProgressView(enabled=False, console=Console(file=out, force_terminal=True))
    with view:
        view.update("k", Mint("first run"))
    assert out.getvalue() == ""
