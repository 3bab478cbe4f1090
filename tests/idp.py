"""A stand-in identity provider for the JWT tests: a real HTTP server on 127.0.0.1 that
serves a JWK Set the test controls (which keys, its ``Cache-Control``, whether it answers at
all, and when), counts the fetches, and signs tokens with its keys (``cryptography``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.servers import HOST

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
#: RSA keys take a while to generate: one per size for the whole session.
_RSA: dict[int, rsa.RSAPrivateKey] = {}


def new_private_key(alg: str, rsa_bits: int = 2048) -> PrivateKey:
    if alg in _CURVES:
        return ec.generate_private_key(_CURVES[alg]())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if rsa_bits not in _RSA:
        _RSA[rsa_bits] = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return _RSA[rsa_bits]


def public_jwk(key: PrivateKey, alg: str | None, kid: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk = dict(jwk) | {"kid": kid, "use": "sig"}
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token signed with ``secret`` by hand (PyJWT refuses to sign with a public
    key as the HMAC secret, which is exactly the attack)."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey


class Idp:
    """``async with Idp() as idp``: serving ``idp.jwks_url``; ``idp.token(...)`` signs."""

    def __init__(self, issuer: str = "https://idp.example.test/", audience: str = "fileshare"):
        self.issuer = issuer
        self.audience = audience
        self.keys: dict[str, SigningKey] = {}
        #: kids of ``keys`` the JWKS lists (a key can sign without being published).
        self.published: list[str] = []
        #: Raw JWK objects listed after the published keys (odd or hostile entries).
        self.extra: list[dict[str, Any]] = []
        #: What the JWKS answers: 200 with the keys, or this status with no keys.
        self.status = 200
        self.cache_control: str | None = "max-age=3600"
        #: When set, the JWKS answers 302 to this URL (relative or absolute) instead.
        self.redirect_to: str | None = None
        #: When set, the JWKS answers these bytes instead of the key set.
        self.body: bytes | None = None
        #: Fetches of the JWKS so far.
        self.fetches = 0
        #: When set, each fetch waits for it before answering (to pile up concurrent misses).
        self.hold: asyncio.Event | None = None
        #: Set by each fetch as it arrives.
        self.fetched = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def jwks_url(self) -> str:
        return f"http://{HOST}:{self.port}/jwks.json"

    # ---------------------------------------------------------------- server

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        self.fetched.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        return web.json_response(self.document(), headers=headers)

    async def _jwks_moved(self, request: web.Request) -> web.StreamResponse:
        """Where a same-origin redirect leads: the key set, counted as a fetch too."""
        self.redirect_to = None
        return await self._jwks(request)

    def document(self) -> dict[str, Any]:
        keys = [public_jwk(self.keys[k].private, self.keys[k].alg, k) for k in self.published]
        return {"keys": keys + self.extra}

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_get("/moved/jwks.json", self._jwks_moved)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop answering at all (connections are refused); ``start`` again serves on the
        same port."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.hold is not None:
            self.hold.set()
        await self.stop()

    # ------------------------------------------------------------------ keys

    def add_key(self, alg: str = "ES256", *, publish: bool = True, rsa_bits: int = 2048) -> str:
        kid = uuid.uuid4().hex[:12]
        self.keys[kid] = SigningKey(kid, alg, new_private_key(alg, rsa_bits))
        if publish:
            self.published.append(kid)
        return kid

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "alice",
            "iat": now,
            "exp": now + 600,
            "scope": "files:read files:write",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        kid: str | None = None,
        *,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token signed with key ``kid`` (the first key by default); a claim passed as
        None is left out."""
        key = self.keys[kid or next(iter(self.keys))]
        extra = {k: v for k, v in ({"kid": key.kid} | (headers or {})).items() if v is not None}
        return jwt.encode(
            self.claims(**claims), key.private, algorithm=alg or key.alg, headers=extra
        )
