"""ims.api.http.read_json parses every body as the json module (the original's parser) does, though it parses
most with orjson: the same values and types, and a 400 for the same bodies."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import Request

from ims.api.http import RawHttpError, read_json

BODIES = [
    b'{"name": "x", "metadata": {"a": "b"}}',
    b'{"a": 1, "a": 2}',
    b'{"n": 123456789012345678901234567890}',  # beyond 64 bits: orjson would make it a float
    b'[9223372036854775807, -9223372036854775808, 18446744073709551615, 18446744073709551616]',
    b'{"f": 1e400, "g": -1e400}',
    b"[NaN, Infinity, -Infinity]",
    b'{"x": -0.0, "y": 0.1, "z": 1.7976931348623157e308, "w": 5e-324}',
    b'{"p": 0.1000000000000000055511151231257827, "q": 123456789012345678.5e3}',
    b'{"s": "\\ud800"}',
    b'\xef\xbb\xbf{"bom": 1}',
    '{"utf16": 1}'.encode("utf-16"),
    b'{"u": "\\u00e9\xc3\xa9", "e": "\\n\\t\\"\\\\"}',
    b' \n{"spaced" : [1, 2.5, true, false, null]}\t',
    b'"just a string"',
    b"0",
]
REFUSED = [b'{"a": "\x01"}', b"{'a': 1}", b'{"a": 1,}', b"[1, 2", b"\xff\xfe\xfd", b"{} {}", b'{"a": 01}']


def _read(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", b"application/json")]}
    return asyncio.run(read_json(Request(scope, receive)))


@pytest.mark.parametrize("body", BODIES)
def test_the_same_values_as_the_json_module(body: bytes) -> None:
    # repr tells int from float, -0.0 from 0.0, and compares NaN as text.
    assert repr(_read(body)) == repr(json.loads(body))


@pytest.mark.parametrize("body", REFUSED)
def test_the_same_bodies_refused(body: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        json.loads(body)
    with pytest.raises(RawHttpError) as refused:
        _read(body)
    assert refused.value.status == 400
