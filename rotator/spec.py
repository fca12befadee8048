"""The rotation file (pydantic models) and the process settings (pydantic-settings).

The file is the user's interface and stays stable; see README.md for its shape.
Every error names the field path and the YAML line it came from.
"""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from rotator.errors import ConfigError
from rotator.net import tls_problem
from rotator.yamldoc import DocumentError, Lines, collector_paused, read_document

# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=3650)
"""The longest duration a rotation file may give (ten years); beyond it is a typo."""


def _bounded(seconds: float, value: object) -> timedelta:
    if math.isnan(seconds):
        raise ValueError("a duration like 15m, 24h or 30d")
    if seconds > MAX_DURATION.total_seconds():
        shown = value if isinstance(value, int | float) else repr(value)
        raise ValueError(f"{shown} is longer than the 3650d (10 years) a duration may be")
    return timedelta(seconds=seconds)


def parse_duration(value: object) -> timedelta:
    """``15m``, ``2h30m``, ``30d``, ``500ms`` or a number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration like 15m, 24h or 30d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _bounded(value, value)
    if not isinstance(value, str):
        raise ValueError("a duration like 15m, 24h or 30d")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"{value!r} is not a duration like 15m, 24h or 30d")
    return _bounded(total, value)


def format_duration(value: timedelta) -> str:
    """Shortest unit spelling of a timedelta: ``90s`` -> ``1m30s``."""
    seconds = value.total_seconds()
    if seconds < 1 and seconds:
        return f"{round(seconds * 1000)}ms"
    out, rest = [], int(seconds)
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        assert isinstance(size, int)
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- names and text

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
"""A key or issuer name: it is printed on its own line by plan, status and the journal (and
kept in an IAM tag for aws_iam keys, which takes these characters too)."""

UNSAFE_CHARS = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
SAFE_TEXT_PATTERN = f"^[^{UNSAFE_CHARS}]*$"
Text = Annotated[str, Field(pattern=SAFE_TEXT_PATTERN)]
"""A path, an id or a URL that ends up in output: no control or bidirectional-override characters."""


def _require_tls(url: str) -> str:
    problem = tls_problem(url)
    if problem:
        raise ValueError(problem)
    return url


Url = Annotated[str, Field(min_length=1, pattern=SAFE_TEXT_PATTERN), AfterValidator(_require_tls)]
"""An endpoint: https, or plain http to a loopback address only (the rule in rotator.net)."""

_PATTERN_MESSAGES = {
    NAME_PATTERN: "a name is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    SAFE_TEXT_PATTERN: "control characters and bidirectional overrides are not allowed",
}


# --------------------------------------------------------------------------- credentials


class EnvRef(_Model):
    """A value taken from an environment variable of the rotator's process."""

    env: str = Field(min_length=1)


class KeyRef(_Model):
    """A value taken from another declared key's current version (the rotator's own key)."""

    key: Name


Credential = EnvRef | KeyRef


# --------------------------------------------------------------------------- policy


class VerifyPolicy(_Model):
    """How long to wait for consumers to leave the old key, and what to do if they don't."""

    drain: Duration = timedelta(minutes=15)
    """The old key must stay unused this long after the propagation budget."""
    propagation: Duration = timedelta(minutes=2)
    """Time consumers may take to pick up the new value after promotion."""
    timeout: Duration = timedelta(hours=24)
    """After this long since promotion without a drain, the key is held."""
    on_timeout: Literal["hold", "revoke"] = "hold"
    require_new_traffic: bool = False
    """Also require the new key to have been used since promotion."""


class Defaults(_Model):
    max_age: Duration = timedelta(days=30)
    verify: VerifyPolicy = VerifyPolicy()


# --------------------------------------------------------------------------- issuers


class AdjudonIssuerSpec(_Model):
    type: Literal["adjudon"]
    base_url: Url = "https://api.adjudon.com"
    credential: Credential
    timeout: Duration = timedelta(seconds=10)


class AdjutorIssuerSpec(_Model):
    type: Literal["adjutor"]
    base_url: Url = "https://adjutor.lendsqr.com"
    app_id: Text = Field(min_length=1)
    timeout: Duration = timedelta(seconds=10)


class AwsIamIssuerSpec(_Model):
    """The access keys of one IAM user. AWS credentials from the default chain, a profile
    or a role; never from the rotation file."""

    type: Literal["aws_iam"]
    user_name: str = Field(pattern=r"^[A-Za-z0-9_+=,.@-]{1,64}$")
    region: Text | None = None
    profile: Text | None = None
    role_arn: Text | None = None
    endpoint_url: Url | None = None
    """Serves IAM and STS alike (a local emulator)."""
    timeout: Duration = timedelta(seconds=10)
    delete_after: Duration = timedelta(days=7)
    """A deactivated key is deleted this long after; until then ``rotator reactivate`` restores it."""


IssuerSpec = Annotated[AdjudonIssuerSpec | AdjutorIssuerSpec | AwsIamIssuerSpec, Field(discriminator="type")]


# --------------------------------------------------------------------------- targets


class FileTarget(_Model):
    """A local file: ``raw`` (the key alone), ``dotenv`` or ``json`` with a ``field``."""

    type: Literal["file"]
    path: Text = Field(min_length=1)
    format: Literal["raw", "dotenv", "json"] = "raw"
    field: Text | None = None

    @model_validator(mode="after")
    def _field_needs_map(self) -> FileTarget:
        if self.format == "raw" and self.field is not None:
            raise ValueError("field needs format dotenv or json")
        if self.format != "raw" and self.field is None:
            raise ValueError(f"format {self.format} needs a field")
        return self


class AwsTarget(_Model):
    """AWS Secrets Manager. Credentials from the default chain, a profile or a role."""

    type: Literal["aws"]
    secret_id: Text = Field(min_length=1)
    region: Text | None = None
    field: Text | None = None
    profile: Text | None = None
    role_arn: Text | None = None
    endpoint_url: Url | None = None
    kms_key_id: Text | None = None


class VaultAuth(_Model):
    """How to log in to Vault. ``token`` reads ``VAULT_TOKEN`` (or ``token_env``)."""

    method: Literal["token", "approle", "kubernetes"] = "token"
    mount: str | None = None
    token_env: str = "VAULT_TOKEN"  # noqa: S105 - the name of a variable, not a token
    role_id_env: str = "VAULT_ROLE_ID"
    secret_id_env: str = "VAULT_SECRET_ID"  # noqa: S105 - a variable name
    role: str | None = None
    jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class VaultTarget(_Model):
    """HashiCorp Vault or OpenBao, KV version 2."""

    type: Literal["vault"]
    url: Url
    mount: Text = "secret"
    path: Text = Field(min_length=1)
    field: Text = "value"
    namespace: Text | None = None
    auth: VaultAuth = VaultAuth()


class GcpTarget(_Model):
    """GCP Secret Manager. Credentials from application default credentials."""

    type: Literal["gcp"]
    project: Text = Field(min_length=1)
    secret: Text = Field(min_length=1)
    field: Text | None = None
    endpoint: Text | None = None
    consumers_read: Literal["latest", "alias"] = "latest"
    """What consumers read: the ``latest`` version, or the ``current_alias``."""
    current_alias: Text = "current"
    pending_alias: Text = "pending"


TargetSpec = Annotated[FileTarget | AwsTarget | VaultTarget | GcpTarget, Field(discriminator="type")]


# --------------------------------------------------------------------------- keys


CRON_FIELDS = r"^\s*\S+(\s+\S+){4}\s*$"
"""The shape of a cron expression (five fields), for the JSON Schema; validation parses it."""


class KeySpec(_Model):
    issuer: Name
    kind: Literal["workspace", "agent"] | None = None
    agent_id: Text | None = None
    schedule: str | None = Field(default=None, json_schema_extra={"pattern": CRON_FIELDS})
    """A 5-field cron expression (UTC); max_age alone also makes a key due."""
    strategy: Literal["overlap", "cutover"] | None = None
    max_age: Duration | None = None
    verify: VerifyPolicy | None = None
    bootstrap: EnvRef | None = None
    targets: list[TargetSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _agent_needs_id(self) -> KeySpec:
        if self.kind == "agent" and not self.agent_id:
            raise ValueError("kind agent needs an agent_id")
        if self.kind != "agent" and self.agent_id:
            raise ValueError("agent_id is only for kind agent")
        return self


# --------------------------------------------------------------------------- notifications

NotifyEvent = Literal["held", "failed", "emergency", "completed", "overdue"]


def _no_inline_url(value: object) -> object:
    if isinstance(value, str):
        raise ValueError(
            "an inline URL is not allowed (it would put a webhook's secret in the file): "
            "use {env: NAME} or {key: NAME}"
        )
    return value


class NotifySpec(_Model):
    """Where to tell people what happened (an Apprise URL), and about which events and keys."""

    url: Annotated[Credential, BeforeValidator(_no_inline_url)]
    """The Apprise URL, from the environment or a declared key: never inline."""
    on: list[NotifyEvent] = Field(min_length=1)
    keys: list[str] | None = None
    """Only these keys (default: every key)."""

    @model_validator(mode="before")
    @classmethod
    def _on_is_a_word(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean true
        if isinstance(data, dict) and True in data and "on" not in data:
            return {("on" if k is True else k): v for k, v in data.items()}
        return data


# --------------------------------------------------------------------------- the file


class FileLeaseSpec(_Model):
    """A lock file per key in ``state_dir/locks`` (one machine, or a shared local disk)."""

    type: Literal["file"] = "file"


class DynamoDBLeaseSpec(_Model):
    """A lease per key in a DynamoDB table: holds across machines (CronJob, Lambda, people)."""

    type: Literal["dynamodb"]
    table: Text = Field(min_length=3)
    region: Text | None = None
    endpoint_url: Url | None = None
    ttl: Duration = timedelta(minutes=5)
    """A lease not renewed for this long is taken over (its holder is presumed dead)."""


LeaseSpec = Annotated[FileLeaseSpec | DynamoDBLeaseSpec, Field(discriminator="type")]


class RotationFile(_Model):
    version: Literal[1]
    state_dir: Text = ".rotator"
    lease: LeaseSpec = FileLeaseSpec()
    defaults: Defaults = Defaults()
    issuers: dict[Name, IssuerSpec] = Field(min_length=1)
    keys: dict[Name, KeySpec] = Field(min_length=1)
    notify: list[NotifySpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> RotationFile:
        if not (info.context or {}).get("defer_references"):
            for path, message in self.reference_problems():
                raise ValueError(f"{'.'.join(path)}: {message}")
        return self

    def reference_problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Problems that span sections (a key naming an undeclared issuer, ...), each with the
        path of the field at fault, so the loader can point at its line."""
        out: list[tuple[tuple[str, ...], str]] = []
        iam_keys: dict[str, str] = {}
        crons: dict[str, str | None] = {}  # keys of a fleet share a few schedules: check each once
        for name, key in self.keys.items():
            if key.issuer not in self.issuers:
                known = ", ".join(sorted(self.issuers))
                out.append((("keys", name, "issuer"), f"unknown issuer {key.issuer!r} (declared: {known})"))
                continue
            issuer = self.issuers[key.issuer]
            if isinstance(issuer, AdjutorIssuerSpec):
                if key.strategy == "overlap":
                    out.append(
                        (
                            ("keys", name, "strategy"),
                            "overlap is impossible on a reset-only vendor (adjutor); use cutover",
                        )
                    )
                if key.kind is not None:
                    out.append((("keys", name, "kind"), "adjutor keys have no kind"))
            if isinstance(issuer, AwsIamIssuerSpec):
                out += _aws_iam_key_problems(name, key, iam_keys.setdefault(key.issuer, name))
            if key.schedule is not None:
                if key.schedule not in crons:
                    try:
                        _check_cron(key.schedule)
                        crons[key.schedule] = None
                    except ValueError as exc:
                        crons[key.schedule] = str(exc)
                if (problem := crons[key.schedule]) is not None:
                    out.append((("keys", name, "schedule"), problem))
        out += self._hold_problems()
        for name, issuer in self.issuers.items():
            if isinstance(issuer, AdjudonIssuerSpec) and isinstance(issuer.credential, KeyRef):
                ref = issuer.credential.key
                if ref not in self.keys:
                    out.append((("issuers", name, "credential", "key"), f"no key named {ref!r} is declared"))
        out += _notify_problems(self)
        return out

    def _hold_problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Verify policies (as each key gets them) whose timeout ends before the drain can."""
        out: list[tuple[tuple[str, ...], str]] = []
        uses_defaults = False
        for name, key in self.keys.items():
            if key.verify is None:
                uses_defaults = True
            elif problem := _hold_guaranteed(key.verify):
                out.append((("keys", name, "verify", "timeout"), problem))
        if uses_defaults and (problem := _hold_guaranteed(self.defaults.verify)):
            out.append((("defaults", "verify", "timeout"), problem))
        return out

    def strategy(self, key: str) -> Literal["overlap", "cutover"]:
        """The strategy a key uses: cutover is forced for reset-only vendors."""
        spec = self.keys[key]
        if isinstance(self.issuers[spec.issuer], AdjutorIssuerSpec):
            return "cutover"
        return spec.strategy or "overlap"

    def max_age(self, key: str) -> timedelta:
        return self.keys[key].max_age or self.defaults.max_age

    def verify(self, key: str) -> VerifyPolicy:
        return self.keys[key].verify or self.defaults.verify


def _notify_problems(spec: RotationFile) -> list[tuple[tuple[str, ...], str]]:
    out: list[tuple[tuple[str, ...], str]] = []
    for i, entry in enumerate(spec.notify):
        if isinstance(entry.url, KeyRef) and entry.url.key not in spec.keys:
            out.append((("notify", str(i), "url", "key"), f"no key named {entry.url.key!r} is declared"))
        for j, name in enumerate(entry.keys or ()):
            if name not in spec.keys:
                out.append((("notify", str(i), "keys", str(j)), f"no key named {name!r} is declared"))
    return out


def _hold_guaranteed(policy: VerifyPolicy) -> str | None:
    needed = policy.propagation + policy.drain
    if policy.timeout >= needed:
        return None
    return (
        f"timeout {format_duration(policy.timeout)} is shorter than propagation "
        f"{format_duration(policy.propagation)} + drain {format_duration(policy.drain)}: every rotation "
        f"would be held; make it at least {format_duration(needed)}"
    )


def _aws_iam_key_problems(name: str, key: KeySpec, first: str) -> list[tuple[tuple[str, ...], str]]:
    out: list[tuple[tuple[str, ...], str]] = []
    if key.kind is not None:
        out.append((("keys", name, "kind"), "aws_iam keys have no kind"))
    if key.strategy == "cutover":
        out.append(
            (("keys", name, "strategy"), "aws_iam keys rotate with overlap (two access keys per user)")
        )
    if first != name:
        out.append(
            (
                ("keys", name, "issuer"),
                f"issuer {key.issuer!r} already serves key {first!r}; "
                "an aws_iam issuer is one IAM user, whose keys are one key",
            )
        )
    return out


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_weekdays(field: str) -> str:
    """Standard cron's day-of-week field (0 or 7 = Sunday) spelled with names.

    APScheduler 3 reads numeric weekdays with 0 = Monday, so ``0 3 * * 0`` would fire on
    Mondays; names mean the same to both.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            lo, hi = 0, 6
        else:
            first, _, last = span.partition("-")
            lo = _weekday(first)
            hi = _weekday(last) if last else (6 if step_text else lo)
            if last and last.strip() == "7":
                hi = 7
        if step < 1 or hi < lo:
            raise ValueError(f"bad day-of-week {part!r}")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


def _weekday(text: str) -> int:
    text = text.strip()
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7 if text != "7" else 0
    if text[:3] in _WEEKDAYS:
        return _WEEKDAYS.index(text[:3])
    raise ValueError(f"bad day-of-week {text!r}")


def cron_trigger(expr: str) -> Any:
    """An APScheduler ``CronTrigger`` (UTC) for a standard 5-field cron expression."""
    from apscheduler.triggers.cron import CronTrigger  # only files with a schedule pay for it

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=_cron_weekdays(weekday), timezone="UTC"
    )


def _check_cron(expr: str) -> None:
    from datetime import UTC, datetime

    try:
        trigger = cron_trigger(expr)
    except ValueError as exc:
        raise ValueError(f"{expr!r} is not a 5-field cron expression ({exc})") from None
    # "0 0 31 2 *" parses, then never fires: the key would silently rotate on max_age alone
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError(f"{expr!r} never fires (no date matches it)")


# --------------------------------------------------------------------------- loading


MAX_FILE_MIB = 1
"""Rotation files larger than this many MiB are refused unless ``ROTATOR_MAX_FILE_MIB`` raises it."""
MAX_FILE_MIB_LIMIT = 64
MAX_FILE_ENV = "ROTATOR_MAX_FILE_MIB"


def max_file_bytes() -> int:
    """The size cap of a rotation file, in bytes (``ROTATOR_MAX_FILE_MIB``, default 1 MiB)."""
    raw = os.environ.get(MAX_FILE_ENV, "").strip()
    if not raw:
        return MAX_FILE_MIB << 20
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_FILE_MIB_LIMIT:
        raise ConfigError(f"{MAX_FILE_ENV}: a whole number of MiB from 1 to {MAX_FILE_MIB_LIMIT}")
    return int(raw) << 20


def too_large(source: str, size: int, cap: int) -> ConfigError:
    return ConfigError(
        f"{source}: the rotation file is {size} bytes, over the {cap >> 20} MiB cap "
        f"(set {MAX_FILE_ENV} to raise it)"
    )


def _nearest_line(lines: Lines, loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        found = lines.get(tuple(str(p) if isinstance(p, str) else p for p in loc[:end]))
        if found is not None:
            return found
    return None


def _describe(err: ErrorDetails, lines: Lines, source: str) -> str:
    # pydantic puts the discriminator tag ("file", "aws"...) into loc for union members: drop it
    # and "[key]" for a mapping key that is refused (a name): the key itself says which
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p in _TAGS or p == "[key]")))
    path = ".".join(_shown(p) for p in loc) or "(top level)"
    where = _where(lines, loc, source)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "string_pattern_mismatch":
        msg = _PATTERN_MESSAGES.get(str((err.get("ctx") or {}).get("pattern")), msg)
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}: {path}: {_printable(msg)}"


def _shown(part: object) -> str:
    """A part of a field path; a name outside the safe charset is quoted, escapes and all."""
    return str(part) if not isinstance(part, str) or _PLAIN.fullmatch(part) else repr(part)


_PLAIN = re.compile(r"[A-Za-z0-9._-]+")


def _printable(text: str) -> str:
    """``text`` with every non-printable character (newline, bidi override...) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


_TAGS = {"file", "aws", "vault", "gcp", "adjudon", "adjutor", "aws_iam", "dynamodb", "EnvRef", "KeyRef"}


def parse_rotation_file(text: str, source: str = "rotations.yaml") -> RotationFile:
    """Parse and validate a rotation file; every problem is listed with its line."""
    with collector_paused():  # the models of a large file are as many objects as its nodes
        return _parse(text, source)


def _parse(text: str, source: str) -> RotationFile:
    cap = max_file_bytes()
    if len(text) > cap // 4 and len(encoded := text.encode()) > cap:  # at most 4 bytes a character
        raise too_large(source, len(encoded), cap)
    try:
        data, lines = read_document(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {_printable(problem)}") from None
    except DocumentError as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise ConfigError(f"{where}: {exc.message}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the rotation file must be a mapping with version, issuers, keys")
    try:
        spec = RotationFile.model_validate(data, context={"defer_references": True})
    except ValidationError as exc:
        problems = [_describe(e, lines, source) for e in exc.errors()]
    else:
        problems = [
            f"{_where(lines, path, source)}: {'.'.join(path)}: {message}"
            for path, message in spec.reference_problems()
        ]
        if not problems:
            return spec
    if len(problems) == 1:
        raise ConfigError(problems[0], problems)
    raise ConfigError(f"{source}: {len(problems)} problems:\n  " + "\n  ".join(problems), problems)


def _where(lines: Lines, path: tuple[Any, ...], source: str) -> str:
    line = _nearest_line(lines, path)
    return f"{source}:{line}" if line else source


def load_rotation_file(path: Path) -> RotationFile:
    """Read ``path`` and parse it; a missing file is a ConfigError naming it."""
    cap = max_file_bytes()
    try:
        with path.open("rb") as stream:
            raw = stream.read(cap + 1)  # never more than the cap, whatever the file's size
            if len(raw) > cap:
                raise too_large(str(path), max(os.fstat(stream.fileno()).st_size, len(raw)), cap)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such rotation file (use -f or ROTATOR_FILE)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the rotation file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_rotation_file(text, str(path))


# --------------------------------------------------------------------------- settings


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Process settings, from ``ROTATOR_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="ROTATOR_", extra="ignore")

    file: Path = Path("rotations.yaml")
    """The rotation file, when ``-f`` is not given."""
    state_dir: Path | None = None
    """Overrides the file's ``state_dir``."""
    parallel: int = Field(default=4, ge=1, le=64)
    """Keys reconciled at once in one pass."""
    debug: bool = False
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"],
        BeforeValidator(_upper),  # ROTATOR_LOG_LEVEL=debug means DEBUG
    ] = "WARNING"
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line (for log pipelines)."""
    retry_attempts: int = Field(default=5, ge=1, le=20)
    retry_initial: float = Field(default=0.5, gt=0)
    retry_max_total: float = Field(default=120.0, gt=0)
    probe_timeout: float = Field(default=60.0, gt=0)
    """How long a new key may take to be accepted by the vendor (eventual consistency)."""


def load_settings() -> Settings:
    """The process settings; an invalid ``ROTATOR_*`` variable is a ConfigError naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        prefix = Settings.model_config.get("env_prefix", "")
        problems = []
        for e in exc.errors():
            name = prefix + "_".join(str(p) for p in e["loc"]).upper()
            problems.append(f"{name}: {e['msg']} (got {os.environ.get(name, e['input'])!r})")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None
