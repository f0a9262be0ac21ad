"""A small typed client for the IMS REST API.

Retries follow the original job helper (502/503/504 and connection failures, with backoff) but never
re-send a POST whose request may already have reached the server, so a retry cannot create a second record.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRY_STATUSES = frozenset({502, 503, 504})
# Inside a job: how long one call may keep retrying an unreachable IMS before giving up (the job then ends
# instead of retrying a dead server forever). Set by the runner from the server's setting of the same name.
GIVE_UP_ENV = "IMS_JOB_API_GIVE_UP_SECONDS"


def default_give_up() -> float | None:
    try:
        value = float(os.environ.get(GIVE_UP_ENV, ""))
    except ValueError:
        return None
    return value if value > 0 else None
# A POST is retried only when the server certainly did not act on it.
_POST_RETRY_STATUSES = frozenset({503})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ImsApiError(Exception):
    """The API answered with an error, or could not be reached at all (status 0)."""

    def __init__(
        self, status: int, detail: str, *, errors: Any = None, title: str = "", method: str = "", url: str = ""
    ) -> None:
        where = f"{method} {url}: " if method else ""
        super().__init__(f"{where}{status} {detail}".strip())
        self.status = status
        self.detail = detail
        self.errors = errors
        self.title = title
        self.method = method
        self.url = url


@dataclass
class RetryPolicy:
    attempts: int = 10
    backoff: float = 0.5
    max_sleep: float = 30.0

    def sleep_for(self, attempt: int) -> float:
        return float(min(self.max_sleep, self.backoff * (2**attempt)))


@dataclass
class ImsClient:
    """Talks to one IMS at `base_url` (no version suffix); `version` picks the path prefix."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True
    timeout: float = 30.0
    version: str = "v3"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Total seconds one request may spend retrying (None: only the retry policy's attempts bound it).
    give_up_seconds: float | None = field(default_factory=default_give_up)
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        verify: bool | ssl.SSLContext
        if self.base_url.lower().startswith("http://"):
            # Nothing to verify: every request goes to this plain-HTTP base and redirects are not followed.
            # Loading a CA bundle would cost every job ~80 ms before its first status report.
            verify = False
        elif isinstance(self.verify, str):
            verify = ssl.create_default_context(cafile=self.verify)  # httpx deprecates `verify=<str>`
        else:
            verify = self.verify
        self._http = httpx.Client(
            base_url=self.base_url.rstrip("/"), headers=headers, verify=verify, timeout=self.timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ImsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing
    def path(self, resource: str, version: str | None = None) -> str:
        prefix = self.version if version is None else version
        return f"/{prefix}{resource}" if prefix else resource

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one request with retries; return the decoded JSON body (None when there is none)."""
        method = method.upper()
        attempt = 0
        started = time.monotonic()
        while True:
            try:
                response = self._http.request(
                    method, path, json=json, params=params, timeout=self._attempt_timeout(started)
                )
            except httpx.TransportError as exc:
                if self._may_retry_transport(method, exc, attempt) and self._in_budget(started, attempt):
                    self._pause(started, attempt)
                    attempt += 1
                    continue
                raise ImsApiError(0, f"cannot reach IMS: {exc}{self._gave_up(started)}", method=method,
                                  url=path) from exc
            if self._may_retry_status(method, response.status_code, attempt) and self._in_budget(started, attempt):
                self._pause(started, attempt)
                attempt += 1
                continue
            return _decode(response, method, path)

    def _in_budget(self, started: float, attempt: int) -> bool:
        if self.give_up_seconds is None:
            return True
        return time.monotonic() - started < self.give_up_seconds

    def _pause(self, started: float, attempt: int) -> None:
        """The backoff before the next attempt, cut to what is left of the give-up budget."""
        pause = self.retry.sleep_for(attempt)
        if self.give_up_seconds is not None:
            pause = min(pause, max(0.0, self.give_up_seconds - (time.monotonic() - started)))
        time.sleep(pause)

    def _attempt_timeout(self, started: float) -> float:
        """One attempt never outlasts what is left of the give-up budget (at least a second)."""
        if self.give_up_seconds is None:
            return self.timeout
        return max(1.0, min(self.timeout, self.give_up_seconds - (time.monotonic() - started)))

    def _gave_up(self, started: float) -> str:
        return f" (gave up after {time.monotonic() - started:.0f} s)" if self.give_up_seconds is not None else ""

    @contextmanager
    def giving_up_after(self, seconds: float) -> Iterator[None]:
        """Calls in the block retry for at most `seconds` (a job's last report while it stops)."""
        saved = self.give_up_seconds
        self.give_up_seconds = seconds if saved is None else min(saved, seconds)
        try:
            yield
        finally:
            self.give_up_seconds = saved

    @contextmanager
    def stream(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, read_timeout: float | None = None
    ) -> Iterator[httpx.Response]:
        """Open a streamed response (no retries: a stream cannot be replayed); errors become ImsApiError.

        By default there is no read timeout: a followed log may stay quiet for as long as a build step runs.
        """
        method = method.upper()
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        try:
            with self._http.stream(method, path, params=params, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    _decode(response, method, path)
                yield response
        except httpx.TransportError as exc:
            raise ImsApiError(0, f"cannot reach IMS: {exc}", method=method, url=path) from exc

    def _may_retry_transport(self, method: str, exc: httpx.TransportError, attempt: int) -> bool:
        if attempt + 1 >= self.retry.attempts:
            return False
        if method in _IDEMPOTENT:
            return True
        return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)

    def _may_retry_status(self, method: str, status: int, attempt: int) -> bool:
        if attempt + 1 >= self.retry.attempts:
            return False
        allowed = RETRY_STATUSES if method in _IDEMPOTENT else _POST_RETRY_STATUSES
        return status in allowed

    # --- jobs
    def get_job(self, job_id: str) -> dict[str, Any]:
        return _record(self.request("GET", self.path(f"/jobs/{job_id}")))

    def patch_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        return _record(self.request("PATCH", self.path(f"/jobs/{job_id}"), json=fields))

    def set_job_status(self, job_id: str, status: str, reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if reason is not None:
            body["status_reason"] = reason
        return self.patch_job(job_id, **body)

    # --- images
    def create_image(self, name: str, arch: str | None = None, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, **fields}
        if arch is not None:
            body["arch"] = arch
        return _record(self.request("POST", self.path("/images"), json=body))

    def get_image(self, image_id: str) -> dict[str, Any]:
        return _record(self.request("GET", self.path(f"/images/{image_id}")))

    def patch_image(self, image_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return _record(self.request("PATCH", self.path(f"/images/{image_id}"), json=dict(body)))

    def purge_image(self, image_id: str) -> None:
        """Remove an image record for good without touching S3 (v2 hard delete, cascade off)."""
        self.request("DELETE", self.path(f"/images/{image_id}", "v2"), params={"cascade": "false"})


def _record(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImsApiError(0, f"expected a JSON object, got {type(value).__name__}")
    return value


def _decode(response: httpx.Response, method: str, path: str) -> Any:
    body: Any = None
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = response.text
    if response.is_success:
        return body
    detail, errors, title = "", None, ""
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("message") or body.get("title") or "")
        errors = body.get("errors")
        title = str(body.get("title") or "")
    elif isinstance(body, str):
        detail = body[:500]
    raise ImsApiError(
        response.status_code, detail or response.reason_phrase, errors=errors, title=title, method=method, url=path
    )
