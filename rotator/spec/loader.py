"""Reading a rotation file: the size cap, YAML with its line index (:mod:`rotator.yamldoc`),
the models built from the plugin registry, and errors that name the field and its line."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, create_model
from pydantic_core import ErrorDetails

from rotator import plugins
from rotator.errors import ConfigError
from rotator.spec.models import ConsumerModel, IssuerModel, KeySpec, RotationFile, TargetModel
from rotator.spec.types import PATTERN_MESSAGES, Name
from rotator.yamldoc import DocumentError, Lines, collector_paused, read_document

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
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p in _tags() or p == "[key]")))
    path = ".".join(_shown(p) for p in loc) or "(top level)"
    where = _where(lines, loc, source)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "string_pattern_mismatch":
        msg = PATTERN_MESSAGES.get(str((err.get("ctx") or {}).get("pattern")), msg)
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


_FIXED_TAGS = frozenset({"file", "dynamodb", "EnvRef", "KeyRef"})
"""Tags of the unions that are not plugins (the lease, a credential reference)."""


@functools.cache
def _tags() -> frozenset[str]:
    return _FIXED_TAGS.union(*(plugins.names(g) for g in plugins.GROUPS))


def _union(members: list[type[Any]]) -> Any:
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator="type")]  # noqa: UP007 - built at run time


@functools.cache
def _build(
    issuers: tuple[type[IssuerModel], ...],
    stores: tuple[type[TargetModel], ...],
    consumers: tuple[type[ConsumerModel], ...],
) -> type[RotationFile]:
    targets: Any = list[_union(list(stores))]  # type: ignore[misc]
    fields: dict[str, Any] = {"targets": (targets, Field(min_length=1))}
    if consumers:
        fields["consumers"] = (list[_union(list(consumers))], Field(default_factory=list))  # type: ignore[misc]
    key: Any = create_model("KeySpec", __base__=KeySpec, __module__=KeySpec.__module__, **fields)
    issuer_map: Any = dict[Name, _union(list(issuers))]  # type: ignore[misc]
    keys: Any = dict[Name, key]
    model: type[RotationFile] = create_model(
        "RotationFile",
        __base__=RotationFile,
        __module__=RotationFile.__module__,
        issuers=(issuer_map, Field(min_length=1)),
        keys=(keys, Field(min_length=1)),
    )
    return model


def rotation_model(
    issuer_types: Iterable[str] | None = None,
    store_types: Iterable[str] | None = None,
    consumer_types: Iterable[str] | None = None,
) -> type[RotationFile]:
    """The rotation file's model with the ``issuers:``, ``targets:`` and ``consumers:`` unions
    built from the registry: of the named types only (their plugins alone are imported), or of
    every installed plugin. A name no plugin registers brings in every model, so pydantic's
    error lists the types there are. No consumer named: the file has none, and no consumer
    plugin is imported."""
    groups = (
        (plugins.ISSUERS, issuer_types),
        (plugins.STORES, store_types),
        (plugins.CONSUMERS, consumer_types),
    )
    chosen: list[tuple[type[Any], ...]] = []
    for group, wanted in groups:
        known = plugins.names(group)
        only = None if wanted is None else set(wanted)
        if group == plugins.CONSUMERS and only is not None and not only:
            chosen.append(())
            continue
        if only is not None and (not only or not only <= set(known)):
            only = None
        chosen.append(tuple(plugins.models(group, only)))
    return _build(chosen[0], chosen[1], chosen[2])


def _types_named(data: dict[Any, Any]) -> tuple[set[str], set[str], set[str]]:
    """The issuer, target and consumer ``type`` values a parsed document names (whatever its
    shape)."""
    issuers: set[str] = set()
    if isinstance(section := data.get("issuers"), dict):
        issuers = {
            i["type"] for i in section.values() if isinstance(i, dict) and isinstance(i.get("type"), str)
        }
    stores: set[str] = set()
    consumers: set[str] = set()
    if isinstance(section := data.get("keys"), dict):
        for key in section.values():
            for field, found in (("targets", stores), ("consumers", consumers)):
                items = key.get(field) if isinstance(key, dict) else None
                for t in items if isinstance(items, list) else ():
                    typed = isinstance(t, dict) and isinstance(t.get("type"), str)
                    found.add(t["type"] if typed else "")  # "": no type, so every model, for the error
    return issuers, stores, consumers


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
        spec = rotation_model(*_types_named(data)).model_validate(data, context={"defer_references": True})
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
