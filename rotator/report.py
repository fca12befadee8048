"""``rotator report``: the compliance report.

Per key: the issuer, the age of the oldest key the vendor still accepts against ``max_age``,
the last rotation and the last emergency, the phase, and the journal entries (attempt id,
line number, hash) that prove each rotation. Built from the vendor's key list (as
``status`` sees it) and the hash-chained journal, whose integrity heads the report.

Rendered as a text table, JSON, CSV, or one self-contained HTML page (inline CSS and SVG,
nothing fetched) with a bar chart of key ages against ``max_age``. Ids, prefixes,
fingerprints and hashes only: never a value.
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rotator.abc import format_time, parse_time
from rotator.errors import RotatorError
from rotator.logs import redact
from rotator.spec import format_duration

if TYPE_CHECKING:
    from rotator.engine.runner import Engine

FORMATS = ("table", "json", "csv", "html")
_STARTS = ("promoted", "reset")
"""Journal events that make a new key current."""
_ROLL_OUT = ("published", "rolled")
"""Journal events of a rotation between its start and its end."""
_ENDS = ("revoked", "verified")
"""Journal events that end a rotation: the old key revoked (overlap) or the reset verified."""


@dataclass
class Proof:
    """One rotation as the journal records it."""

    attempt: str
    current_since: str
    """When the new key became current (its promote or reset entry)."""
    entries: list[dict[str, Any]] = field(default_factory=list)
    """``{"seq", "event", "ts", "hash"}`` of each journal entry of the rotation."""
    completed_at: str | None = None


@dataclass
class KeyReport:
    key: str
    issuer: str
    issuer_type: str
    phase: str
    reason: str
    max_age: str
    max_age_s: float
    age: str | None = None
    age_s: float | None = None
    """Age of the oldest key the vendor still accepts (``None``: the vendor lists none)."""
    compliant: bool | None = None
    """``age <= max_age``; ``None`` when the vendor could not be read."""
    current_prefix: str | None = None
    last_rotation: str | None = None
    last_emergency: str | None = None
    last_emergency_outcome: str | None = None
    rotations: list[Proof] = field(default_factory=list)
    error: str | None = None


@dataclass
class Report:
    generated_at: str
    journal_intact: bool
    journal_entries: int
    journal_problem: str | None
    keys: list[KeyReport]


def build(engine: Engine, keys: list[str]) -> Report:
    """Observe each key at its vendor and read its rotations from the journal."""
    from rotator.engine.decide import decide
    from rotator.engine.status import describe

    verified = engine.journal.verify()
    history = _history(engine, set(keys))
    rows = []
    for name in keys:
        spec = engine.spec.keys[name]
        issuer = engine.spec.issuers[spec.issuer]
        max_age = engine.spec.max_age(name)
        row = KeyReport(
            key=name,
            issuer=spec.issuer,
            issuer_type=issuer.type,
            phase="failed",
            reason="",
            max_age=format_duration(max_age),
            max_age_s=max_age.total_seconds(),
        )
        row.rotations, row.last_emergency, row.last_emergency_outcome = history.get(name, ([], None, None))
        if row.rotations:
            row.last_rotation = row.rotations[-1].current_since
        try:
            obs = engine.observe(name)
            view = describe(obs, decide(obs))
        except RotatorError as exc:
            row.error = row.reason = str(exc)
            rows.append(row)
            continue
        row.phase, row.reason = view["phase"], view["reason"]
        active = [k for k in obs.vendor if k.active]
        if active:
            oldest = min(active, key=lambda k: k.created_at)
            age = obs.now - oldest.created_at
            row.age, row.age_s = format_duration(age), age.total_seconds()
            row.compliant = age <= max_age
            row.current_prefix = view["vendor_keys"][0]["prefix"] if view["vendor_keys"] else None
        rows.append(row)
    return Report(
        generated_at=format_time(engine.clock()),
        journal_intact=verified.ok,
        journal_entries=verified.checked,
        journal_problem=None if verified.ok else f"line {verified.first_bad}: {verified.reason}",
        keys=rows,
    )


def _history(engine: Engine, keys: set[str]) -> dict[str, tuple[list[Proof], str | None, str | None]]:
    """Per key: its rotations (attempts that made a key current), last emergency and outcome."""
    rotations: dict[str, list[Proof]] = {}
    emergencies: dict[str, tuple[str, str | None]] = {}
    for e in engine.journal.entries():
        key = e.get("key")
        if key not in keys:
            continue
        event, attempt = e.get("event"), e.get("attempt")
        mark = {"seq": e["seq"], "event": event, "ts": e["ts"], "hash": e["hash"]}
        proofs = rotations.setdefault(key, [])
        if event in _STARTS and attempt:
            found = next((p for p in proofs if p.attempt == attempt), None)
            if found is None:
                proofs.append(Proof(attempt, _when(e), [mark]))
            else:
                found.entries.append(mark)
        elif event in _ROLL_OUT and attempt and (found := _proof(proofs, attempt)) is not None:
            found.entries.append(mark)  # the new key written to a write-only target, a consumer rolled
        elif event == "verified" and attempt and proofs and proofs[-1].attempt == attempt:
            proofs[-1].entries.append(mark)
            proofs[-1].completed_at = e["ts"]
        elif event == "revoked" and proofs and proofs[-1].completed_at is None:
            proofs[-1].entries.append(mark)  # the old key revoked: the latest rotation is complete
            proofs[-1].completed_at = e["ts"]
        elif event == "emergency-complete":
            details = e.get("details") or {}
            emergencies[key] = (e["ts"], details.get("outcome"))
    out: dict[str, tuple[list[Proof], str | None, str | None]] = {}
    for key in keys:
        last, outcome = emergencies.get(key, (None, None))
        out[key] = (rotations.get(key, []), last, outcome)
    return out


def _proof(proofs: list[Proof], attempt: str) -> Proof | None:
    return next((p for p in reversed(proofs) if p.attempt == attempt), None)


def _when(entry: dict[str, Any]) -> str:
    promoted = (entry.get("details") or {}).get("promoted_at")
    return str(promoted or entry["ts"])


# ---------------------------------------------------------------------- rendering


def render(report: Report, fmt: str) -> str:
    """The report as ``table``, ``json``, ``csv`` or ``html`` text."""
    text = {"table": _table, "json": _json, "csv": _csv, "html": _html}[fmt](report)
    return redact(text)


def _proof_text(p: Proof) -> str:
    marks = ", ".join(f"{m['event']} #{m['seq']} {m['hash'][:12]}" for m in p.entries)
    return f"attempt {p.attempt}: {marks}"


def _compliance(row: KeyReport) -> str:
    return {True: "yes", False: "NO", None: "unknown"}[row.compliant]


def _short(ts: str | None) -> str:
    return parse_time(ts).strftime("%Y-%m-%d %H:%M") if ts else "never"


def _table(report: Report) -> str:
    head = ("KEY", "ISSUER", "PHASE", "AGE", "MAX_AGE", "COMPLIANT", "LAST ROTATION", "LAST EMERGENCY")
    rows = [
        (
            r.key,
            f"{r.issuer} ({r.issuer_type})",
            r.phase,
            r.age or "-",
            r.max_age,
            _compliance(r),
            _short(r.last_rotation),
            _short(r.last_emergency),
        )
        for r in report.keys
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=False)]
    lines = [_journal_line(report), ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    for r, cells in zip(report.keys, rows, strict=True):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if r.error:
            lines.append(f"  error: {r.error}")
        lines.extend(f"  {_proof_text(p)}" for p in r.rotations)
    return "\n".join(lines) + "\n"


def _journal_line(report: Report) -> str:
    if report.journal_intact:
        return f"journal intact: {report.journal_entries} entries (report of {report.generated_at})"
    return f"journal BROKEN at {report.journal_problem} (report of {report.generated_at})"


def _json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2) + "\n"


def _csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "key",
            "issuer",
            "issuer_type",
            "phase",
            "age_s",
            "max_age_s",
            "compliant",
            "last_rotation",
            "last_emergency",
            "rotations",
            "journal_entries",
        ]
    )
    for r in report.keys:
        writer.writerow(
            [
                r.key,
                r.issuer,
                r.issuer_type,
                r.phase,
                "" if r.age_s is None else round(r.age_s),
                round(r.max_age_s),
                _compliance(r),
                r.last_rotation or "",
                r.last_emergency or "",
                len(r.rotations),
                "; ".join(_proof_text(p) for p in r.rotations),
            ]
        )
    return out.getvalue()


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem;color:#1d2330}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}
.meta{color:#5b6475;margin:0 0 1rem}.ok{color:#17803d}.bad{color:#b42318;font-weight:600}
.unknown{color:#8a6d00}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e3e6ec;vertical-align:top}
th{background:#f4f6f9;font-weight:600}code{font:12px ui-monospace,Menlo,Consolas,monospace}
.proof{color:#5b6475;font-size:12px}
svg text{font:12px system-ui,sans-serif;fill:#1d2330;paint-order:stroke;stroke:#fff;stroke-width:3px}
"""


def _html(report: Report) -> str:
    e = html.escape
    status = (
        f'<span class="ok">intact</span>, {report.journal_entries} entries'
        if report.journal_intact
        else f'<span class="bad">BROKEN</span> at {e(report.journal_problem or "")}'
    )
    over = sum(r.compliant is False for r in report.keys)
    rows = []
    for r in report.keys:
        cls = {True: "ok", False: "bad", None: "unknown"}[r.compliant]
        proofs = "<br>".join(
            f"<code>{e(p.attempt)}</code>: "
            + ", ".join(
                f"{e(str(m['event']))} #{m['seq']} <code>{e(m['hash'][:16])}</code>" for m in p.entries
            )
            for p in r.rotations
        )
        rows.append(
            f'<tr data-key="{e(r.key)}"><td><b>{e(r.key)}</b></td><td>{e(r.issuer)} ({e(r.issuer_type)})</td>'
            f"<td>{e(r.phase)}</td><td>{e(r.age or '-')}</td><td>{e(r.max_age)}</td>"
            f'<td class="{cls}">{_compliance(r)}</td><td>{e(_short(r.last_rotation))}</td>'
            f"<td>{e(_short(r.last_emergency))}"
            + (f" ({e(r.last_emergency_outcome)})" if r.last_emergency_outcome else "")
            + f'</td><td class="proof">{proofs or "none"}'
            + (f'<br><span class="bad">{e(r.error)}</span>' if r.error else "")
            + "</td></tr>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>rotator compliance report</title><style>{_CSS}</style></head>
<body>
<h1>Key rotation compliance report</h1>
<p class="meta">Generated {e(report.generated_at)} &middot; {len(report.keys)} keys, {over} over max_age
&middot; audit journal {status}</p>
<h2>Key age against max_age</h2>
{_chart(report)}
<h2>Keys</h2>
<table><thead><tr><th>Key</th><th>Issuer</th><th>Phase</th><th>Age</th><th>max_age</th>
<th>Compliant</th><th>Last rotation</th><th>Last emergency</th>
<th>Journal proof (attempt: entry #line hash)</th>
</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""


def _chart(report: Report) -> str:
    """A horizontal bar per key: its age as a share of its own max_age (the dashed line)."""
    label_w, bar_w, row_h, top = 180, 560, 28, 24
    height = top + row_h * len(report.keys) + 8
    # up to 1.5 x max_age to scale; a key far older is a full bar (its label gives its age)
    scale = min(1.5, max([1.0] + [(r.age_s or 0) / r.max_age_s for r in report.keys if r.max_age_s]))
    limit_x = label_w + bar_w / scale
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 150}" height="{height}" '
        'role="img" aria-label="key age against max_age">',
        f'<text x="{limit_x - 4:.1f}" y="14" text-anchor="end">max_age</text>',
    ]
    parts.append(
        f'<line x1="{limit_x:.1f}" y1="18" x2="{limit_x:.1f}" y2="{height - 4}" '
        'stroke="#1d2330" stroke-dasharray="4 3"/>'
    )
    for i, r in enumerate(report.keys):
        y = top + i * row_h
        share = (r.age_s or 0) / r.max_age_s if r.max_age_s else 0
        width = bar_w * min(share, scale) / scale
        colour = {True: "#2f9e5b", False: "#d92d20", None: "#b0b7c3"}[r.compliant]
        text = f"{r.age or 'unknown'} of {r.max_age}"
        parts.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{html.escape(r.key)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 4}" width="{max(width, 2):.1f}" height="{row_h - 10}" '
            f'rx="3" fill="{colour}"><title>{html.escape(r.key)}: {html.escape(text)}</title></rect>'
        )
        parts.append(f'<text x="{label_w + max(width, 2) + 6:.1f}" y="{y + 17}">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
