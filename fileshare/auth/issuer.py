"""fileshare's own OAuth 2.0 token endpoint: the client credentials grant (RFC 6749 §4.4).

A client authenticates in exactly one of three ways (RFC 6749 §2.3, RFC 7523 §2.2):
``client_secret_basic`` (HTTP Basic, id and secret form-urlencoded first, §2.3.1),
``client_secret_post`` (``client_id`` and ``client_secret`` in the body), or
``private_key_jwt`` (a short-lived JWT it signed with a key of its registered JWK Set, used
once). Clients are the registered ones of the index and the bootstrap principals of
``FILESHARE_API_KEYS`` (id = the principal's name, secret = its key), so that the run
command's development key can get a token too.

The token is an ES256 JWT (RFC 9068's profile): ``iss`` is fileshare's public base URL,
``sub`` and ``client_id`` the client, ``scope`` what it asked for (at most what it is
registered for, capped by its role), ``role`` its role. Every token issued and every refusal
is a row of the audit trail; the token itself never is, only its ``jti``.

Errors are RFC 6749 §5.2's (``OAuthError``), not problem+json: OAuth client libraries
read ``error``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

import jwt
import structlog

from fileshare.audit import Action, Actor, Result
from fileshare.auth.keys import BootstrapKeys, bootstrap_principal
from fileshare.auth.principal import Principal, capped, scope_text
from fileshare.auth.secrets import Verified, hash_secret, new_secret
from fileshare.auth.signing import ActiveKey, Signer
from fileshare.auth.trust import ASYMMETRIC
from fileshare.boundary import index_call
from fileshare.index.audit import AuditStore
from fileshare.index.identity import Client, IdentityStore
from fileshare.index.signing import SigningKeyStore

log = structlog.get_logger(__name__)

GRANT_CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Names of authentication methods (RFC 7591 §2), not secrets.
SECRET_BASIC = "client_secret_basic"  # noqa: S105
SECRET_POST = "client_secret_post"  # noqa: S105
PRIVATE_KEY_JWT = "private_key_jwt"
AUTH_METHODS = (SECRET_BASIC, SECRET_POST, PRIVATE_KEY_JWT)
#: The RFC 6749 §5.2 codes this endpoint answers with (``invalid_grant`` is not among them:
#: the client credentials grant carries no grant to be invalid; a bad client assertion is
#: ``invalid_client``, RFC 7521 §4.2.1).
OAUTH_ERRORS = (
    "invalid_request",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
)
#: The challenge of every ``invalid_client`` answer: RFC 6749 §5.2 asks for it when the client
#: used Basic, and RFC 9110 §11.6.1 for every 401; Basic is the header scheme this endpoint
#: takes.
CHALLENGE = 'Basic realm="fileshare"'
#: The longest-lived client assertion taken (``exp`` minus now): RFC 7523 §3 wants a short
#: one, and the replay store keeps each ``jti`` this long.
MAX_ASSERTION_LIFETIME = timedelta(minutes=5)
#: Clock skew tolerated on an assertion's ``exp``, ``nbf``, ``iat``.
LEEWAY = timedelta(seconds=30)
#: RFC 6749 §3.3 ``scope-token``: printable ASCII but space, ``"`` and ``\``.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
#: Longest client id and ``jti`` the index keeps (``clients.id``, ``used_assertions.jti``).
_ID_MAX = 255

Clock = Callable[[], datetime]


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer: ``error`` code, a description, and its status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": CHALLENGE} if self.status == 401 else {}

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


#: What every client assertion that did not verify is told, whatever the reason.
_NOT_VALID = "the client assertion is not valid for any registered client key"


@functools.cache
def _dummy_hash() -> str:
    """A hash no secret matches, verified for unknown client ids (see ``_registered``)."""
    return hash_secret(new_secret())


def invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


@dataclass(frozen=True)
class TokenRequest:
    """A token request as received: the body's parameters (in order, as sent), the
    ``Authorization`` header, and where it came from (for the audit trail)."""

    form: Sequence[tuple[str, str]] = field(repr=False)
    authorization: str | None = field(default=None, repr=False)
    source: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    access_token: str = field(repr=False)
    expires_in: int
    scope: str
    jti: str

    def body(self) -> dict[str, Any]:
        """RFC 6749 §5.1."""
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


def parameters(form: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The request's parameters: empty ones are omitted and none may repeat (RFC 6749 §3.2)."""
    found: dict[str, str] = {}
    for name, value in form:
        if value == "":
            continue
        if name in found:
            raise invalid_request("a parameter is repeated")
        found[name] = value
    return found


def basic_credentials(authorization: str) -> tuple[str, str]:
    """(client id, secret) of an ``Authorization: Basic`` header: base64 of ``id:secret``,
    each form-urlencoded first (RFC 6749 §2.3.1, so ``:`` and non-ASCII survive)."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client("use HTTP Basic (or the body) for client authentication")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        raw_id, sep, raw_secret = decoded.partition(":")
        if not sep:
            raise ValueError("no colon")
        client_id = unquote_plus(raw_id, errors="strict")
        secret = unquote_plus(raw_secret, errors="strict")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise invalid_client("the Basic credentials are not base64 of id:secret") from None
    if not client_id:
        raise invalid_client("the Basic credentials name no client")
    return client_id, secret


@dataclass
class _Attempt:
    """What is known of a request as it is checked: for the audit row of a refusal."""

    method: str | None = None
    client_id: str | None = None
    principal: Principal | None = None


class TokenIssuer:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        lifetime: timedelta,
        signer: Signer,
        keys: SigningKeyStore,
        identity: IdentityStore,
        api_keys: Mapping[str, str],
        admins: Collection[str],
        audit: AuditStore,
        verified: Verified | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.issuer = issuer
        self.token_endpoint = f"{issuer}/oauth/token"
        self._audience = audience
        self._lifetime = int(lifetime.total_seconds())
        self._signer = signer
        self._keys = keys
        self._identity = identity
        # FILESHARE_API_KEYS: each principal is a client, its key the secret.
        self._bootstrap = BootstrapKeys(api_keys, admins)
        self._bootstrap_names = frozenset(api_keys)
        self._admins = frozenset(admins)
        self._audit = audit
        # Two argon2 verifications at once: what two cores can do, the rest queue.
        self._verified = verified or Verified(concurrency=2)
        self._clock = clock or (lambda: datetime.now(UTC))

    async def issue(self, request: TokenRequest) -> IssuedToken:
        """A token for the client the request authenticates, or ``OAuthError``. Raises
        ``errors.ServiceUnavailable`` when the index (or the audit trail) cannot be had:
        no token is issued that the trail does not record."""
        attempt = _Attempt()
        try:
            token, principal = await self._issue(request, attempt)
        except OAuthError as exc:
            await self._refused(request, attempt, exc)
            raise
        event = self._actor(request, principal).event(
            Action.TOKEN_ISSUE,
            detail={"scope": token.scope, "jti": token.jti, "method": attempt.method},
        )
        await index_call(self._audit.record(event))
        return token

    async def _issue(
        self, request: TokenRequest, attempt: _Attempt
    ) -> tuple[IssuedToken, Principal]:
        params = parameters(request.form)
        methods = self._methods(request, params)
        grant = params.get("grant_type")
        if grant is None:
            raise invalid_request("grant_type is missing")
        if grant != GRANT_CLIENT_CREDENTIALS:
            raise OAuthError(
                "unsupported_grant_type", f"only {GRANT_CLIENT_CREDENTIALS} is supported"
            )
        if not methods:
            raise invalid_client(
                "no client authentication: use HTTP Basic, client_secret, or client_assertion"
            )
        attempt.method = methods[0]
        principal = await self._authenticate(methods[0], request, params, attempt)
        attempt.principal = principal
        if not principal.scopes:
            raise OAuthError("unauthorized_client", "this client may be granted no scope")
        scopes = self._scopes(principal, params.get("scope"))
        key = await index_call(self._signer.key())
        return self._token(principal, scopes, key), principal

    def _methods(self, request: TokenRequest, params: dict[str, str]) -> list[str]:
        methods = []
        if request.authorization is not None:
            methods.append(SECRET_BASIC)
        if "client_secret" in params:
            methods.append(SECRET_POST)
        if "client_assertion" in params or "client_assertion_type" in params:
            methods.append(PRIVATE_KEY_JWT)
        if len(methods) > 1:
            raise invalid_request(
                f"more than one client authentication method ({', '.join(methods)}): use one"
            )
        return methods

    # ------------------------------------------------------------- authentication

    async def _authenticate(
        self, method: str, request: TokenRequest, params: dict[str, str], attempt: _Attempt
    ) -> Principal:
        if method == PRIVATE_KEY_JWT:
            return await self._assertion(params, attempt)
        if method == SECRET_BASIC:
            assert request.authorization is not None
            client_id, secret = basic_credentials(request.authorization)
            attempt.client_id = client_id[:_ID_MAX]
            if params.get("client_id", client_id) != client_id:
                raise invalid_request("client_id differs from the Basic credentials' id")
        else:
            client_id, secret = params.get("client_id", ""), params["client_secret"]
            attempt.client_id = client_id[:_ID_MAX] or None
            if not client_id:
                raise invalid_request("client_secret needs client_id")
        return await self._secret(client_id, secret, method)

    async def _secret(self, client_id: str, secret: str, method: str) -> Principal:
        if client_id in self._bootstrap_names:
            # Constant time over every bootstrap key; the key must be this name's own.
            found = self._bootstrap.match(secret)
            if found is None or found.subject != client_id:
                raise invalid_client("the client id or secret is not valid")
            return bootstrap_principal(client_id, self._admins)
        client = await self._registered(client_id, secret)
        if client.secret_hash is None or not await self._verified.check(
            f"client:{client.id}", client.secret_hash, secret
        ):
            raise invalid_client("the client id or secret is not valid")
        # Checked after the secret: nobody without it learns that a client is revoked.
        if not client.active:
            raise invalid_client("the client is revoked")
        return _principal(client, method)

    async def _registered(self, client_id: str, secret: str | None = None) -> Client:
        if not client_id or len(client_id) > _ID_MAX:
            raise invalid_client("the client id or secret is not valid")
        client = await index_call(self._identity.client(client_id))
        if client is None:
            if secret is not None:
                # As slow as a wrong secret of a real client: the time of the answer must
                # not tell which client ids exist.
                await self._verified.check("client:?", _dummy_hash(), secret)
            raise invalid_client("the client id or secret is not valid")
        return client

    async def _assertion(self, params: dict[str, str], attempt: _Attempt) -> Principal:
        """RFC 7523 §3 for client authentication (RFC 7521 §4.2)."""
        kind = params.get("client_assertion_type")
        assertion = params.get("client_assertion")
        if kind is None or assertion is None:
            raise invalid_request("client_assertion_type and client_assertion go together")
        if kind != JWT_BEARER:
            raise invalid_client(f"client_assertion_type must be {JWT_BEARER}")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise invalid_client("the client assertion is not a JWT") from None
        alg, iss, sub = header.get("alg"), claims.get("iss"), claims.get("sub")
        if not isinstance(iss, str) or not iss or iss != sub:
            raise invalid_client("the assertion's iss and sub must both be the client id")
        attempt.client_id = iss[:_ID_MAX]
        if params.get("client_id", iss) != iss:
            raise invalid_client("client_id is not the assertion's issuer")
        if alg not in ASYMMETRIC:
            raise invalid_client(
                f"the assertion's alg must be one of {', '.join(sorted(ASYMMETRIC))}"
            )
        # One answer for every failure before the signature holds (a bootstrap name, an
        # unknown or revoked client, no fitting key): nobody learns which clients exist.
        if iss in self._bootstrap_names:
            raise invalid_client(_NOT_VALID)
        try:
            client = await self._registered(iss)
        except OAuthError:
            raise invalid_client(_NOT_VALID) from None
        verified = self._verify_assertion(assertion, str(alg), header.get("kid"), client)
        if not client.active:
            raise invalid_client("the client is revoked")
        exp = datetime.fromtimestamp(int(verified["exp"]), UTC)
        now = self._clock()
        if exp - now > MAX_ASSERTION_LIFETIME + LEEWAY:
            raise invalid_client(
                f"the assertion lives too long: at most {int(MAX_ASSERTION_LIFETIME.seconds)} s"
            )
        jti = verified["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= _ID_MAX:
            raise invalid_client("the assertion's jti must be a string of at most 255 characters")
        # Kept until the assertion expires (with the leeway it was accepted with).
        if not await index_call(self._keys.use_assertion(client.id, jti, exp + LEEWAY, now)):
            raise invalid_client("the assertion was used before (its jti is spent)")
        return _principal(client, PRIVATE_KEY_JWT)

    def _verify_assertion(
        self, assertion: str, alg: str, kid: object, client: Client
    ) -> dict[str, Any]:
        candidates = list(_client_keys(client, alg, kid))
        if not candidates:
            raise invalid_client(_NOT_VALID)
        for key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    assertion,
                    key=key,
                    algorithms=[alg],
                    audience=[self.token_endpoint, self.issuer],
                    issuer=client.id,
                    leeway=LEEWAY,
                    options={"require": ["iss", "sub", "aud", "exp", "jti"]},
                )
            except jwt.InvalidSignatureError:
                continue  # perhaps another key of the set
            except jwt.ExpiredSignatureError:
                raise invalid_client("the assertion has expired") from None
            except jwt.InvalidAudienceError:
                raise invalid_client(f"the assertion's aud must be {self.token_endpoint}") from None
            except jwt.MissingRequiredClaimError as exc:
                raise invalid_client(f"the assertion has no {exc.claim} claim") from None
            except jwt.PyJWTError as exc:
                raise invalid_client(f"the assertion is not valid: {_short(exc)}") from None
            return claims
        raise invalid_client(_NOT_VALID)

    # ------------------------------------------------------------ scopes, tokens

    def _scopes(self, principal: Principal, requested: str | None) -> frozenset[str]:
        if requested is None:
            return principal.scopes
        asked = requested.split(" ")
        if not all(_SCOPE_TOKEN.fullmatch(s) for s in asked):
            raise OAuthError("invalid_scope", "scope is a space-separated list of scope names")
        beyond = set(asked) - principal.scopes
        if beyond:
            names = " ".join(sorted(beyond))[:200]
            raise OAuthError("invalid_scope", f"this client may not be granted: {names}")
        return frozenset(asked)

    def _token(self, principal: Principal, scopes: frozenset[str], key: ActiveKey) -> IssuedToken:
        now = int(self._clock().timestamp())
        jti = secrets.token_urlsafe(16)
        scope = scope_text(scopes)
        claims = {
            "iss": self.issuer,
            "sub": principal.subject,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": now + self._lifetime,
            "jti": jti,
            "scope": scope,
            "client_id": principal.client,
            "role": principal.role.value,
        }
        # RFC 9068: an access token says it is one, so no other kind of JWT passes for it.
        headers = {"kid": key.kid, "typ": "at+jwt"}
        # On the loop: an ES256 signature takes tens of microseconds.
        token = jwt.encode(claims, key.private, algorithm=key.alg, headers=headers)
        return IssuedToken(token, self._lifetime, scope, jti)

    async def _refused(self, request: TokenRequest, attempt: _Attempt, exc: OAuthError) -> None:
        """The audit row of a refusal: ``auth.fail`` before the client was authenticated,
        a denied ``token.issue`` after (it asked for more than it may have). Best effort:
        the refusal stands whether or not the row is written."""
        detail: dict[str, Any] = {"error": exc.error, "route": "/oauth/token"}
        if attempt.method:
            detail["method"] = attempt.method
        if attempt.principal is None:
            if attempt.client_id:
                detail["client_id"] = attempt.client_id
            event = self._actor(request, None).event(Action.AUTH_FAIL, Result.DENIED, detail=detail)
        else:
            event = self._actor(request, attempt.principal).event(
                Action.TOKEN_ISSUE, Result.DENIED, detail=detail
            )
        try:
            await self._audit.record(event)
        except Exception as failure:
            log.warning(
                "audit.write_failed", action=str(event.action), error=type(failure).__name__
            )

    def _actor(self, request: TokenRequest, principal: Principal | None) -> Actor:
        return Actor(
            principal,
            principal.owner if principal else None,
            source=request.source,
            request_id=request.request_id,
        )


def _principal(client: Client, method: str) -> Principal:
    return Principal(
        subject=client.id,
        client=client.id,
        role=client.role,
        scopes=capped(client.role, client.scopes),
        owner=client.owner,
        method=method,
        registered=True,
        policy=client.policy,
    )


def _client_keys(client: Client, alg: str, kid: object) -> Sequence[jwt.PyJWK]:
    """The client's registered public keys that could have signed with ``alg`` (and are
    named ``kid``, when the assertion names one). Symmetric keys are never used."""
    found: list[jwt.PyJWK] = []
    members = (client.jwks or {}).get("keys")
    for jwk in members if isinstance(members, list) else ():
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct":
            continue
        if kid is not None and jwk.get("kid") != kid:
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
            continue
        try:
            found.append(jwt.PyJWK(jwk, alg))
        except jwt.PyJWTError:
            continue  # not a key for this algorithm (an EC key and RS256, a bad member)
    return found


def _short(exc: BaseException) -> str:
    return str(exc)[:120] or type(exc).__name__
