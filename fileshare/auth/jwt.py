"""Bearer tokens (JWT, RFC 7519) from trusted issuers: an external identity provider's, or
fileshare's own token endpoint's.

The token's unverified ``iss`` only picks which ``TrustedIssuer`` judges it; everything is
then checked against that issuer's settings, in this order: the header's ``alg`` is one the
issuer allows (asymmetric only: never ``none``, never HS*), the ``kid`` names a key the
issuer publishes, the key is of that algorithm (PyJWT binds a key to one algorithm; checked
here too, so a key of one type can never be taken for another), the signature, then
``exp``, ``nbf`` and ``iat`` (with the issuer's leeway; an ``iat`` in the future is refused),
``iss`` and ``aud``.

Claims become a ``Principal``: ``sub`` is the subject; the acting client is the first of
``client_id``/``azp`` present; scopes come from the issuer's scope claim (or ``scp``), capped
by the role; the role from the role claim (absent: the issuer's default; a role fileshare
does not know is refused, not guessed); the owner namespace from the owner claim, else
``sub``. For fileshare's own issuer ``sub`` is a registered client, read on every request so
that revoking it stops its tokens at once.

Verifying a signature costs 0.1 to 0.5 ms of CPU (ES256, RS256 on this machine kind, see
``bench/auth.py``): fine on the event loop (a thread hop would cost about as much, and the
signature code holds the GIL), but a tenth of what a small upload costs fileshare in all. A
client sends the same token with every request for its whole lifetime, so a token verified
once is remembered (by its SHA-256, until its ``exp``): a repeat only has its times checked
again and its key confirmed to be still one its issuer publishes — a key gone from the
issuer's set takes its tokens with it, as on the first check. Registered clients are still
read from the index on every request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jwt
import structlog

from fileshare import errors
from fileshare.auth.base import looks_like_jwt
from fileshare.auth.principal import Principal, Role, capped, parse_scopes
from fileshare.auth.trust import ASYMMETRIC, KeysUnavailable, TrustedIssuer
from fileshare.boundary import index_call
from fileshare.index.identity import IdentityStore
from fileshare.index.tables import OWNER_MAX

log = structlog.get_logger(__name__)

#: Longer credentials are refused unparsed (an ingress caps headers at 8 to 16 KiB anyway).
MAX_TOKEN_LENGTH = 16 * 1024
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
#: ``typ`` values of an access token; an absent ``typ`` is accepted too. Anything else (an
#: ID token's ``JWT`` is fine, a ``dpop+jwt`` proof or a ``logout+jwt`` is not) is refused.
ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt", "application/jwt"})
#: The JWK key type each algorithm family signs with, and an EC algorithm's curve.
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CURVE = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
#: Verified tokens remembered at most (then the expired ones go, or all of them).
REMEMBERED_MAX = 10_000


def _refuse(reason: str) -> errors.Unauthenticated:
    return errors.Unauthenticated(reason)


def _segment(text: str) -> dict[str, Any]:
    """One base64url JSON segment of a compact JWS, as an object."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _refuse("the bearer token is malformed") from None
    if not isinstance(value, dict):
        raise _refuse("the bearer token is malformed")
    return value


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of ``token``, unverified: only to choose who verifies it."""
    if len(token) > MAX_TOKEN_LENGTH or not looks_like_jwt(token):
        raise _refuse("the bearer token is malformed")
    header, claims, _ = token.split(".")
    return _segment(header), _segment(claims)


def key_fits(key: jwt.PyJWK, alg: str) -> bool:
    """Whether ``key`` is one that ``alg`` signs with: its bound algorithm, its JWK type and
    (for EC) its curve."""
    if key.algorithm_name != alg or key.key_type != _KEY_TYPE.get(alg[:2]):
        return False
    curve = _CURVE.get(alg)
    return curve is None or getattr(getattr(key.key, "curve", None), "name", None) == curve


def _name(value: object, what: str) -> str:
    """A claim used as a name (subject, client, owner): a short printable string."""
    if not isinstance(value, str) or not value or len(value) > OWNER_MAX or not value.isprintable():
        raise _refuse(f"the token's {what} claim is not a usable name")
    return value


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # JSON allows NaN and Infinity (Python parses them): an exp of Infinity never expires.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(f"the token's {name!r} claim is not a time")
    return float(value)


def check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    """``exp``, ``nbf`` and ``iat`` against ``now``, each with ``leeway`` seconds of skew."""
    exp = _time(claims, "exp")
    if exp is not None and now >= exp + leeway:
        raise _refuse("the token has expired")
    nbf = _time(claims, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise _refuse("the token is not valid yet")
    iat = _time(claims, "iat")
    if iat is not None and iat > now + leeway:
        # issued "later": a clock far off, or a token made to outlive its lifetime
        raise _refuse("the token is not valid yet")


@dataclass(frozen=True)
class _Verified:
    issuer: TrustedIssuer
    kid: str | None
    key: jwt.PyJWK
    claims: Mapping[str, Any]
    #: Forgotten after this (``exp`` + leeway).
    until: float


class JwtAuthenticator:
    """The ``Authenticator`` of bearer tokens, over the issuers a deployment trusts."""

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        identity: IdentityStore | None = None,
        bootstrap: Mapping[str, Principal] | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        by_name: dict[str, TrustedIssuer] = {}
        for issuer in issuers:
            if issuer.issuer in by_name:
                raise ValueError(f"issuer {issuer.issuer} is trusted twice")
            if issuer.registered_clients and identity is None:
                raise ValueError(f"issuer {issuer.issuer} needs the identity store")
            by_name[issuer.issuer] = issuer
        self._issuers: Mapping[str, TrustedIssuer] = by_name
        self._identity = identity
        #: The principals of FILESHARE_API_KEYS by name: clients of fileshare's own token
        #: endpoint too, though not rows of the index (``auth.issuer``).
        self._bootstrap = dict(bootstrap or {})
        self._now = now
        self._verified: dict[bytes, _Verified] = {}

    @property
    def issuers(self) -> Sequence[TrustedIssuer]:
        return list(self._issuers.values())

    def accepts(self, credential: str) -> bool:
        return looks_like_jwt(credential)

    async def authenticate(self, credential: str) -> Principal:
        digest = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()
        known = self._verified.get(digest)
        if known is not None and await self._still_valid(known):
            return await self._principal(known.issuer, known.claims)
        header, claims = unverified(credential)
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _refuse("the token's issuer is not trusted")
        key, claims = await self.verify(issuer, header, credential)
        principal = await self._principal(issuer, claims)
        if not issuer.registered_clients:
            await self._check_separate(principal)
        self._remember(digest, issuer, header.get("kid"), key, claims)
        return principal

    async def _check_separate(self, principal: Principal) -> None:
        """An external token's subject and owner must not be names fileshare gave someone
        else (a bootstrap principal, a registered client): its ``sub`` would take their
        files and grants. Checked when a token is first verified; the registry refuses new
        clients named like bootstrap principals, not like every external subject, so a
        client registered later under a remembered token's name is caught at its next
        verification (at most one token lifetime)."""
        for name in {principal.subject, principal.owner}:
            taken = name in self._bootstrap
            if not taken and self._identity is not None:
                taken = await index_call(self._identity.client(name)) is not None
            if taken:
                raise _refuse("the token's subject or owner is a name fileshare has given")

    async def _still_valid(self, known: _Verified) -> bool:
        """A remembered token: its times hold now (else ``Unauthenticated``), and its key is
        still one its issuer publishes (else False: it is verified again, and refused)."""
        check_times(known.claims, self._now(), known.issuer.leeway)
        try:
            current = await known.issuer.keys.key(known.kid)
        except KeysUnavailable:
            return False
        return current is known.key or (
            current is not None
            and current.algorithm_name == known.key.algorithm_name
            and current.key == known.key.key
        )

    def _remember(
        self,
        digest: bytes,
        issuer: TrustedIssuer,
        kid: str | None,
        key: jwt.PyJWK,
        claims: Mapping[str, Any],
    ) -> None:
        exp = _time(claims, "exp")
        if exp is None:
            return
        now = self._now()
        if len(self._verified) >= REMEMBERED_MAX:
            for d in [d for d, v in self._verified.items() if v.until <= now]:
                del self._verified[d]
            if len(self._verified) >= REMEMBERED_MAX:
                self._verified.clear()  # bounded: the next requests verify once more
        self._verified[digest] = _Verified(issuer, kid, key, claims, exp + issuer.leeway)

    async def verify(
        self, issuer: TrustedIssuer, header: Mapping[str, Any], token: str
    ) -> tuple[jwt.PyJWK, dict[str, Any]]:
        """The key that signed ``token`` and its claims, verified against ``issuer``;
        ``Unauthenticated`` if any check fails."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC or alg not in issuer.algorithms:
            raise _refuse("the token's signature algorithm is not accepted")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES):
            raise _refuse("the token is not an access token")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse("the bearer token is malformed")
        try:
            key = await issuer.keys.key(kid)
        except KeysUnavailable as exc:
            # Fail closed: nothing is accepted that could not be checked.
            log.warning("jwt.keys_unavailable", issuer=issuer.issuer, error=str(exc))
            raise _refuse("the token's issuer cannot be reached to check it") from None
        if key is None:
            raise _refuse("the token's signing key is not one its issuer publishes")
        if not key_fits(key, alg):
            raise _refuse("the token's algorithm does not match its signing key")
        try:
            verified: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                options={
                    "require": REQUIRED_CLAIMS,
                    # The times are checked by check_times, against self._now: one rule for
                    # a first check and for a remembered token.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidAudienceError:
            raise _refuse("the token is not meant for this service (aud)") from None
        except jwt.InvalidIssuerError:
            raise _refuse("the token's issuer is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise _refuse("the token's signature is not valid") from None
        except jwt.PyJWTError:
            raise _refuse("the bearer token is not valid") from None
        check_times(verified, self._now(), issuer.leeway)
        return key, verified

    async def _principal(self, issuer: TrustedIssuer, claims: Mapping[str, Any]) -> Principal:
        subject = _name(claims["sub"], "sub")
        scopes = parse_scopes(claims.get(issuer.scope_claim))
        if issuer.scope_claim == "scope" and "scope" not in claims:
            scopes = parse_scopes(claims.get("scp"))  # Azure AD, Okta: a list in scp
        if issuer.scope_aliases:
            scopes = frozenset(issuer.scope_aliases.get(s, s) for s in scopes)
        if issuer.registered_clients:
            return await self._registered(issuer, subject, scopes)
        client = subject
        for name in issuer.client_claims:
            if name in claims:
                client = _name(claims[name], name)
                break
        role = issuer.default_role
        if issuer.role_claim in claims:
            try:
                role = Role(claims[issuer.role_claim])
            except (ValueError, TypeError):
                raise _refuse("the token's role is not one fileshare knows") from None
        if role not in issuer.allowed_roles:
            raise _refuse("the token's role is not one this issuer may grant")
        owner = subject
        if issuer.owner_claim is not None and issuer.owner_claim in claims:
            owner = _name(claims[issuer.owner_claim], issuer.owner_claim)
        return Principal(
            subject=subject,
            client=client,
            role=role,
            scopes=capped(role, scopes),
            owner=owner,
            method="jwt",
            issuer=issuer.issuer,
        )

    async def _registered(
        self, issuer: TrustedIssuer, client_id: str, scopes: frozenset[str]
    ) -> Principal:
        """A token of fileshare's own issuer: its client as the index has it now."""
        assert self._identity is not None  # checked in __init__
        known = self._bootstrap.get(client_id)
        if known is not None:
            # Configured, not registered: it lasts as long as its key is in the settings.
            return replace(
                known,
                scopes=capped(known.role, scopes & known.scopes),
                method="jwt",
                issuer=issuer.issuer,
            )
        client = await index_call(self._identity.client(client_id))
        if client is None or not client.active:
            raise _refuse("the token's client is unknown or revoked")
        return Principal(
            subject=client.id,
            client=client.id,
            role=client.role,
            # What the token was issued with, less what the client lost since.
            scopes=capped(client.role, scopes & client.scopes),
            owner=client.owner,
            method="jwt",
            issuer=issuer.issuer,
            registered=True,
            policy=client.policy,
        )
