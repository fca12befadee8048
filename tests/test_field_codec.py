"""The one codec every store uses to read and merge the key in a stored secret's text."""

from __future__ import annotations

import json

import pytest

from providers._field import FieldCodec, dotenv_get, dotenv_put, json_object
from rotator.errors import StoreFormatError

CANARY = "sk_live_CANARY0123456789abcdefghijklmnopqrstuvwxyz"


def test_whole_text_raw_and_line() -> None:
    raw = FieldCodec("s", None)
    assert raw.whole and raw.read(" k \n", "v1") == " k \n"
    assert raw.merge("old", "new", "v1") == "new"
    line = FieldCodec("s", None, "line")
    assert line.read("  k\n", "f") == "k"
    assert line.read(" \n", "f") is None
    assert line.merge(None, "new", "f") == "new\n"
    assert FieldCodec("s", "api_key", "raw").whole  # a raw format ignores the field


def test_json_read() -> None:
    codec = FieldCodec("s", "api_key")
    assert codec.read('{"api_key": "k", "other": 1}', "v1") == "k"
    assert codec.read('{"other": 1}', "v1") is None
    assert codec.read('{"api_key": null}', "v1") is None
    assert codec.read("  \n", "v1") is None  # blank text is an empty map


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("compact", '{"other":"\\u00e9","api_key":"new"}'),
        ("spaced", '{"other": "\\u00e9", "api_key": "new"}'),
        ("indented", '{\n  "other": "é",\n  "api_key": "new"\n}\n'),
    ],
)
def test_json_merge_keeps_other_fields_in_the_stores_style(style: str, expected: str) -> None:
    codec = FieldCodec("s", "api_key", json_style=style)  # type: ignore[arg-type]
    assert codec.merge('{"other": "é", "api_key": "old"}', "new", "v1") == expected
    assert json.loads(codec.merge(None, "new", "v1")) == {"api_key": "new"}
    assert json.loads(codec.merge("", "new", "v1")) == {"api_key": "new"}


NOT_A_MAP = [
    (f"{CANARY} is not JSON {{", "v3: not a JSON object: not valid JSON (line 1 column 1)"),
    (f'["{CANARY}"]', "v3: not a JSON object: JSON is a list, not an object"),
]


@pytest.mark.parametrize(
    ("text", "problem"), [*NOT_A_MAP, (f'{{"api_key": ["{CANARY}"]}}', "v3: field api_key is not a string")]
)
def test_json_read_errors_name_store_what_and_field_never_the_value(text: str, problem: str) -> None:
    with pytest.raises(StoreFormatError) as info:
        FieldCodec("aws:payments#api_key", "api_key").read(text, "v3")
    assert str(info.value) == f"aws:payments#api_key: {problem}"
    assert CANARY not in str(info.value)


@pytest.mark.parametrize(("text", "problem"), NOT_A_MAP)
def test_json_merge_refuses_a_text_that_is_not_a_map(text: str, problem: str) -> None:
    with pytest.raises(StoreFormatError) as info:
        FieldCodec("aws:payments#api_key", "api_key").merge(text, "new", "v3")
    assert str(info.value) == f"aws:payments#api_key: {problem}"
    assert CANARY not in str(info.value)


def test_json_merge_replaces_a_field_that_is_not_a_string() -> None:
    merged = FieldCodec("s", "api_key").merge('{"api_key": 42, "b": true}', "new", "v3")
    assert json.loads(merged) == {"api_key": "new", "b": True}


def test_dotenv_read_and_merge_keep_every_other_line() -> None:
    codec = FieldCodec("file:a.env#API_KEY", "API_KEY", "dotenv")
    text = "# keys\nexport OTHER='x y'\nAPI_KEY=old # rotated\n\nLAST=\"a\\nb\"\n"
    assert codec.read(text, "the file") == "old"
    merged = codec.merge(text, "new key", "the file")
    assert merged == "# keys\nexport OTHER='x y'\nAPI_KEY='new key' # rotated\n\nLAST=\"a\\nb\"\n"
    assert codec.read(merged, "the file") == "new key"
    assert dotenv_get(merged, "LAST") == "a\nb"
    assert codec.merge(None, "k", "the file") == "API_KEY=k\n"
    assert codec.merge("A=1", "k", "the file") == "A=1\nAPI_KEY=k\n"
    assert codec.read("A=1\n", "the file") is None


@pytest.mark.parametrize(
    ("value", "written"),
    [("plain_-.:/@+,~%^=1", "plain_-.:/@+,~%^=1"), ("a b$c", "'a b$c'"), ("it's\n", '"it\'s\\n"')],
)
def test_dotenv_quotes_only_when_needed_and_round_trips(value: str, written: str) -> None:
    assert dotenv_put("", "K", value) == f"K={written}\n"
    assert dotenv_get(dotenv_put("", "K", value), "K") == value


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"{CANARY}\n", "line 1 is not KEY=value"),
        (f"API_KEY='{CANARY}\n", "line 1 has an unterminated quote"),
        (f"API_KEY='{CANARY}' trailing\n", "line 1 has text after the closing quote"),
    ],
)
def test_dotenv_errors_name_the_line_never_the_value(text: str, problem: str) -> None:
    codec = FieldCodec("file:a.env#API_KEY", "API_KEY", "dotenv")
    with pytest.raises(StoreFormatError) as read:
        codec.read(text, "the file")
    with pytest.raises(StoreFormatError) as merge:
        codec.merge(text, "n", "the file")
    for info in (read, merge):
        assert str(info.value) == f"file:a.env#API_KEY: the file: not a dotenv file ({problem})"
        assert CANARY not in str(info.value)


def test_json_object_blank_is_empty() -> None:
    assert json_object(" \n", "s", "v1") == {}
    assert json_object('{"a": 1}', "s", "v1") == {"a": 1}
