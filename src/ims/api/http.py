"""Request parsing and response shapes shared by the routers."""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ims.domain.errors import ImsError
from ims.domain.validation import JSON_MAX_DEPTH, json_too_deep

log = logging.getLogger("ims.api.app")

MSG_NOT_JSON = "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
MSG_BAD_JSON = "The browser (or proxy) sent a request that this server could not understand."
MSG_NOT_FOUND_URL = (
    "The requested URL was not found on the server. If you entered the URL manually please check your spelling "
    "and try again."
)
MSG_METHOD = "The method is not allowed for the requested URL."
MSG_TOO_DEEP = f"The JSON body is nested deeper than {JSON_MAX_DEPTH} levels."

PROBLEM_JSON = "application/problem+json"

_LONG_DIGITS = re.compile(rb"[0-9]{19}")


class FastJSONResponse(JSONResponse):
    """The same compact UTF-8 JSON as Starlette's, rendered by orjson: a list of 10,000 images renders in
    milliseconds instead of a tenth of a second."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


class RawHttpError(Exception):
    """A framework-level error with the original's plain `{"message": ...}` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def problem(status: int, detail: str | None, errors: Any = None, *, title: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "title": title or HTTPStatus(status).phrase}
    if detail is not None:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = errors
    return FastJSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def problem_from(exc: ImsError) -> JSONResponse:
    if exc.title_only:
        return problem(exc.status, None, exc.errors, title=exc.detail)
    return problem(exc.status, exc.detail, exc.errors)


async def read_json(request: Request) -> Any:
    """Parse a JSON body with the original's rules: 415 for another type, 400 for bad or empty JSON."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise RawHttpError(415, MSG_NOT_JSON)
    raw = await request.body()
    if not raw.strip():
        raise RawHttpError(400, MSG_BAD_JSON)
    if json_too_deep(raw):
        raise TooDeep()
    if _LONG_DIGITS.search(raw) is None:
        # Without numbers of 19 digits or more (orjson would turn an integer beyond 64 bits into a float),
        # orjson parses what it accepts as the json module does, several times faster. What it refuses (NaN,
        # 1e400, UTF-16, a BOM, lone surrogates) goes to the json module, whose rules the original had.
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RawHttpError(400, MSG_BAD_JSON) from None


def ims_error_response(exc: ImsError) -> JSONResponse:
    """What a use case's refusal answers, wherever it was raised (a route or a middleware)."""
    if exc.status >= 500:
        log.warning("request failed: %s", exc.detail)
    return problem_from(exc)


def raw_error_response(exc: RawHttpError) -> JSONResponse:
    if exc.status == 413:
        return problem(413, exc.message)
    return JSONResponse({"message": exc.message}, status_code=exc.status)


def unexpected_error_response() -> JSONResponse:
    log.exception("unhandled error")
    return JSONResponse({"message": "Internal Server Error"}, status_code=500)


class TooDeep(ImsError):
    """A body nested deeper than any IMS request: refused before parsing (a parser's recursion is finite)."""

    status = 400

    def __init__(self) -> None:
        super().__init__(MSG_TOO_DEEP)


def ok(body: Any, status: int = 200) -> JSONResponse:
    return FastJSONResponse(body, status_code=status)


def no_content() -> Response:
    return Response(status_code=204)


def cascade_flag(value: str | None) -> bool:
    """The original's rule: true unless the value is something other than true/yes/t/1."""
    if value is None:
        return True
    return value.lower() in {"true", "yes", "t", "1"}
