"""OIDC bearer tokens: JWTs from the site's issuer (Keycloak on CSM), checked against its JWKS.

Checked: the signature (RS256 or ES256, with a key of the issuer's JWKS named by the token's `kid`), `iss`,
`aud` (any of IMS_OIDC_AUDIENCE), `exp` and `nbf` with IMS_OIDC_CLOCK_SKEW of leeway. The JWKS is fetched
with an async client (never blocking the event loop), cached, and fetched again when a token names an
unknown `kid` (key rotation), at most once per IMS_OIDC_JWKS_REFRESH_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from ims.settings import Settings

log = logging.getLogger(__name__)

ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}
JWKS_MAX_AGE_SECONDS = 3600.0
FETCH_TIMEOUT_SECONDS = 5.0


class TokenRejected(Exception):
    """The token is missing, malformed, badly signed, expired or not meant for IMS (401)."""


class KeysUnavailable(Exception):
    """The issuer's keys could not be fetched at all (503: not the caller's fault)."""


@dataclass(frozen=True)
class Identity:
    subject: str
    roles: frozenset[str]


def roles_from(claims: dict[str, Any], path: str) -> frozenset[str]:
    """Roles at a dotted claim path, Keycloak style: `realm_access.roles`, `resource_access.<client>.roles`."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return frozenset()
        value = value.get(part)
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list):
        return frozenset(str(item) for item in value if isinstance(item, str))
    return frozenset()


class OidcVerifier:
    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.oidc_issuer.strip()
        self.audience = [item.strip() for item in settings.oidc_audience.split(",") if item.strip()]
        self.roles_claim = settings.oidc_roles_claim
        self.leeway = settings.oidc_clock_skew
        self.refresh_seconds = settings.oidc_jwks_refresh_seconds
        self.verify: bool | str = str(settings.oidc_ca_file) if settings.oidc_ca_file else True
        self._jwks_url = settings.oidc_jwks_url.strip()
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def identify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise TokenRejected(f"the token's algorithm {algorithm!r} is not accepted (RS256, ES256)")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        if key.key_type != ALGORITHMS[algorithm]:
            raise TokenRejected("the token's algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("the token is not meant for IMS (audience)") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("the token comes from another issuer") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"the token is not valid: {exc}") from None
        subject = str(claims.get("preferred_username") or claims.get("sub") or "?")
        return Identity(subject, roles_from(claims, self.roles_claim))

    # --- keys
    async def _key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at > JWKS_MAX_AGE_SECONDS:
            await self._refresh(force=True)
        found = self._pick(kid)
        if found is None:
            await self._refresh(force=False)  # an unknown kid: the issuer may have rotated its keys
            found = self._pick(kid)
        if found is None:
            raise TokenRejected("the token's signing key is not one of the issuer's keys")
        return found

    def _pick(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self, *, force: bool) -> None:
        started = time.monotonic()
        async with self._lock:
            if self._fetched_at is not None and self._fetched_at >= started:
                return  # another request fetched while this one waited
            if not force and self._fetched_at is not None and started - self._fetched_at < self.refresh_seconds:
                return  # rate limit: unknown kids do not make IMS hammer the issuer
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("could not fetch the OIDC keys: %s", exc)
                if not self._keys:
                    raise KeysUnavailable(f"the issuer's keys cannot be fetched: {exc}") from None
                self._fetched_at = time.monotonic()  # keep the old keys; retry after the refresh interval
                return
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS, verify=self.verify) as client:
            url = self._jwks_url or await self._discover(client)
            response = await client.get(url)
            response.raise_for_status()
            data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f"{url} is not a JWKS")
        keys: dict[str | None, jwt.PyJWK] = {}
        for item in data["keys"]:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(item)
            except jwt.PyJWTError:
                continue  # a key type or curve we do not use
            if key.key_type in ALGORITHMS.values():
                keys[item.get("kid")] = key
        return keys

    async def _discover(self, client: httpx.AsyncClient) -> str:
        """The issuer's discovery document names its JWKS; Keycloak's fixed path when there is none."""
        base = self.issuer.rstrip("/")
        fallback = f"{base}/protocol/openid-connect/certs"
        try:
            response = await client.get(f"{base}/.well-known/openid-configuration")
            if response.status_code == 200:
                uri = response.json().get("jwks_uri")
                if isinstance(uri, str) and uri:
                    self._jwks_url = uri
                    return uri
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.info("no OIDC discovery document at %s: %s", base, exc)
        return fallback  # not remembered: the discovery document is asked again at the next fetch
