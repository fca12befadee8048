"""The command line: the composition root that wires spec, engine, vendors and stores."""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click

from rotator import __version__
from rotator.completion import SHELLS, complete_keys
from rotator.errors import ConfigError, LeaseBusy, RotatorError
from rotator.logs import configure, redact
from rotator.shard import Shard
from rotator.spec import RotationFile, load_rotation_file, load_settings, parse_duration

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_HELD = 0, 1, 2, 3
EXIT_BUSY = 4
"""``rotate`` and ``emergency``: the key's lease is held by another runner; nothing was done."""
STARTED = time.monotonic()
"""When the command started: emergency reports its time-to-revoke from here."""


class Context:
    def __init__(self, file: Path | None, debug: bool) -> None:
        self.settings = load_settings()
        self.debug = debug or self.settings.debug
        self.file = file or self.settings.file
        self._engine: Any = None

    def load(self) -> RotationFile:
        return load_rotation_file(self.file)

    def engine(self) -> Any:
        from rotator.engine.runner import Engine

        spec = self.load()
        self._engine = Engine(spec, base_dir=self.file.resolve().parent, settings=self.settings)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _keys(spec: RotationFile, wanted: Sequence[str]) -> list[str]:
    unknown = [k for k in wanted if k not in spec.keys]
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)} (declared: {', '.join(spec.keys)})")
    return list(wanted) or list(spec.keys)


def _emit(data: Any) -> None:
    click.echo(redact(json.dumps(data, indent=2, default=str)))


def _rfc3339(t: datetime | None) -> str | None:
    """The one time format of ``--output json``: RFC 3339, UTC, ``Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def _window(engine: Any, key: str, steps: Sequence[str]) -> float | None:
    """The cutover window of the reset this pass made (``window_s`` in the journal), if any."""
    if "reset" not in steps:
        return None
    entry = engine.journal.last(key, "reset")
    window = entry["details"].get("window_s") if entry else None
    return float(window) if isinstance(window, int | float) else None


def _shard_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Shard | None:
    """``--shard I/N``, else ``ROTATOR_SHARD``, else a Kubernetes Indexed Job's index (rotator.shard)."""
    import os

    from rotator import shard

    try:
        return shard.resolve(shard.parse(value) if value is not None else None, os.environ)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--shard: ")) from None
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


_shard = click.option(
    "--shard",
    callback=_shard_option,
    metavar="I/N",
    help="Only the keys of shard I of N (0 <= I < N; a stable hash of the key's name). "
    "Default: $ROTATOR_SHARD, then $JOB_COMPLETION_INDEX/$JOB_COMPLETIONS (an Indexed Job).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-f",
    "--file",
    "file",
    type=click.Path(path_type=Path),
    help="The rotation file (default: $ROTATOR_FILE, then ./rotations.yaml).",
)
@click.option("--debug", is_flag=True, help="Log every step and show tracebacks.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as text or one JSON object each (default: $ROTATOR_LOG_FORMAT, then text).",
)
@click.version_option(__version__, prog_name="rotator")
@click.pass_context
def cli(ctx: click.Context, file: Path | None, debug: bool, log_format: str | None) -> None:
    """Rotate third-party API keys as code.

    Keys, their vendors and the secret stores that hold them are declared in a
    rotation file kept in git. Each pass observes the vendor and every store,
    decides the next safe step and takes it: mint, roll out, verify that
    consumers have left the old key, and only then revoke it.
    """
    obj = Context(file, debug)
    if log_format is not None:
        obj.settings = obj.settings.model_copy(update={"log_format": log_format})
    configure(obj.settings.log_level, debug=obj.debug, fmt=obj.settings.log_format)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


@cli.command()
@click.pass_obj
def validate(obj: Context) -> None:
    """Check the rotation file. Exit 0 when valid, 2 when not (every problem is listed)."""
    spec = obj.load()
    consumers = sum(len(k.consumers) for k in spec.keys.values())
    write_only = sum(len(k.write_only_targets()) for k in spec.keys.values())
    rolls = f", {consumers} consumers, {write_only} write-only targets" if consumers or write_only else ""
    click.echo(f"{obj.file}: ok ({len(spec.keys)} keys, {len(spec.issuers)} issuers{rolls})")


@cli.command()
@click.argument("keys", nargs=-1, shell_complete=complete_keys)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Terraform's exit codes: 0 nothing to do, 1 error (an invalid file too), 2 steps pending.",
)
@click.option("--output", type=click.Choice(["text", "json"]), default="text")
@_shard
@click.pass_obj
def plan(
    obj: Context, keys: tuple[str, ...], detailed_exitcode: bool, output: str, shard: Shard | None
) -> None:
    """What each key needs now and why, and the consumers its next steps roll. Never writes
    anything (no consumer is rolled, no target written)."""
    engine = obj.engine()
    names = _keys(engine.spec, keys)
    planned = _plan(engine, shard.select(names) if shard is not None else names)
    decisions = [(k, d) for k, d, _ in planned]
    if output == "json":
        _emit(
            [
                {
                    "key": k,
                    "action": d.action,
                    "phase": d.phase,
                    "reason": d.reason,
                    "until": _rfc3339(d.until),
                    "will_roll": rolls,
                }
                for k, d, rolls in planned
            ]
        )
    else:
        for key, d, rolls in planned:
            click.echo(f"{key}: {d.phase} -> {d.action}: {d.reason}")
            for name in rolls:
                click.echo(f"  will roll  {name}")
    pending = any(d.action not in ("done", "wait") for _, d in decisions)
    if any(d.action == "fail" for _, d in decisions):
        sys.exit(EXIT_FAILED)
    sys.exit(2 if detailed_exitcode and pending else EXIT_OK)


def _plan(engine: Any, names: Sequence[str]) -> list[tuple[str, Any, list[str]]]:
    """Each key's next step, as ``Engine.plan`` decides it, and the consumers the steps from
    there roll (``rotator.engine.status.will_roll``)."""
    from rotator.engine.decide import decide
    from rotator.engine.model import Fail
    from rotator.engine.status import will_roll

    out: list[tuple[str, Any, list[str]]] = []
    for key in names:
        try:
            obs = engine.observe(key)
            d = decide(obs)
        except RotatorError as exc:
            out.append((key, Fail(str(exc)), []))
            continue
        out.append((key, d, will_roll(obs, d)))
    return out


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """A duration option (``0s``, ``90s``, ``15m``, ``2h30m``) as a timedelta."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except OverflowError:
        raise click.BadParameter(f"{value!r} is too long") from None


def _run(
    obj: Context,
    keys: Sequence[str],
    *,
    force: bool,
    wait: bool,
    dry_run: bool,
    parallel: int | None,
    output: str,
    pushgateway: str | None = None,
    wait_timeout: timedelta | None = None,
    lock_timeout: timedelta = timedelta(0),
    busy_exit: bool = False,
    shard: Shard | None = None,
) -> NoReturn:
    engine = obj.engine()
    names = _keys(engine.spec, keys)
    if shard is not None:
        names = shard.select(names)
    if dry_run:
        for key, d in engine.plan(names, force=force):
            click.echo(f"{key}: would {d.action} ({d.phase}): {d.reason}")
        sys.exit(EXIT_OK)
    import time

    from rotator.interrupt import stop_on_signals
    from rotator.progress import ProgressView, log_progress
    from rotator.statedir import ensure_writable

    ensure_writable(engine.state_dir)

    started = time.time()
    json_logs = obj.settings.log_format == "json"  # stderr carries JSON lines only
    with (
        stop_on_signals(engine.stopping) as caught,
        ProgressView(enabled=output == "text" and not json_logs) as view,
    ):
        results = engine.apply(
            names,
            force=force,
            wait=wait,
            parallel=parallel,
            progress=log_progress if json_logs else view.update,
            wait_timeout=wait_timeout,
            lock_timeout=lock_timeout,
        )
    windows = {r.key: _window(engine, r.key, r.steps) for r in results}
    if output == "json":
        _emit([{**r.as_dict(), "until": _rfc3339(r.until), "window_s": windows[r.key]} for r in results])
    else:
        for r in results:
            click.echo(f"{r.key}: {r.outcome} ({r.phase}): {r.message}")
            if windows[r.key] is not None:
                click.echo(f"{r.key}: cutover window {windows[r.key]:.3f}s (consumers could hold a dead key)")
    if pushgateway:
        from rotator.metrics import Metrics

        metrics = Metrics()
        metrics.observe_results(engine, results, started=started)
        try:
            metrics.push(pushgateway)
        except RotatorError as exc:  # metrics are a report: they never change the outcome
            click.echo(redact(f"rotator: warning: {exc}"), err=True)
    from rotator.notify import notify

    notify(engine, results)
    if caught.signum is not None:
        click.echo(
            f"rotator: {caught.name}: stopped after the step in hand and released the lease; "
            f"the rotation goes on: resume with `rotator apply {' '.join(names)} --wait`",
            err=True,
        )
        sys.exit(caught.exit_code)
    _exit_for(results, busy_exit=busy_exit)


def _exit_for(results: Sequence[Any], *, busy_exit: bool) -> NoReturn:
    """The pass's exit code: failed, then held, then (for rotate and emergency) busy."""
    if any(r.outcome == "failed" for r in results):
        sys.exit(EXIT_FAILED)
    if any(r.outcome == "held" for r in results):
        sys.exit(EXIT_HELD)
    busy = [r.key for r in results if r.outcome == "busy"]
    if busy_exit and busy:
        click.echo(
            f"rotator: the lease of {', '.join(busy)} is held by another runner; nothing was done "
            "(wait for it with --lock-timeout DURATION)",
            err=True,
        )
        sys.exit(EXIT_BUSY)
    sys.exit(EXIT_OK)


_wait = click.option(
    "--wait", is_flag=True, help="Keep polling through drain waits until every key is at rest."
)
_wait_timeout = click.option(
    "--wait-timeout",
    callback=_duration,
    metavar="DURATION",
    help="With --wait: stop waiting after this long and exit as waiting (0); the rotation goes "
    "on with the next pass. Default: the key's verify.timeout plus 10m.",
)
_lock_timeout = click.option(
    "--lock-timeout",
    callback=_duration,
    metavar="DURATION",
    default="0s",
    show_default=True,
    help="How long to wait for the key's lease while another runner holds it; exit 4 if it is "
    "still held then.",
)
_output = click.option("--output", type=click.Choice(["text", "json"]), default="text")
_pushgateway = click.option(
    "--pushgateway", metavar="URL", help="After the pass, push its metrics to this Prometheus Pushgateway."
)


@cli.command()
@click.argument("keys", nargs=-1, shell_complete=complete_keys)
@_wait
@_wait_timeout
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.option("--parallel", type=click.IntRange(1, 64), help="Keys reconciled at once.")
@_output
@_pushgateway
@_shard
@click.pass_obj
def apply(
    obj: Context,
    keys: tuple[str, ...],
    wait: bool,
    wait_timeout: timedelta | None,
    dry_run: bool,
    parallel: int | None,
    output: str,
    pushgateway: str | None,
    shard: Shard | None,
) -> None:
    """One reconcile pass. Exit 0 ok or waiting, 1 a key failed, 3 a key is held.

    A key whose lease another runner holds is reported busy and skipped, without failing
    the pass (exit 0); `rotate` exits 4 instead. Ctrl-C or SIGTERM finishes the step in
    hand, releases the lease and exits 130 (143).
    """
    _run(
        obj,
        keys,
        force=False,
        wait=wait,
        wait_timeout=wait_timeout,
        dry_run=dry_run,
        parallel=parallel,
        output=output,
        pushgateway=pushgateway,
        shard=shard,
    )


@cli.command()
@click.argument("key", shell_complete=complete_keys)
@_wait
@_wait_timeout
@_lock_timeout
@_output
@_pushgateway
@click.pass_obj
def rotate(
    obj: Context,
    key: str,
    wait: bool,
    wait_timeout: timedelta | None,
    lock_timeout: timedelta,
    output: str,
    pushgateway: str | None,
) -> None:
    """Start a rotation of KEY now, due or not. Exit codes as apply, and 4 when another
    runner holds KEY's lease (after --lock-timeout)."""
    _run(
        obj,
        [key],
        force=True,
        wait=wait,
        wait_timeout=wait_timeout,
        lock_timeout=lock_timeout,
        busy_exit=True,
        dry_run=False,
        parallel=1,
        output=output,
        pushgateway=pushgateway,
    )


@cli.command()
@click.argument("key", shell_complete=complete_keys)
@click.argument("key_id")
@click.pass_obj
def reactivate(obj: Context, key: str, key_id: str) -> None:
    """Make KEY_ID, a deactivated old key of KEY, active again (e.g. a consumer broke).

    Only for issuers that deactivate before deleting (aws_iam). The next pass drains it
    again: it stays active while used, and KEY is held at the drain timeout.
    """
    engine = obj.engine()
    _keys(engine.spec, [key])
    from rotator.abc import Reactivating
    from rotator.engine.model import Reactivate

    if not isinstance(engine.issuer(key), Reactivating):
        raise RotatorError(
            f"issuer {engine.spec.keys[key].issuer} cannot reactivate a key: its revoke is final"
        )
    from rotator.statedir import ensure_writable

    ensure_writable(engine.state_dir)
    with engine.lease.acquire(key) as lease:
        restored = engine.act(key, Reactivate(key_id), lease=lease).key
    click.echo(f"{key}: {restored.id if restored else key_id} is active again")


@cli.command()
@click.argument("key", required=False, shell_complete=complete_keys)
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 0 at rest or waiting, 1 a key failed, 3 a key is held."
)
@_output
@click.pass_obj
def status(obj: Context, key: str | None, detailed_exitcode: bool, output: str) -> None:
    """Phase, ages, key prefixes and fingerprints, whether targets are in sync, what was
    written to each write-only target and where each consumer stands (rolled, pending,
    failed) for the key's attempt."""
    from rotator.engine.decide import decide
    from rotator.engine.status import describe, key_format_check, recent_entries

    engine = obj.engine()
    rows = []
    for name in _keys(engine.spec, [key] if key else []):
        try:
            obs = engine.observe(name)
            issuer = engine.issuer(name)
            rows.append(
                describe(
                    obs,
                    decide(obs),
                    is_key=key_format_check(issuer.matches, obs.capabilities.prefix_len),
                    last_reset=engine.journal.last(name, "reset"),
                    journal=recent_entries(engine.journal, obs),
                )
            )
        except RotatorError as exc:
            rows.append(
                {
                    "key": name,
                    "phase": "failed",
                    "next": "fail",
                    "reason": str(exc),
                    "targets": [],
                    "write_only": [],
                    "consumers": [],
                }
            )
    if output == "json":
        _emit(rows)
    else:
        for row in rows:
            _show_status(row)
    if detailed_exitcode:
        if any(r["phase"] == "failed" or r["next"] == "fail" for r in rows):
            sys.exit(EXIT_FAILED)
        if any(r["phase"] == "held" or r["next"] == "hold" for r in rows):
            sys.exit(EXIT_HELD)


def _show_status(row: dict[str, Any]) -> None:
    from datetime import timedelta

    from rotator.spec import format_duration

    def shown(prefix: str | None, truncated: bool) -> str:
        return "" if prefix is None else prefix + ("…" if truncated else "") + " "

    click.echo(f"{row['key']}: {row['phase']} - {row['reason']}")
    for k in row.get("vendor_keys", []):
        used = k["last_used_at"] or "never"
        age = format_duration(timedelta(seconds=k["age_s"]))
        prefix = shown(k["prefix"], k["truncated"])
        click.echo(f"  vendor  {k['id']} {prefix}{k['status']}, age {age}, last used {used}")
    for t in row["targets"]:
        if t["error"]:
            click.echo(f"  target  {t['name']}: ERROR {t['error']}")
            continue
        cur, pen = t.get("current"), t.get("pending")
        now = f"{shown(cur['prefix'], cur['truncated'])}fp {cur['fingerprint']}" if cur else "empty"
        now += " BROKEN (the vendor rejects it)" if cur and cur.get("broken") else ""
        extra = f", pending {shown(pen['prefix'], pen['truncated'])}fp {pen['fingerprint']}" if pen else ""
        click.echo(f"  target  {t['name']}: {now}{extra}")
    for w in row.get("write_only", []):
        click.echo(f"  target  {w['name']} (write-only): {_written(w)}")
    for c in row.get("consumers", []):
        click.echo(f"  consumer  {c['name']}: {_rolled(c)}")
    if row.get("lagging"):
        click.echo(f"  lagging: {', '.join(row['lagging'])}")
    cutover = row.get("last_cutover")
    if cutover and cutover.get("window_s") is not None:
        click.echo(
            f"  cutover window {cutover['window_s']:.3f}s at the last reset ({cutover['reset_at']}): "
            "consumers could hold a dead key this long"
        )


def _written(w: dict[str, Any]) -> str:
    """A write-only target's line: what the journal shows written there, and when."""
    p = w["published"]
    if p is None:
        return "nothing written on record"
    at = f" at {p['at']}" if p["at"] else ""
    return f"fp {p['fingerprint']} written{at}" + ("" if w["current"] else ", not the current key")


def _rolled(c: dict[str, Any]) -> str:
    """A consumer's line: its state for the key's attempt."""
    if c["state"] == "rolled":
        return f"rolled at {c['rolled_at']}"
    if c["state"] == "failed":  # the journalled error starts with the consumer's name
        return f"FAILED {str(c['error']).removeprefix(c['name'] + ': ')}"
    if c["state"] == "unrecorded":
        return "no roll on record (past verify.timeout: not rolled on a guess)"
    return str(c["state"])


@cli.command()
@click.argument("key", shell_complete=complete_keys)
@click.option("--reason", required=True, help="Why: recorded in the journal and the incident report.")
@click.option(
    "--leaked-since",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]),
    metavar="TIME",
    help="Start of the exposure window to audit, RFC 3339 UTC (default: the key's promotion time).",
)
@click.option(
    "--keep-serving",
    is_flag=True,
    help="Mint and roll out first, revoke seconds later: a short exposure instead of an outage.",
)
@click.option("--key-id", help="The vendor id of the leaked key, when more than one is active.")
@_lock_timeout
@_output
@click.pass_obj
def emergency(
    obj: Context,
    key: str,
    reason: str,
    leaked_since: datetime | None,
    keep_serving: bool,
    key_id: str | None,
    lock_timeout: timedelta,
    output: str,
) -> None:
    """After a leak: revoke KEY's current vendor key now, mint, roll out, audit.

    The leaked key is revoked first, as the vendors' leak procedure orders (unless
    --keep-serving, or the key is an issuer's own management key, which must mint its
    successor before it can revoke itself). The vendor's trace chain is then verified for
    the exposure window and an incident report is written to state_dir/incidents/.
    Exit codes as apply, and 4 when another runner holds KEY's lease (after --lock-timeout).
    """
    from rotator.emergency import run_emergency
    from rotator.statedir import ensure_writable

    engine = obj.engine()
    _keys(engine.spec, [key])
    ensure_writable(engine.state_dir)
    since = leaked_since.replace(tzinfo=leaked_since.tzinfo or UTC) if leaked_since else None
    report = run_emergency(
        engine,
        key,
        reason=reason,
        leaked_since=since,
        keep_serving=keep_serving,
        key_id=key_id,
        started=STARTED,
        lock_timeout=lock_timeout,
        warn=lambda line: click.echo(redact(f"rotator: warning: {line}"), err=True),
    )
    from rotator.notify import notify

    notify(engine, [], emergency=report)
    if output == "json":
        _emit(asdict(report))
    else:
        click.echo(
            f"{key}: leaked key {report.leaked_key_id} ({report.leaked_prefix}…) revoked "
            f"{report.time_to_revoke_s}s after the command started ({report.order})"
        )
        if report.new_key_id:
            click.echo(
                f"{key}: new key {report.new_key_id} ({report.new_prefix}…) current in "
                f"{len(report.targets)} target(s)"
            )
        if report.consumers_rolled:
            click.echo(
                f"{key}: {len(report.consumers_rolled)} consumer(s) rolled; outage "
                f"{report.outage_s}s from the revoke to the last roll"
            )
        if report.chain_valid is not None:
            click.echo(
                f"{key}: trace chain {'valid' if report.chain_valid else 'BROKEN'} "
                f"({report.chain_checked} checked); {report.leaked_key_traces} traces under "
                f"the leaked key since {report.leaked_since}"
            )
        click.echo(f"{key}: {report.outcome}: {report.message}; report {report.report_path}")
    codes = {"failed": EXIT_FAILED, "held": EXIT_HELD}
    sys.exit(codes.get(report.outcome, EXIT_OK))


@cli.command()
@click.argument("keys", nargs=-1)
@click.option(
    "--output",
    type=click.Choice(["table", "json", "csv", "html"]),
    default="table",
    show_default=True,
    help="html: one self-contained page with a chart of key ages against max_age.",
)
@click.option("--out", "out", type=click.Path(path_type=Path), help="Write to this file, not stdout.")
@click.pass_obj
def report(obj: Context, keys: tuple[str, ...], output: str, out: Path | None) -> None:
    """The compliance report: per key its issuer, age against max_age, last rotation, last
    emergency, phase and the journal entries that prove each rotation."""
    from rotator.report import build, render

    engine = obj.engine()
    text = render(build(engine, _keys(engine.spec, keys)), output)
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RotatorError(f"{out}: cannot write the report ({exc.strerror})") from None
    click.echo(f"report written to {out}")


@cli.group()
def audit() -> None:
    """The audit journal (hash-chained JSON lines in state_dir)."""


@audit.command("verify")
@click.pass_obj
def audit_verify(obj: Context) -> None:
    """Check the journal's hash chain. Exit 0 intact, 1 broken."""
    from rotator.audit import Journal

    spec = obj.load()
    state_dir = obj.settings.state_dir or Path(spec.state_dir)
    if not state_dir.is_absolute():
        state_dir = obj.file.resolve().parent / state_dir
    result = Journal(state_dir).verify()
    if result.ok:
        click.echo(f"journal intact: {result.checked} entries")
        return
    where = f" at line {result.first_bad}" if result.first_bad else ""
    raise RotatorError(f"journal broken{where}: {result.reason}")


@cli.command()
@click.option("--drain", default="3s", show_default=True, help="Drain period of the demo rotation.")
@click.option(
    "--keep",
    type=click.Path(path_type=Path),
    help="Run in this directory and keep it (default: a temporary one).",
)
def sandbox(drain: str, keep: Path | None) -> None:
    """The embedded demo: an emulated vendor, a file store, a service that reads its key once
    at start, a command consumer that restarts it, and one full overlap rotation (mint, stage,
    promote, roll, drain, revoke), with a summary at the end."""
    from rotator.sandbox.demo import run_demo

    sys.exit(run_demo(drain=drain, directory=keep))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of /metrics and /healthz.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=9464,
    show_default=True,
    help="Port of /metrics and /healthz (0: any free port, logged at start).",
)
@click.option(
    "--tick",
    default="30s",
    show_default=True,
    help="How often keys in flight (staged, draining, failed) get a pass.",
)
@click.option(
    "--check-interval",
    default="1h",
    show_default=True,
    envvar="ROTATOR_CHECK_INTERVAL",
    help="How often a key without a schedule is checked against its max_age.",
)
@_shard
@click.pass_obj
def serve(obj: Context, host: str, port: int, tick: str, check_interval: str, shard: Shard | None) -> None:
    """Run as a daemon: each key's pass on its cron schedule (or every --check-interval),
    keys in flight every --tick, /metrics and /healthz over HTTP. SIGHUP reloads the
    rotation file; SIGTERM finishes the step in hand and exits 0. With a shard, only its keys."""
    from rotator.scheduler import run
    from rotator.statedir import ensure_writable

    ensure_writable(obj.engine().state_dir)  # every pass journals: refuse to start without it
    sys.exit(
        run(
            obj.file,
            settings=obj.settings,
            host=host,
            port=port,
            tick=tick,
            check_interval=check_interval,
            shard=shard,
        )
    )


@cli.command()
@click.option("--builtin", is_flag=True, help="Only rotator's own issuers and stores, not plugins'.")
def schema(builtin: bool) -> None:
    """Print the rotation file's JSON Schema, for editors (yaml-language-server and others),
    with the models of every installed plugin.

    The copy in the repository is regenerated with
    `rotator schema --builtin > schema/rotations.schema.json`.
    """
    from rotator.schema import render

    click.echo(render(builtin=builtin), nl=False)


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL: commands, options and the rotation file's key names.

    bash: `eval "$(rotator completion bash)"` in ~/.bashrc; zsh: the same in ~/.zshrc;
    fish: `rotator completion fish > ~/.config/fish/completions/rotator.fish`.
    """
    from rotator.completion import script

    click.echo(script(cli, shell))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: every error is one line on stderr, ``rotator: error: ...``, printed once
    (with --debug, after the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Terraform's contract: with --detailed-exitcode, 2 means "steps pending", so errors are 1.
    detailed_plan = _command(args) == "plan" and "--detailed-exitcode" in args
    try:
        cli.main(args=args, prog_name="rotator", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: click's exit code (2), our format
        if isinstance(exc, _HELP):  # `rotator` or `rotator audit` alone: the help, not an error
            exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(None, False, EXIT_FAILED if detailed_plan else exc.exit_code, exc.format_message() + hint)
    except click.exceptions.Abort:
        _fail(None, False, 130, "aborted")
    except ConfigError as exc:
        _fail(exc, _debug(args), EXIT_FAILED if detailed_plan else EXIT_INVALID)
    except LeaseBusy as exc:
        _fail(exc, _debug(args), EXIT_BUSY)
    except RotatorError as exc:
        _fail(exc, _debug(args), EXIT_FAILED)
    except OSError as exc:  # the state directory or a file target cannot be written or read
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(exc, _debug(args), EXIT_FAILED, f"{where}{exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - the one place that turns any error into one line
        _fail(exc, _debug(args), EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc}")


_HELP: tuple[type[Exception], ...] = tuple(
    getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",) if hasattr(click.exceptions, name)
)
"""click (8.2+) raises this for a group called without a command; it carries the help text."""


def _command(args: Sequence[str]) -> str | None:
    """The subcommand named in ``args``: the first word after the group's own options."""
    rest = iter(args)
    for arg in rest:
        if arg in ("-f", "--file"):
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _debug(args: Sequence[str]) -> bool:
    if "--debug" in args:
        return True
    try:
        return load_settings().debug
    except ConfigError:
        return False


def _fail(exc: BaseException | None, debug: bool, code: int, message: str | None = None) -> NoReturn:
    if debug and exc is not None:
        click.echo(redact("".join(traceback.format_exception(exc))), err=True)
    text = str(exc) if message is None else message
    if not (isinstance(exc, ConfigError) and exc.problems):  # a file's problems: one per line
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    click.echo(redact(f"rotator: error: {text}"), err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
