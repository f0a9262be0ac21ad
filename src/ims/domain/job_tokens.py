"""The shape of a per-job bearer token: `imsjob_` + 43 url-safe characters (stored only as its sha256)."""

from __future__ import annotations

PREFIX = "imsjob_"
TOKEN_LENGTH = len(PREFIX) + 43


def looks_like_job_token(token: str) -> bool:
    """A job's token, not an OIDC access token (which of the two checks a caller)."""
    return token.startswith(PREFIX)
