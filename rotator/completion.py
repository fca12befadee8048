"""Shell completion: the scripts for ``rotator completion SHELL`` and the completion of key names.

Click completes commands and options itself; key names come from the rotation file, found as
the commands find it (``-f``, then ``ROTATOR_FILE``, then ``./rotations.yaml``). Completion
runs on every Tab press, so it reads the file quietly: a missing, unreadable or invalid file
completes nothing, prints nothing and never fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import click
from click.shell_completion import CompletionItem, get_completion_class

SHELLS: Final = ("bash", "zsh", "fish")
COMPLETE_VAR: Final = "_ROTATOR_COMPLETE"


def script(cli: click.Command, shell: str) -> str:
    """The completion script click generates for ``shell`` (``eval`` it or save it)."""
    cls = get_completion_class(shell)
    if cls is None:  # click.Choice keeps this from happening
        raise click.BadParameter(f"no completion for {shell}; use one of {', '.join(SHELLS)}")
    return cls(cli, {}, "rotator", COMPLETE_VAR).source()


def _rotation_file(ctx: click.Context) -> Path:
    given = ctx.find_root().params.get("file")
    if given:
        return Path(given)
    from rotator.spec import Settings

    return Settings().file


def declared_keys(ctx: click.Context) -> dict[str, str]:
    """Key name -> its issuer, from the rotation file; empty when it cannot be read."""
    import yaml

    try:
        data = yaml.safe_load(_rotation_file(ctx).read_text(encoding="utf-8"))
        keys = data["keys"]
        return {str(name): str((spec or {}).get("issuer", "")) for name, spec in keys.items()}
    except Exception:  # noqa: BLE001 - a Tab press must never print a traceback
        return {}


def complete_keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Key names starting with ``incomplete``, except those already on the command line."""
    given = ctx.params.get(param.name or "") or ()
    taken = {given} if isinstance(given, str) else set(given)
    return [
        CompletionItem(name, help=f"issuer {issuer}" if issuer else None)
        for name, issuer in declared_keys(ctx).items()
        if name.startswith(incomplete) and name not in taken
    ]
