"""Live progress for people at a terminal: one line per phase change, and a live line
while a key drains. Written to stderr so ``--output json`` stays clean."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from rotator.engine.model import Decision
from rotator.logs import redact


class ProgressView:
    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        # soft_wrap: a line is never cut at the console width (80 when piped or in CI logs)
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self._last: dict[str, tuple[str, str]] = {}
        self._waiting: dict[str, Decision] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> ProgressView:
        if self.enabled and self.console.is_terminal:
            self._live = Live(
                Text(""),
                console=self.console,
                refresh_per_second=4,
                transient=True,
                get_renderable=self._render,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self, key: str, decision: Decision) -> None:
        """Called by the engine after every decision."""
        if not self.enabled:
            return
        with self._lock:
            if decision.action == "wait":
                self._waiting[key] = decision
            else:
                self._waiting.pop(key, None)
            shown = (decision.phase, decision.action)
            if self._last.get(key) == shown or decision.action in ("fail", "hold"):
                return  # a failed or held key is reported once, by its result line
            self._last[key] = shown
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        self.console.print(
            redact(f"{stamp} {key}: {decision.phase} -> {decision.action}: {decision.reason}"),
            markup=False,
            soft_wrap=True,
        )

    def _render(self) -> Text:
        now = datetime.now(UTC)
        lines = []
        with self._lock:
            for key, d in sorted(self._waiting.items()):
                left = max(0.0, (d.until - now).total_seconds()) if d.until else 0.0
                lines.append(f"  {key}: {d.phase}, {left:5.0f}s left: {d.reason}")
        return Text(redact("\n".join(lines)))


_log = logging.getLogger("rotator.progress")


def log_progress(key: str, decision: Decision) -> None:
    """The progress of ``--log-format json`` runs: each decision is one INFO log record with
    the key, phase and action as fields (no lines of text among the JSON ones)."""
    _log.info(
        "%s: %s -> %s: %s",
        key,
        decision.phase,
        decision.action,
        decision.reason,
        extra={"key": key, "phase": decision.phase, "event": decision.action},
    )
