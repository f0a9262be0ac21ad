"""A local OIDC issuer for the tests: RSA and EC keys made with `cryptography`, the discovery document and the
JWKS served over HTTP from a thread (Keycloak's paths), tokens signed with PyJWT."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

REALM_PATH = "/realms/shasta"
CERTS_PATH = REALM_PATH + "/protocol/openid-connect/certs"


@dataclass
class SigningKey:
    kid: str
    algorithm: str  # RS256 or ES256
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        maker = RSAAlgorithm if self.algorithm == "RS256" else ECAlgorithm
        jwk: dict[str, Any] = maker.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.algorithm, "use": "sig"})
        return jwk


def make_key(algorithm: str = "RS256", kid: str | None = None) -> SigningKey:
    if algorithm == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(algorithm)
    return SigningKey(kid or uuid.uuid4().hex[:12], algorithm, private)


@dataclass
class LocalIssuer:
    audience: str = "ims"
    keys: dict[str, SigningKey] = field(default_factory=dict)  # what the JWKS serves
    jwks_fetches: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.base_url + REALM_PATH

    def start(self) -> LocalIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == REALM_PATH + "/.well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": issuer.issuer, "jwks_uri": issuer.base_url + CERTS_PATH}
                elif self.path == CERTS_PATH:
                    issuer.jwks_fetches += 1
                    body = {"keys": [key.public_jwk() for key in list(issuer.keys.values())]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="test-jwks", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def add_key(self, algorithm: str = "RS256") -> SigningKey:
        key = make_key(algorithm)
        self.keys[key.kid] = key
        return key

    def token(
        self,
        key: SigningKey,
        *,
        roles: list[str] | None = None,
        subject: str = "alice",
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        expires_in: float = 300,
        not_before: float | None = None,
        kid: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = time.time()
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, subject)),
            "preferred_username": subject,
            "iat": int(now),
            "exp": int(now + expires_in),
            "realm_access": {"roles": list(roles or [])},
        }
        if not_before is not None:
            claims["nbf"] = int(now + not_before)
        claims.update(extra or {})
        return jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": kid or key.kid})
