"""Notifications through Apprise: tell people when a key is held, a pass failed, an emergency
ran, a rotation completed or a key is overdue.

Every pass (``apply``/``rotate``, ``serve``, the Lambda handler, ``emergency``) ends by calling
:func:`notify`, the one entry point. It sends one message per event and key and remembers,
in ``state_dir/notify.json``, what it sent: a key held for a day is one message, not 96.

- ``held``, ``failed`` and ``overdue`` are states: remembered by key and a token (the
  attempt in flight, or the shape of the reason), and forgotten when a pass sees the key
  leave that state, so the next time it enters it is news again.
- ``completed`` (one per rotation attempt) and ``emergency`` (one per run) are events.

A message names the key, its phase, the reason, the attempt, and the vendor keys'
prefixes and the targets' fingerprints; never a value. URLs come from the environment or
a declared key. A notification that cannot be sent is one warning line and is tried
again on the next pass; it never changes the pass's outcome. Apprise is imported only
when the rotation file has a ``notify:`` section.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotator.errors import RotatorError
from rotator.logs import redact
from rotator.spec import EnvRef, KeyRef, NotifySpec

if TYPE_CHECKING:
    from rotator.emergency import EmergencyReport
    from rotator.engine.model import Observation
    from rotator.engine.runner import Engine, KeyResult

log = logging.getLogger("rotator.notify")

STATES = ("held", "failed", "overdue")
"""Events that last while a key stays in them; the others happen once."""
_TYPES = {
    "held": "warning",
    "overdue": "warning",
    "failed": "failure",
    "emergency": "failure",
    "completed": "success",
}
_VOLATILE = re.compile(r"[0-9a-f]{8,}|\d+")
"""Times, counts and ids in a reason: a reason that differs only in these is the same news."""


@dataclass
class Message:
    """One notification: what happened to one key. Ids, prefixes and fingerprints only."""

    event: str
    key: str
    token: str
    """What makes it news: the same event, key and token is sent once."""
    phase: str
    reason: str
    lines: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"rotator: {self.key} {self.event}"

    @property
    def body(self) -> str:
        head = [f"key: {self.key}", f"event: {self.event}", f"phase: {self.phase}", f"reason: {self.reason}"]
        return redact("\n".join(head + self.lines))


def notify(engine: Engine, results: Sequence[KeyResult], *, emergency: EmergencyReport | None = None) -> None:
    """Send what this pass has to tell (per the rotation file's ``notify:``); never raises."""
    if not engine.spec.notify:
        return
    try:
        _Notifier(engine).run(results, emergency)
    except Exception as exc:  # noqa: BLE001 - a notification never changes a pass's outcome
        log.warning("notifications not sent: %s", redact(f"{type(exc).__name__}: {exc}"))


class _Notifier:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._observed: dict[str, Observation | None] = {}
        self._attempts: dict[str, str] | None = None
        self._ends: dict[str, str] = {}

    def run(self, results: Sequence[KeyResult], emergency: EmergencyReport | None) -> None:
        spec = self.engine.spec
        seen = {r.key for r in results if r.outcome != "busy"}
        wanted: set[str] = {event for entry in spec.notify for event in entry.on}
        messages = self._messages([r for r in results if r.key in seen], wanted)
        if emergency is not None and "emergency" in wanted:
            messages.append(_emergency_message(emergency))
        present = {(m.event, m.key) for m in messages}
        with _sent_state(self.engine.state_dir) as state:
            for i, entry in enumerate(spec.notify):
                sent = state.setdefault(_entry_id(i, entry), {})
                for event in STATES:  # a key seen out of a state: entering it again is news
                    for key in [k for k in sent.get(event, {}) if k in seen and (event, k) not in present]:
                        del sent[event][key]
                due = [
                    m
                    for m in messages
                    if m.event in entry.on
                    and (entry.keys is None or m.key in entry.keys)
                    and sent.get(m.event, {}).get(m.key) != _digest(m.token)
                ]
                if due:
                    for m in due:
                        self._describe(m)
                    for m in self._send(i, entry, due):
                        sent.setdefault(m.event, {})[m.key] = _digest(m.token)

    # ------------------------------------------------------------------ what to say

    def _messages(self, results: Sequence[KeyResult], wanted: set[str]) -> list[Message]:
        out: list[Message] = []
        for r in results:
            if r.outcome == "held" and "held" in wanted:
                token = self._attempt(r.key) or _shape(r.message)
                out.append(Message("held", r.key, token, r.phase, r.message))
            if r.outcome == "failed" and "failed" in wanted:
                out.append(Message("failed", r.key, _shape(r.message), r.phase, r.message))
            if {"revoke", "reset"} & set(r.steps) and "completed" in wanted:
                attempt = self._completed(r.key)
                if attempt is not None:
                    reason = f"rotation {attempt} complete: the old key is revoked"
                    out.append(Message("completed", r.key, attempt, r.phase, reason))
            if r.outcome in ("held", "failed") and "overdue" in wanted:
                overdue = self._overdue(r)
                if overdue is not None:
                    out.append(overdue)
        return out

    def _overdue(self, r: KeyResult) -> Message | None:
        """An active key older than ``max_age`` on a key the pass left held or failed."""
        obs = self._observe(r.key)
        if obs is None:
            return None
        active = [k for k in obs.vendor if k.active]
        if not active:
            return None
        oldest = min(active, key=lambda k: k.created_at)
        age = obs.now - oldest.created_at
        if age <= obs.max_age:
            return None
        from rotator.spec import format_duration

        reason = (
            f"active key {oldest.prefix}… ({oldest.id}) is {format_duration(age)} old, over max_age "
            f"{format_duration(obs.max_age)}, and the key is {r.outcome}: {r.message}"
        )
        return Message("overdue", r.key, oldest.id, r.phase, reason)

    def _describe(self, m: Message) -> None:
        """Add the attempt, the vendor keys' prefixes and the targets' fingerprints."""
        if m.lines:
            return
        attempt = self._attempt(m.key)
        if attempt:
            m.lines.append(f"attempt: {attempt}")
        obs = self._observe(m.key)
        if obs is None:
            return
        for k in sorted(obs.vendor, key=lambda k: k.created_at, reverse=True):
            if k.active:
                m.lines.append(f"vendor key: {k.prefix}… id {k.id}, created {k.created_at:%Y-%m-%d %H:%M}Z")
        for t in obs.targets:
            if t.state is None:
                m.lines.append(f"target {t.name}: unreadable ({t.error})")
                continue
            cur, pen = t.state.current, t.state.pending
            shown = f"current fp {cur.fingerprint}" if cur else "empty"
            m.lines.append(f"target {t.name}: {shown}" + (f", pending fp {pen.fingerprint}" if pen else ""))

    def _observe(self, key: str) -> Observation | None:
        if key not in self._observed:
            try:
                self._observed[key] = self.engine.observe(key)
            except RotatorError as exc:
                log.debug("%s: not observed for a notification: %s", key, exc)
                self._observed[key] = None
        return self._observed[key]

    def _journal_scan(self) -> dict[str, str]:
        if self._attempts is None:
            self._attempts = {}
            promoted: dict[str, str] = {}
            for e in self.engine.journal.entries():
                key, event, attempt = e.get("key"), e.get("event"), e.get("attempt")
                if not isinstance(key, str):
                    continue
                if attempt:
                    self._attempts[key] = str(attempt)
                if event in ("promoted", "reset") and attempt:
                    promoted[key] = str(attempt)
                elif event == "revoked" and key in promoted:  # the old key of that rotation
                    self._ends[key] = promoted[key]
                elif event == "verified" and attempt:  # a cutover's reset, probed
                    self._ends[key] = str(attempt)
        return self._attempts

    def _attempt(self, key: str) -> str | None:
        """The latest rotation attempt of ``key`` in the journal."""
        return self._journal_scan().get(key)

    def _completed(self, key: str) -> str | None:
        """The attempt of the key's last completed rotation (orphan clean-ups are none)."""
        self._journal_scan()
        return self._ends.get(key)

    # ------------------------------------------------------------------ sending

    def _send(self, index: int, entry: NotifySpec, messages: list[Message]) -> list[Message]:
        """Send ``messages`` to ``entry``'s URL; return those that went. One warning if any did not."""
        where = f"notify #{index + 1} ({_ref(entry)})"
        try:
            url = self._url(entry)
        except RotatorError as exc:
            log.warning("%s: %d message(s) not sent: %s", where, len(messages), exc)
            return []
        import apprise

        logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)  # it would log URLs and bodies
        sender = apprise.Apprise()
        if not sender.add(url):
            log.warning("%s: %d message(s) not sent: not a URL Apprise knows", where, len(messages))
            return []
        done, failed = [], []
        for m in messages:
            kind = getattr(apprise.NotifyType, _TYPES[m.event].upper())
            if sender.notify(body=m.body, title=m.title, notify_type=kind):
                done.append(m)
            else:
                failed.append(f"{m.event} {m.key}")
        if failed:
            log.warning("%s: not delivered (%s); tried again on the next pass", where, ", ".join(failed))
        return done

    def _url(self, entry: NotifySpec) -> str:
        ref = entry.url
        if isinstance(ref, EnvRef):
            value = os.environ.get(ref.env)
            if not value:
                raise RotatorError(f"environment variable {ref.env} is not set")
            return value
        assert isinstance(ref, KeyRef)
        for store in self.engine.stores(ref.key):
            current = store.read().current
            if current is not None:
                return current.value.reveal()
        raise RotatorError(f"key {ref.key}: no target holds a current value")


def _emergency_message(report: EmergencyReport) -> Message:
    lines = [f"leaked key: {report.leaked_prefix}… id {report.leaked_key_id}, order {report.order}"]
    if report.time_to_revoke_s is not None:
        lines.append(f"revoked {report.time_to_revoke_s}s after the command started")
    if report.new_key_id:
        lines.append(
            f"new key: {report.new_prefix}… id {report.new_key_id}, fp {report.new_fingerprint}, "
            f"current in {len(report.targets)} target(s)"
        )
    lines.append(f"outcome: {report.outcome}: {report.message}")
    if report.report_path:
        lines.append(f"incident report: {Path(report.report_path).name}")
    token = report.report_path or f"{report.leaked_key_id}:{report.revoked_at}"
    return Message("emergency", report.key, token, report.outcome, report.reason, lines)


def _shape(reason: str) -> str:
    return _VOLATILE.sub("#", reason)


def _digest(token: str) -> str:
    """What the state file keeps of a token: a hash (reasons stay out of state_dir)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _ref(entry: NotifySpec) -> str:
    return f"env {entry.url.env}" if isinstance(entry.url, EnvRef) else f"key {entry.url.key}"


def _entry_id(index: int, entry: NotifySpec) -> str:
    return f"{index}:{_ref(entry)}"


@contextmanager
def _sent_state(state_dir: Path) -> Iterator[dict[str, dict[str, dict[str, str]]]]:
    """``state_dir/notify.json`` (entry -> event -> key -> token digest), locked across
    threads and processes while a pass decides and sends, then replaced atomically."""
    path = state_dir / "notify.json"
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(state_dir / "notify.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            data: Any = json.loads(path.read_text())
        except FileNotFoundError:
            data = {}
        except ValueError:
            log.warning("%s is damaged; starting it afresh (a message may be repeated)", path.name)
            data = {}
        state: dict[str, dict[str, dict[str, str]]] = data.get("sent", {}) if isinstance(data, dict) else {}
        yield state
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"version": 1, "sent": state}, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        os.close(lock_fd)
