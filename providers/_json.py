"""The JSON map a target with a ``field`` keeps its key in: one parser, one error wording."""

from __future__ import annotations

import json
from typing import Any

from rotator.errors import StoreFormatError


def json_object(text: str, store: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or :class:`StoreFormatError` naming ``store`` and
    ``what`` was read (never the text: it holds a key)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreFormatError(
            store, f"{what}: not a JSON object: not valid JSON (line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise StoreFormatError(
            store, f"{what}: not a JSON object: JSON is a {type(data).__name__}, not an object"
        )
    return data
