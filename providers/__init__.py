"""Secret stores behind :class:`rotator.abc.SecretStore`.

Each provider module imports its SDK itself, so a process only pays for the
SDKs its targets use (``rotator --help`` and ``rotator emergency`` start fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rotator.abc import SecretStore
    from rotator.spec import TargetSpec


def open_store(target: TargetSpec, *, base_dir: Path) -> SecretStore:
    """The store for ``target`` (built by the factory its plugin model carries, see
    :meth:`rotator.spec.TargetModel.open_store`); relative file paths resolve against ``base_dir``."""
    return target.open_store(base_dir=base_dir)
