"""Timestamps as the original writes them: naive UTC, `isoformat()` without a zone suffix."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def format_timestamp(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat()


def parse_timestamp(text: str) -> datetime:
    """Parse a stored timestamp; an aware one is converted to naive UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


_AGE_PART = re.compile(r"(\d+)\s*([wdhms])", re.IGNORECASE)
_AGE_WHOLE = re.compile(r"^\s*(?:\d+\s*[wdhms]\s*)+$", re.IGNORECASE)
_AGE_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
# Older than any IMS data; also keeps `now - age` inside the calendar (a larger age used to be a 500).
MAX_AGE_SECONDS = 100 * 366 * 86400


def parse_age(text: str) -> timedelta:
    """Parse an age such as `1w2d`, `1h30m` or `45m`.

    Unlike the original, garbage is an error (it used to match every job) and `1h30m` is 90 minutes;
    an age over 100 years is an error too.
    """
    if len(text) > 100 or not _AGE_WHOLE.match(text):
        raise ValueError(text)
    seconds = sum(int(count) * _AGE_UNITS[unit.lower()] for count, unit in _AGE_PART.findall(text))
    if seconds > MAX_AGE_SECONDS:
        raise ValueError(text)
    return timedelta(seconds=seconds)
