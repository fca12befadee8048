"""Secret stores behind :class:`rotator.abc.SecretStore`.

Each provider module imports its SDK itself, so a process only pays for the
SDKs its targets use (``rotator --help`` and ``rotator emergency`` start fast).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rotator.abc import SecretStore
    from rotator.spec import TargetSpec

_MODULES = {
    "file": "providers.file",
    "aws": "providers.aws",
    "vault": "providers.vault",
    "gcp": "providers.gcp",
}


def open_store(target: TargetSpec, *, base_dir: Path) -> SecretStore:
    """The store for ``target``; relative file paths resolve against ``base_dir``."""
    module = import_module(_MODULES[target.type])
    store: SecretStore = module.open_store(target, base_dir=base_dir)
    return store
