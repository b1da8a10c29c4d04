"""Payload validation: the types a route's schema is written in, the JSON parse that runs
before any route, and the deep check that runs right before the handler.

Schemas are msgspec Structs (exact keys, types, lengths). The same Structs produce the
OpenAPI document, so the published contract and the check are one thing. A field's
annotation is its real type, its bounds the metadata beside it, so a type checker reads the
field as a `str` or an `int` and the validation reads the bounds:

    class NoteIn(Schema):
        text: Annotated[str, Text(1, 10000, multiline=True)]
        files: list[Annotated[str, Text(23, 23)]] = []

A bound used in several places is a type alias: `Password = Annotated[str, Text(8, 128)]`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from .http import ApiError

# Text without control characters (tab and newline allowed where a route says so). `\Z`,
# not `$`: in Python `$` also matches before a trailing newline, so "x@example.com\n" would
# pass. The OpenAPI document says `$` (JSON Schema's regexes are ECMA's, where it means the end).
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*\Z"
_NO_CONTROL_MULTILINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*\Z"


def Text(min_length: int = 0, max_length: int = 1000, multiline: bool = False,
         pattern: str | None = None, description: str | None = None) -> msgspec.Meta:
    """The bounds of a string field, written `Annotated[str, Text(...)]`: its length, and no
    control characters (NUL included; tab and newline too unless `multiline`) unless
    `pattern` says otherwise."""
    return msgspec.Meta(
        min_length=min_length, max_length=max_length, description=description,
        pattern=pattern or (_NO_CONTROL_MULTILINE if multiline else _NO_CONTROL))


def Int(ge: int = 0, le: int = 2**53 - 1) -> msgspec.Meta:
    """The bounds of an integer field, written `Annotated[int, Int(...)]` (so a 400-digit
    number is a validation error, not a bigint)."""
    return msgspec.Meta(ge=ge, le=le)


class Schema(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every payload schema: unknown keys are refused."""


_decode_any = msgspec.json.Decoder().decode
_PATH = re.compile(r" - at `\$(.*)`$")
_FIELD = re.compile(r"field `([^`]*)`")


def _dotted(path: str) -> str:
    """msgspec's `$.files[2].id` → `files.2.id`"""
    return re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out


class _Duplicate(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def parse_json(body: bytes) -> Any:
    """Bytes → Python value. Malformed JSON, invalid UTF-8, lone surrogates, NaN/Infinity
    and nesting deeper than the decoder allows → 400 json."""
    try:
        return _decode_any(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "json") from None


def validate(value: Any, schema: type, body: bytes | None = None) -> Any:
    """Parsed JSON → an instance of `schema`, or 400 validation with the field's path. Once
    the value fits the schema, its `body` is checked for a key given twice (400 validation
    naming it: a second value must not silently win). That check parses in Python, so it
    runs last, on a body the schema already bounded: a valid payload is a handful of
    objects, while `[{},{},...]` is refused by the schema without it."""
    try:
        data: Any = msgspec.convert(value, schema, strict=True)
    except msgspec.ValidationError as error:
        raise ApiError(400, "validation", error_path(str(error))) from None
    if body is not None and b"{" in body:
        try:
            json.loads(body, object_pairs_hook=_no_duplicates)
        except _Duplicate as dup:
            raise ApiError(400, "validation", dup.key) from None
        except (ValueError, RecursionError):
            raise ApiError(400, "json") from None
    return data


def error_path(message: str) -> str:
    at = _PATH.search(message)
    path = _dotted(at.group(1)) if at else ""
    if "missing required field" in message or "unknown field" in message:
        field = _FIELD.search(message)
        if field:
            path = f"{path}.{field.group(1)}" if path else field.group(1)
    return path
