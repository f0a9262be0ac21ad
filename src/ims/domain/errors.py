"""Domain errors; the HTTP layer maps each to the original's problem+json body."""

from __future__ import annotations

from typing import Any

DETAIL_NO_INPUT = (
    "No input provided. Determine the specific information that is missing or invalid and then re-run the "
    "request with valid information."
)
DETAIL_VALIDATION = (
    "Input data was understood, but failed validation. Re-run request with valid input values for the fields "
    "indicated in the response."
)
DETAIL_NOT_FOUND = "Requested resource does not exist. Re-run request with valid ID."
DETAIL_CONFLICT = (
    "Requested resource exists, but cannot be patched due to a patch conflict. Re-run request with valid input "
    "values."
)


class ImsError(Exception):
    """Base of every error a use case reports to its caller."""

    status = 500

    def __init__(self, detail: str, errors: Any = None, *, title_only: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        # The original's DELETE /jobs filter errors carry the message as `title` with no `detail`.
        self.title_only = title_only


class BadRequest(ImsError):
    status = 400


class NotFound(ImsError):
    status = 404

    def __init__(self, detail: str = DETAIL_NOT_FOUND) -> None:
        super().__init__(detail)


class Conflict(ImsError):
    status = 409

    def __init__(self, detail: str = DETAIL_CONFLICT) -> None:
        super().__init__(detail)


class Unprocessable(ImsError):
    status = 422


class ValidationFailed(Unprocessable):
    """Field-level validation errors in the marshmallow shape `{field: [messages]}`."""

    def __init__(self, errors: Any) -> None:
        super().__init__(DETAIL_VALIDATION, errors)


class NoInput(BadRequest):
    def __init__(self) -> None:
        super().__init__(DETAIL_NO_INPUT)


class Unavailable(ImsError):
    status = 503
