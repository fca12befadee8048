"""The rotation file's models: policies, keys, notifications, leases, the file itself, and the
two base classes plugins extend (:class:`IssuerModel`, :class:`TargetModel`).

The concrete issuers and stores are plugins (:mod:`rotator.plugins`); the ``issuers:`` and
``targets:`` unions are built from the registry when a file is loaded (:mod:`rotator.spec.loader`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from rotator.spec.cron import CRON_FIELDS, check_cron
from rotator.spec.durations import Duration, format_duration
from rotator.spec.types import Credential, EnvRef, KeyRef, Name, Text, Url, _Model

if TYPE_CHECKING:
    import httpx

    from rotator.abc import Consumer, Issuer, SecretStore, WriteOnlyTarget
    from rotator.secret import Secret
    from rotator.vendors._http import RetryPolicy

Strategy = Literal["overlap", "cutover"]
Problem = tuple[tuple[str, ...], str]
"""A problem found in a rotation file: the path of the field at fault, and what is wrong."""

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


# --------------------------------------------------------------------------- plugins


class IssuerModel(_Model):
    """The config model of an issuer plugin (a vendor). A plugin subclasses it with
    ``type: Literal["its-name"]`` and its own fields, and declares here what the engine and
    the validator ask of it; the defaults suit a vendor with overlapping keys whose requests
    authenticate through its own SDK."""

    type: str

    forced_strategy: ClassVar[Strategy | None] = None
    """The strategy every key of this issuer uses (a reset-only vendor forces ``cutover``)."""

    def management_credential(self, key: str) -> EnvRef | KeyRef | None:
        """Where the engine finds the credential the issuer's requests for ``key`` carry: an
        environment variable, a declared key's current value (``KeyRef(key=key)``: the key
        itself), or None when the issuer finds its own (an SDK's credential chain)."""
        return None

    def credential_key(self) -> str | None:
        """A declared key that is this issuer's management credential: it is rotated after
        the keys it manages, and must be declared."""
        return None

    def issuer_problems(self, name: str, keys: Collection[str]) -> list[Problem]:
        """Problems of this issuer's own declaration, given the declared key names."""
        return []

    def key_problems(self, name: str, key: KeySpec, issuer_keys: Sequence[str]) -> list[Problem]:
        """Problems of key ``name`` served by this issuer; ``issuer_keys`` are all the keys it
        serves, in file order."""
        return []

    def revoke_delay(self) -> timedelta | None:
        """For a two-step revoke: how long a deactivated key lives before it is deleted."""
        return None

    def make_issuer(
        self,
        key: KeySpec,
        *,
        credential: Callable[[], Secret],
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
    ) -> Issuer:
        """The factory: the issuer for ``key`` (named ``key.issuer``), bound to its scope.
        ``credential`` is called for every request (see :meth:`management_credential`)."""
        raise NotImplementedError(f"issuer type {self.type!r} has no factory")


class TargetModel(_Model):
    """The config model of a store plugin (one target of a key). A plugin subclasses it with
    ``type: Literal["its-name"]`` and its own fields.

    A readable store implements :meth:`open_store`; a write-only one (a CI secret, a function's
    environment) sets ``write_only = True`` and implements :meth:`open_write_only`."""

    type: str

    write_only: ClassVar[bool] = False
    """True for a target that cannot be read back: written after the readable ones, recorded in
    the journal."""

    def open_store(self, *, base_dir: Path) -> SecretStore:
        """The factory: the store for this target; relative paths resolve against ``base_dir``."""
        raise NotImplementedError(f"store type {self.type!r} has no factory")

    def open_write_only(self, *, base_dir: Path) -> WriteOnlyTarget:
        """The factory of a write-only target (``write_only = True``)."""
        raise NotImplementedError(f"store type {self.type!r} is not write-only")


class ConsumerModel(_Model):
    """The config model of a consumer plugin (something rolled after the new key is everywhere:
    a restart, a redeploy, a webhook). A plugin subclasses it with ``type: Literal["its-name"]``
    and its own fields."""

    type: str
    timeout: Duration = timedelta(minutes=10)
    """How long one roll may take (a rollout to complete, a hook to answer) before it fails."""

    def label(self) -> str:
        """The consumer's stable name in the journal, plan and status (never a secret: no query
        string, no environment values). The factory's consumer carries the same name."""
        return self.type

    def make_consumer(self, *, key: str, base_dir: Path) -> Consumer:
        """The factory: the consumer for key ``key``; relative paths resolve against ``base_dir``."""
        raise NotImplementedError(f"consumer type {self.type!r} has no factory")


# --------------------------------------------------------------------------- keys


class KeySpec(_Model):
    # built once its targets union is (the loader's subclass), not at import
    model_config = ConfigDict(defer_build=True)

    issuer: Name
    kind: Literal["workspace", "agent"] | None = None
    agent_id: Text | None = None
    schedule: str | None = Field(default=None, json_schema_extra={"pattern": CRON_FIELDS})
    """A 5-field cron expression (UTC); max_age alone also makes a key due."""
    strategy: Strategy | None = None
    max_age: Duration | None = None
    verify: VerifyPolicy | None = None
    bootstrap: EnvRef | None = None
    targets: list[TargetModel] = Field(min_length=1)
    consumers: list[ConsumerModel] = Field(default_factory=list)
    """Rolled in order, once per attempt, after the new key is current in every target."""

    @model_validator(mode="after")
    def _agent_needs_id(self) -> KeySpec:
        if self.kind == "agent" and not self.agent_id:
            raise ValueError("kind agent needs an agent_id")
        if self.kind != "agent" and self.agent_id:
            raise ValueError("agent_id is only for kind agent")
        return self

    @model_validator(mode="after")
    def _readable_and_distinct(self) -> KeySpec:
        if all(t.write_only for t in self.targets):
            kinds = ", ".join(sorted({t.type for t in self.targets}))
            raise ValueError(
                f"targets: every target is write-only ({kinds}); add one readable target "
                "(file, aws, vault, gcp, kubernetes...) that keeps the value: a write-only "
                "target cannot be read back after a crash"
            )
        seen: set[str] = set()
        for c in self.consumers:
            if (label := c.label()) in seen:
                raise ValueError(f"consumers: {label} is listed twice")
            seen.add(label)
        return self

    def readable_targets(self) -> list[TargetModel]:
        return [t for t in self.targets if not t.write_only]

    def write_only_targets(self) -> list[TargetModel]:
        return [t for t in self.targets if t.write_only]


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
    # built once its unions are (the loader's subclass), not at import
    model_config = ConfigDict(defer_build=True)

    version: Literal[1]
    state_dir: Text = ".rotator"
    lease: LeaseSpec = FileLeaseSpec()
    defaults: Defaults = Defaults()
    issuers: dict[Name, IssuerModel] = Field(min_length=1)
    keys: dict[Name, KeySpec] = Field(min_length=1)
    notify: list[NotifySpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> RotationFile:
        if not (info.context or {}).get("defer_references"):
            for path, message in self.reference_problems():
                raise ValueError(f"{'.'.join(path)}: {message}")
        return self

    def reference_problems(self) -> list[Problem]:
        """Problems that span sections (a key naming an undeclared issuer, ...), each with the
        path of the field at fault, so the loader can point at its line."""
        out: list[Problem] = []
        served: dict[str, list[str]] = {}
        for name, key in self.keys.items():
            served.setdefault(key.issuer, []).append(name)
        crons: dict[str, str | None] = {}  # keys of a fleet share a few schedules: check each once
        for name, key in self.keys.items():
            if key.issuer not in self.issuers:
                known = ", ".join(sorted(self.issuers))
                out.append((("keys", name, "issuer"), f"unknown issuer {key.issuer!r} (declared: {known})"))
                continue
            out += self.issuers[key.issuer].key_problems(name, key, served[key.issuer])
            if key.schedule is not None:
                if key.schedule not in crons:
                    try:
                        check_cron(key.schedule)
                        crons[key.schedule] = None
                    except ValueError as exc:
                        crons[key.schedule] = str(exc)
                if (problem := crons[key.schedule]) is not None:
                    out.append((("keys", name, "schedule"), problem))
        out += self._hold_problems()
        for name, issuer in self.issuers.items():
            out += issuer.issuer_problems(name, self.keys)
        out += _notify_problems(self)
        return out

    def _hold_problems(self) -> list[Problem]:
        """Verify policies (as each key gets them) whose timeout ends before the drain can."""
        out: list[Problem] = []
        uses_defaults = False
        for name, key in self.keys.items():
            if key.verify is None:
                uses_defaults = True
            elif problem := _hold_guaranteed(key.verify):
                out.append((("keys", name, "verify", "timeout"), problem))
        if uses_defaults and (problem := _hold_guaranteed(self.defaults.verify)):
            out.append((("defaults", "verify", "timeout"), problem))
        return out

    def strategy(self, key: str) -> Strategy:
        """The strategy a key uses: cutover is forced for reset-only vendors."""
        spec = self.keys[key]
        return self.issuers[spec.issuer].forced_strategy or spec.strategy or "overlap"

    def max_age(self, key: str) -> timedelta:
        return self.keys[key].max_age or self.defaults.max_age

    def verify(self, key: str) -> VerifyPolicy:
        return self.keys[key].verify or self.defaults.verify


def _notify_problems(spec: RotationFile) -> list[Problem]:
    out: list[Problem] = []
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
