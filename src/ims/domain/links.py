"""Artifact links: `{"path": "s3://bucket/key", "etag": "...", "type": "s3"}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

DELETED_PREFIX = "deleted/"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, path: str) -> S3Location:
        """Split `s3://bucket/key` the way the original does (a `?query` stays part of the key)."""
        parsed = urlparse(path, allow_fragments=False)
        key = parsed.path.lstrip("/")
        if parsed.query:
            key = f"{key}?{parsed.query}"
        return cls(bucket=parsed.netloc, key=key)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def deleted(self) -> S3Location:
        return S3Location(self.bucket, DELETED_PREFIX + self.key)

    def undeleted(self) -> S3Location | None:
        """The original strips a leading `deleted` then any `/`; keys not under it cannot be restored."""
        if not self.key.startswith("deleted"):
            return None
        return S3Location(self.bucket, self.key[len("deleted") :].lstrip("/"))


def make_link(location: S3Location, etag: str = "") -> dict[str, Any]:
    return {"path": location.url, "etag": etag, "type": "s3"}


def link_location(link: dict[str, Any]) -> S3Location:
    return S3Location.parse(str(link.get("path", "")))


def dump_link(link: dict[str, Any] | None) -> dict[str, Any] | None:
    """Links are always shown with an `etag`, empty when none was stored."""
    if link is None:
        return None
    return {"path": link.get("path"), "etag": link.get("etag", "") or "", "type": link.get("type")}
