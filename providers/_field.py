"""Where a key sits in a stored secret's text, read and merged by one codec for every store.

A secret holds the key as its whole text (``raw``, or ``line`` for a file: the text without
surrounding whitespace, written back with a newline), or as one field of a JSON object
(``json``) or of a dotenv file (``dotenv``). Merging a key into a text keeps every other
field, line and comment. Errors are :class:`StoreFormatError` naming the store, what was
read and the field, never the text: it holds a key.

dotenv: one assignment per line (``KEY=value``, optionally ``export KEY=value``), ``#``
comments and blank lines. Values are bare, 'single-quoted' (literal) or "double-quoted"
(backslash escapes). Multi-line values are not supported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from rotator.errors import StoreFormatError

Format = Literal["raw", "line", "json", "dotenv"]
JsonStyle = Literal["compact", "spaced", "indented"]
"""How a merged JSON object is written: ``{"a":"b"}``, ``{"a": "b"}``, or indented by two
with a final newline and non-ASCII kept as is (for files people edit)."""


def json_object(text: str, store: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or :class:`StoreFormatError` naming ``store`` and
    ``what`` was read (never the text: it holds a key). Blank text is an empty object."""
    if not text.strip():
        return {}
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


@dataclass(frozen=True)
class FieldCodec:
    """One store's way of holding its key: ``format`` and, for a map, ``field``.

    ``store`` names the store in errors; ``what`` (an argument of each call) names what
    was read, say ``version 3`` or ``the file``.
    """

    store: str
    field: str | None = None
    format: Format = "json"
    json_style: JsonStyle = "spaced"

    @property
    def whole(self) -> bool:
        """True when the key is the whole text (no field, or a raw format)."""
        return self.field is None or self.format in ("raw", "line")

    def read(self, text: str, what: str) -> str | None:
        """The key held in ``text``, or ``None`` when it holds none."""
        if self.whole or self.field is None:
            if self.format == "line":
                return text.strip() or None
            return text
        if self.format == "dotenv":
            try:
                return dotenv_get(text, self.field)
            except ValueError as exc:
                raise StoreFormatError(self.store, f"{what}: not a dotenv file ({exc})") from None
        held = json_object(text, self.store, what).get(self.field)
        if held is not None and not isinstance(held, str):
            raise StoreFormatError(self.store, f"{what}: field {self.field} is not a string")
        return held

    def merge(self, text: str | None, value: str, what: str) -> str:
        """``text`` (``None``: nothing stored yet) with the key set to ``value``."""
        if self.whole or self.field is None:
            return value + "\n" if self.format == "line" else value
        if self.format == "dotenv":
            try:
                return dotenv_put(text or "", self.field, value)
            except ValueError as exc:
                raise StoreFormatError(self.store, f"{what}: not a dotenv file ({exc})") from None
        data = json_object(text or "", self.store, what)
        data[self.field] = value
        if self.json_style == "compact":
            return json.dumps(data, separators=(",", ":"))
        if self.json_style == "indented":
            return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        return json.dumps(data)


# --------------------------------------------------------------------------- dotenv

_ASSIGN = re.compile(r"[ \t]*(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.]*)[ \t]*=[ \t]*")
_BARE = re.compile(r"[A-Za-z0-9_./:@+,~%^=-]*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


def _dotenv_lines(text: str, key: str) -> tuple[list[str], int | None]:
    """The lines (with their endings) and the index of the last one assigning ``key``."""
    lines = text.splitlines(keepends=True)
    found = None
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        if not body.strip() or body.lstrip().startswith("#"):
            continue
        match = _ASSIGN.match(body)
        if match is None:
            raise ValueError(f"line {i + 1} is not KEY=value")
        if match.group("key") == key:
            found = i
    return lines, found


def _scan(line: str, start: int, number: int) -> tuple[str, int]:
    """The value starting at ``line[start]`` and the index just past it."""
    rest = line[start:]
    if rest[:1] == "'":
        end = rest.find("'", 1)
        if end < 0:
            raise ValueError(f"line {number} has an unterminated quote")
        value, stop = rest[1:end], start + end + 1
    elif rest[:1] == '"':
        out, i = [], 1
        while i < len(rest) and rest[i] != '"':
            if rest[i] == "\\" and i + 1 < len(rest):
                out.append(_ESCAPES.get(rest[i + 1], rest[i : i + 2]))
                i += 2
            else:
                out.append(rest[i])
                i += 1
        if i >= len(rest):
            raise ValueError(f"line {number} has an unterminated quote")
        value, stop = "".join(out), start + i + 1
    else:
        comment = re.search(r"(?:^|[ \t])#", rest)  # as shells and python-dotenv read it
        value = rest[: comment.start() if comment else len(rest)].rstrip()
        return value, start + len(value)
    tail = line[stop:].strip()
    if tail and not tail.startswith("#"):
        raise ValueError(f"line {number} has text after the closing quote")
    return value, stop


def dotenv_get(text: str, key: str) -> str | None:
    """The value of the last line assigning ``key``; ValueError if a line is not dotenv."""
    lines, index = _dotenv_lines(text, key)
    if index is None:
        return None
    body = lines[index].rstrip("\r\n")
    match = _ASSIGN.match(body)
    assert match is not None
    return _scan(body, match.end(), index + 1)[0]


def _dotenv_quote(value: str) -> str:
    """Quote only when needed; single quotes where possible, since nothing expands in them."""
    if _BARE.fullmatch(value):
        return value
    if "'" not in value and "\n" not in value and "\r" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def dotenv_put(text: str, key: str, value: str) -> str:
    """``text`` with ``key`` set to ``value``; every other line, comment and order kept."""
    lines, index = _dotenv_lines(text, key)
    if index is None:
        sep = "\n" if text and not text.endswith("\n") else ""
        return f"{text}{sep}{key}={_dotenv_quote(value)}\n"
    line = lines[index]
    body = line.rstrip("\r\n")
    match = _ASSIGN.match(body)
    assert match is not None
    _, stop = _scan(body, match.end(), index + 1)
    lines[index] = body[: match.end()] + _dotenv_quote(value) + body[stop:] + line[len(body) :]
    return "".join(lines)
