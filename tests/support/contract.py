"""The original's error texts and problem+json shape, written out literally so the tests check the contract
itself rather than our own constants."""

from __future__ import annotations

import re
from typing import Any

import httpx

NO_INPUT = (
    "No input provided. Determine the specific information that is missing or invalid and then re-run the "
    "request with valid information."
)
VALIDATION = (
    "Input data was understood, but failed validation. Re-run request with valid input values for the fields "
    "indicated in the response."
)
NOT_FOUND = "Requested resource does not exist. Re-run request with valid ID."
CONFLICT = (
    "Requested resource exists, but cannot be patched due to a patch conflict. Re-run request with valid input "
    "values."
)
URL_NOT_FOUND = (
    "The requested URL was not found on the server. If you entered the URL manually please check your spelling "
    "and try again."
)
METHOD_NOT_ALLOWED = "The method is not allowed for the requested URL."
NOT_JSON = "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
BAD_JSON = "The browser (or proxy) sent a request that this server could not understand."
MISSING = "Missing data for required field."
UNKNOWN = "Unknown field."
ARCH_CHOICES = "Must be one of: aarch64, x86_64."
VALIDATE_TAIL = "Please determine the specific information that is missing or invalid and then re-run the request with valid information."

TITLES = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 413: "Request Entity Too Large",
          422: "Unprocessable Entity", 503: "Service Unavailable"}

PREFIXES = ("", "/v2", "/v3")
# The original writes naive timestamps with isoformat(): no zone, microseconds only when non-zero.
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def assert_problem(response: httpx.Response, status: int, detail: str | None = None, errors: Any = None) -> dict[str, Any]:
    """A problem+json body `{status, title, detail[, errors]}` with no other members."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"] == TITLES[status]
    if detail is not None:
        assert body["detail"] == detail
    if errors is not None:
        assert body["errors"] == errors
    assert set(body) <= {"status", "title", "detail", "errors"}
    return body


def assert_invalid(response: httpx.Response, errors: Any) -> None:
    assert_problem(response, 422, VALIDATION, errors)


def assert_message(response: httpx.Response, status: int, message: str) -> None:
    """The framework errors of the original: plain application/json `{"message": ...}`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"message": message}


def assert_no_content(response: httpx.Response) -> None:
    assert response.status_code == 204, response.text
    assert response.content == b""
