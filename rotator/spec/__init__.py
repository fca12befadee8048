"""The rotation file (pydantic models) and the process settings (pydantic-settings).

The file is the user's interface and stays stable; see README.md for its shape.
Every error names the field path and the YAML line it came from. By concern:

* :mod:`~rotator.spec.durations` - ``15m``-style durations;
* :mod:`~rotator.spec.cron` - key schedules;
* :mod:`~rotator.spec.types` - the strict base model, names, safe text, endpoints, credentials;
* :mod:`~rotator.spec.models` - policies, keys, leases, notifications, the file, and the
  base classes of plugin models;
* :mod:`~rotator.spec.loader` - reading a file: the size cap, the line index, the unions
  built from the plugin registry, the error lines;
* :mod:`~rotator.spec.settings` - ``ROTATOR_*`` process settings.

The built-in issuer and store models live with the other plugins' (:mod:`rotator.builtin`);
their former names here (``from rotator.spec import <model>``) keep working through ``__getattr__``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from rotator.spec.cron import CRON_FIELDS, _cron_weekdays, check_cron, cron_trigger
from rotator.spec.durations import MAX_DURATION, Duration, format_duration, parse_duration
from rotator.spec.loader import (
    MAX_FILE_ENV,
    MAX_FILE_MIB,
    MAX_FILE_MIB_LIMIT,
    load_rotation_file,
    max_file_bytes,
    parse_rotation_file,
    rotation_model,
    too_large,
)
from rotator.spec.models import (
    ConsumerModel,
    Defaults,
    DynamoDBLeaseSpec,
    FileLeaseSpec,
    IssuerModel,
    KeySpec,
    LeaseSpec,
    NotifyEvent,
    NotifySpec,
    Problem,
    RotationFile,
    Strategy,
    TargetModel,
    VerifyPolicy,
)
from rotator.spec.settings import Settings, load_settings
from rotator.spec.types import (
    NAME_PATTERN,
    SAFE_TEXT_PATTERN,
    UNSAFE_CHARS,
    Credential,
    EnvRef,
    KeyRef,
    Name,
    Text,
    Url,
)

IssuerSpec = IssuerModel
"""What ``issuers:`` holds (the union itself is built from the plugin registry at load time)."""
TargetSpec = TargetModel
"""What a key's ``targets:`` holds (likewise built from the registry)."""

__all__ = [
    "CRON_FIELDS",
    "MAX_DURATION",
    "MAX_FILE_ENV",
    "MAX_FILE_MIB",
    "MAX_FILE_MIB_LIMIT",
    "NAME_PATTERN",
    "SAFE_TEXT_PATTERN",
    "UNSAFE_CHARS",
    "ConsumerModel",
    "Credential",
    "Defaults",
    "Duration",
    "DynamoDBLeaseSpec",
    "EnvRef",
    "FileLeaseSpec",
    "IssuerModel",
    "IssuerSpec",
    "KeyRef",
    "KeySpec",
    "LeaseSpec",
    "Name",
    "NotifyEvent",
    "NotifySpec",
    "Problem",
    "RotationFile",
    "Settings",
    "Strategy",
    "TargetModel",
    "TargetSpec",
    "Text",
    "Url",
    "VerifyPolicy",
    "_cron_weekdays",
    "check_cron",
    "cron_trigger",
    "format_duration",
    "load_rotation_file",
    "load_settings",
    "max_file_bytes",
    "parse_duration",
    "parse_rotation_file",
    "rotation_model",
    "too_large",
]

_BUILTIN_MODULES = ("rotator.builtin.issuers", "rotator.builtin.stores")


def __getattr__(name: str) -> Any:
    """The built-in plugins' models under the names they had here before the split."""
    for module in _BUILTIN_MODULES:
        found = getattr(import_module(module), name, None)
        if isinstance(found, type):
            return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
