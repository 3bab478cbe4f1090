"""The JWT validator and JWKS fetching, against a real HTTP server serving the keys
(``tests/idp.py``: the test decides which keys it lists, whether and when it answers).

Clocks are injected: the JWKS cache's clock is a ``FakeClock`` the tests move, never a
sleep. Token times (exp, nbf, iat) are set relative to the real time, which PyJWT reads.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization

from fileshare import errors
from fileshare.auth.jwks import (
    DEFAULT_MAX_AGE,
    MAX_BODY,
    MAX_MAX_AGE,
    MIN_MAX_AGE,
    RemoteJwks,
    client_session,
    max_age,
)
from fileshare.auth.jwt import JwtAuthenticator
from fileshare.auth.principal import Role, Scope
from fileshare.auth.trust import TrustedIssuer
from fileshare.index.engine import open_sql_index
from fileshare.index.identity import Client, IdentityStore
from tests.idp import Idp, b64json, hs256, public_jwk

AUDIENCE = "fileshare"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    async with Idp(audience=AUDIENCE) as server:
        server.add_key("ES256")
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with client_session() as session:
        yield session


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def source(idp: Idp, http: aiohttp.ClientSession, clock: FakeClock, **kw: Any) -> RemoteJwks:
    return RemoteJwks(idp.jwks_url, http, issuer=idp.issuer, clock=clock, **kw)


def trusted(keys: Any, idp: Idp, **overrides: Any) -> TrustedIssuer:
    settings: dict[str, Any] = {
        "issuer": idp.issuer,
        "audiences": (AUDIENCE,),
        "algorithms": ("ES256", "RS256"),
        "keys": keys,
    }
    return TrustedIssuer(**(settings | overrides))


@pytest.fixture
async def keys(
    idp: Idp, http: aiohttp.ClientSession, clock: FakeClock
) -> AsyncIterator[RemoteJwks]:
    jwks = source(idp, http, clock)
    yield jwks
    await jwks.close()  # a background refresh still running


@pytest.fixture
def auth(idp: Idp, keys: RemoteJwks) -> JwtAuthenticator:
    return JwtAuthenticator([trusted(keys, idp, owner_claim="patient")])


async def refused(auth: JwtAuthenticator, token: str, reason: str) -> None:
    assert auth.accepts(token) or reason == "malformed"
    with pytest.raises(errors.Unauthenticated, match=reason) as caught:
        await auth.authenticate(token)
    # The reason goes to the client and the audit trail: never the token or a part of it.
    for part in [token, *(p for p in token.split(".") if len(p) > 8)]:
        assert part not in caught.value.detail


# ---------------------------------------------------------------- valid tokens


async def test_a_valid_token_maps_its_claims_to_a_principal(
    idp: Idp, auth: JwtAuthenticator
) -> None:
    token = idp.token(
        sub="user-17", azp="ward-app", role="worker", patient="p-42", scope="files:read tags:write"
    )
    principal = await auth.authenticate(token)
    assert principal.subject == "user-17"
    assert principal.client == "ward-app"
    assert principal.role is Role.WORKER
    assert principal.owner == "p-42"
    assert principal.scopes == {Scope.FILES_READ, Scope.TAGS_WRITE}
    assert (principal.method, principal.issuer, principal.registered) == ("jwt", idp.issuer, False)


async def test_defaults_owner_is_sub_client_is_sub_role_is_the_issuers_default(
    idp: Idp, keys: RemoteJwks
) -> None:
    auth = JwtAuthenticator([trusted(keys, idp, default_role=Role.RESEARCHER)])
    principal = await auth.authenticate(idp.token(sub="r-1", scope="files:read files:write"))
    assert (principal.subject, principal.client, principal.owner) == ("r-1", "r-1", "r-1")
    assert principal.role is Role.RESEARCHER
    # a researcher never writes, whatever the token says
    assert principal.scopes == {Scope.FILES_READ}


async def test_client_id_wins_over_azp_and_scp_lists_are_read(
    idp: Idp, auth: JwtAuthenticator
) -> None:
    token = idp.token(scope=None, scp=["files:read", "files:delete"], client_id="c1", azp="c2")
    principal = await auth.authenticate(token)
    assert principal.client == "c1"
    assert principal.scopes == {Scope.FILES_READ, Scope.FILES_DELETE}


async def test_configured_claim_names_are_read(idp: Idp, keys: RemoteJwks) -> None:
    auth = JwtAuthenticator(
        [trusted(keys, idp, scope_claim="perms", role_claim="fs_role", owner_claim="tenant")]
    )
    token = idp.token(
        scope="admin", perms=["files:read", "audit:read"], fs_role="admin", tenant="t-9"
    )
    principal = await auth.authenticate(token)
    assert principal.scopes == {Scope.FILES_READ, Scope.AUDIT_READ}  # not "scope"
    assert (principal.role, principal.owner) == (Role.ADMIN, "t-9")


async def test_scopes_beyond_the_role_are_dropped(idp: Idp, auth: JwtAuthenticator) -> None:
    token = idp.token(
        role="participant", scope="files:read files:write admin audit:read links:write openid"
    )
    principal = await auth.authenticate(token)
    assert principal.scopes == {Scope.FILES_READ, Scope.FILES_WRITE}


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA"])
async def test_every_asymmetric_algorithm_the_issuer_allows_verifies(
    idp: Idp, keys: RemoteJwks, alg: str
) -> None:
    kid = idp.add_key(alg)
    auth = JwtAuthenticator([trusted(keys, idp, algorithms=(alg,))])
    assert (await auth.authenticate(idp.token(kid))).subject == "alice"


async def test_a_key_without_kid_is_used_when_it_is_the_only_one(
    idp: Idp, keys: RemoteJwks
) -> None:
    only = idp.published[0]
    idp.published.clear()
    idp.extra.append({k: v for k, v in _jwk(idp, only).items() if k != "kid"})
    auth = JwtAuthenticator([trusted(keys, idp)])
    assert (await auth.authenticate(idp.token(only, headers={"kid": None}))).subject == "alice"


def _jwk(idp: Idp, kid: str) -> dict[str, Any]:
    key = idp.keys[kid]
    return public_jwk(key.private, key.alg, kid)


# ------------------------------------------------------------ refused tokens


async def test_expired_and_the_leeway(idp: Idp, auth: JwtAuthenticator) -> None:
    now = int(time.time())
    await refused(auth, idp.token(iat=now - 700, exp=now - 60), "expired")
    # 10 s late is inside the issuer's 30 s leeway for clock skew
    assert (await auth.authenticate(idp.token(iat=now - 600, exp=now - 10))).subject == "alice"


async def test_not_yet_valid(idp: Idp, auth: JwtAuthenticator) -> None:
    now = int(time.time())
    await refused(auth, idp.token(nbf=now + 120), "not valid yet")
    assert (await auth.authenticate(idp.token(nbf=now + 5))).subject == "alice"


async def test_issued_in_the_future(idp: Idp, auth: JwtAuthenticator) -> None:
    now = int(time.time())
    await refused(auth, idp.token(iat=now + 120, exp=now + 720), "not valid yet")


@pytest.mark.parametrize("claim", ["exp", "iat", "aud", "sub"])
async def test_required_claims(idp: Idp, auth: JwtAuthenticator, claim: str) -> None:
    await refused(auth, idp.token(**{claim: None}), f"no '{claim}' claim")


async def test_an_untrusted_issuer_is_refused_before_any_fetch(
    idp: Idp, auth: JwtAuthenticator
) -> None:
    await refused(auth, idp.token(iss="https://evil.example.test/"), "issuer is not trusted")
    await refused(auth, idp.token(iss=None), "issuer is not trusted")
    listed = idp.claims(iss=[idp.issuer])  # PyJWT will not sign that: by hand
    header = {"alg": "ES256", "kid": idp.published[0]}
    await refused(auth, f"{b64json(header)}.{b64json(listed)}.c2ln", "issuer is not trusted")
    assert idp.fetches == 0


async def test_a_token_naming_another_trusted_issuer_needs_that_issuers_keys(
    idp: Idp, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with Idp("https://other.example.test/", AUDIENCE) as other:
        other.add_key("ES256")
        auth = JwtAuthenticator(
            [
                trusted(source(idp, http, clock), idp),
                trusted(source(other, http, clock), other),
            ]
        )
        # Signed by idp's key, but claims to come from "other": other's keys judge it.
        forged = idp.token(iss=other.issuer)
        await refused(auth, forged, "signing key is not one its issuer publishes")
        assert (await auth.authenticate(other.token())).issuer == other.issuer


async def test_wrong_audience(idp: Idp, auth: JwtAuthenticator) -> None:
    await refused(auth, idp.token(aud="another-service"), "not meant for this service")
    assert (
        await auth.authenticate(idp.token(aud=["another-service", AUDIENCE]))
    ).subject == "alice"


async def test_bad_signature(idp: Idp, auth: JwtAuthenticator) -> None:
    published = idp.published[0]
    impostor = idp.add_key("ES256", publish=False)
    # signed with a key of the right type that the issuer never published, under its kid
    await refused(auth, idp.token(impostor, headers={"kid": published}), "signature is not valid")
    # a genuine token with one claim changed
    header, claims, signature = idp.token(sub="alice").split(".")
    tampered = json.loads(_unb64(claims)) | {"sub": "admin"}
    await refused(auth, f"{header}.{b64json(tampered)}.{signature}", "signature is not valid")


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_alg_none_is_refused_before_any_fetch(idp: Idp, auth: JwtAuthenticator) -> None:
    claims = idp.claims()
    for alg in ("none", "None", "NONE"):
        token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims)}."
        await refused(auth, token, "algorithm is not accepted")
        # even with a signature segment, and a kid the issuer publishes
        header = {"alg": alg, "kid": idp.published[0]}
        await refused(auth, f"{b64json(header)}.{b64json(claims)}.c2ln", "not accepted")
    assert idp.fetches == 0


async def test_hs256_signed_with_the_rsa_public_key_is_refused(idp: Idp, keys: RemoteJwks) -> None:
    kid = idp.add_key("RS256")
    auth = JwtAuthenticator([trusted(keys, idp, algorithms=("RS256",))])
    assert (await auth.authenticate(idp.token(kid))).subject == "alice"  # the key works for RS256
    assert idp.fetches == 1
    public = idp.keys[kid].private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs1 = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    jwk = json.dumps(_jwk(idp, kid)).encode()
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    for secret in (pem, pkcs1, jwk, _jwk(idp, kid)["n"].encode()):
        await refused(auth, hs256(header, idp.claims(), secret), "algorithm is not accepted")
    # HS512 too; and not one of them reached the keys
    await refused(auth, hs256(header | {"alg": "HS512"}, idp.claims(), pem), "not accepted")
    assert idp.fetches == 1


async def test_an_algorithm_the_issuer_does_not_allow(idp: Idp, keys: RemoteJwks) -> None:
    rsa_kid = idp.add_key("RS256")
    auth = JwtAuthenticator([trusted(keys, idp, algorithms=("ES256",))])
    await refused(auth, idp.token(rsa_kid), "algorithm is not accepted")
    assert idp.fetches == 0
    with pytest.raises(ValueError, match="asymmetric"):
        trusted(keys, idp, algorithms=("ES256", "HS256"))


async def test_a_key_whose_type_or_declared_alg_disagrees_with_the_header(
    idp: Idp, keys: RemoteJwks, clock: FakeClock
) -> None:
    rsa_kid = idp.add_key("RS256")
    ec_kid = idp.published[0]
    auth = JwtAuthenticator([trusted(keys, idp, algorithms=("ES256", "RS256", "PS256"))])
    # an EC signature under the RSA key's kid
    await refused(
        auth, idp.token(ec_kid, headers={"kid": rsa_kid}), "does not match its signing key"
    )
    # PS256 with a key published for RS256: same key type, but the JWK binds RS256
    await refused(auth, idp.token(rsa_kid, alg="PS256"), "does not match its signing key")
    # a JWK that says HS256 on an RSA key, and an oct key: neither is ever a key here
    idp.extra += [
        _jwk(idp, rsa_kid) | {"kid": "rsa-as-hs", "alg": "HS256"},
        {"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
    ]
    for n, kid in enumerate(("rsa-as-hs", "shared")):
        clock.advance(31)  # so that the unknown kid refreshes the set
        await refused(
            auth, idp.token(rsa_kid, headers={"kid": kid}), "not one its issuer publishes"
        )
        assert idp.fetches == 2 + n


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # when signing
async def test_a_short_rsa_key_is_refused(idp: Idp, keys: RemoteJwks) -> None:
    kid = idp.add_key("RS256", rsa_bits=1024)
    auth = JwtAuthenticator([trusted(keys, idp, algorithms=("RS256",))])
    await refused(auth, idp.token(kid), "not valid")


async def test_unknown_role_is_refused(idp: Idp, auth: JwtAuthenticator) -> None:
    for role in ("superuser", ["admin"], 1, None):
        await refused(auth, idp.token(role=role) if role is not None else _null_role(idp), "role")


def _null_role(idp: Idp) -> str:
    key = idp.keys[idp.published[0]]
    claims = idp.claims() | {"role": None}
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})


async def test_names_must_be_short_printable_strings(idp: Idp, auth: JwtAuthenticator) -> None:
    await refused(auth, idp.token(sub=""), "sub")
    await refused(auth, idp.token(sub="x" * 256), "sub")
    await refused(auth, idp.token(sub="a\nb"), "sub")
    await refused(auth, idp.token(patient={"id": 1}), "patient")
    await refused(auth, idp.token(azp=7), "azp")


async def test_a_token_of_another_type_is_refused(idp: Idp, auth: JwtAuthenticator) -> None:
    await refused(auth, idp.token(headers={"typ": "dpop+jwt"}), "not an access token")
    assert (await auth.authenticate(idp.token(headers={"typ": "at+jwt"}))).subject == "alice"


@pytest.mark.parametrize(
    "token",
    [
        "eyJ!!!.eyJ.sig",  # not base64url at all
        "eyJhbGciOiJFUzI1NiIsImtpZCI6.eyJzdWIiOiJ4In0.c2ln",  # header cut short: not JSON
        "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c2ln",  # payload "not json"
        "eyJhbGciOiJFUzI1NiJ9.WzEsMl0.c2ln",  # payload [1,2]: JSON but not an object
        ".eyJzdWIiOiJ4In0.c2ln",  # no header
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0",  # two segments
        "eyJhbGciOiJFUzI1NiJ9." + "A" * 20_000 + ".c2ln",  # too long
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln.extra",
    ],
)
async def test_garbled_tokens_are_malformed(idp: Idp, auth: JwtAuthenticator, token: str) -> None:
    await refused(auth, token, "malformed")
    assert idp.fetches == 0


async def test_a_header_that_is_json_but_wrong(idp: Idp, auth: JwtAuthenticator) -> None:
    claims = b64json(idp.claims())
    for header in ({"kid": idp.published[0]}, {"alg": ["ES256"]}, {"alg": 256}):
        await refused(auth, f"{b64json(header)}.{claims}.c2ln", "algorithm is not accepted")
    await refused(auth, f"{b64json({'alg': 'ES256', 'kid': 7})}.{claims}.c2ln", "malformed")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "1999999999", True])
async def test_times_must_be_finite_numbers(idp: Idp, auth: JwtAuthenticator, value: Any) -> None:
    await refused(auth, idp.token(exp=value), "'exp' claim is not a time")
    await refused(auth, idp.token(nbf=value), "'nbf' claim is not a time")


# ------------------------------------------------------- remembered tokens


class WallClock:
    """The validator's "now", moved by the test (PyJWT's own time checks are off)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature verification (the real ``jwt.decode`` still runs): a spy, since no
    server can tell whether the validator remembered a token."""
    calls: list[str] = []
    real = jwt.decode

    def spy(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", spy)
    return calls


async def test_a_token_is_verified_once_then_remembered(
    idp: Idp, keys: RemoteJwks, decodes: list[str]
) -> None:
    auth = JwtAuthenticator([trusted(keys, idp)])
    token = idp.token(sub="bob")
    for _ in range(5):
        assert (await auth.authenticate(token)).subject == "bob"
    assert decodes == [token]
    other = idp.token(sub="carol")
    assert (await auth.authenticate(other)).subject == "carol"
    assert decodes == [token, other]


async def test_a_remembered_token_still_expires(
    idp: Idp, keys: RemoteJwks, decodes: list[str]
) -> None:
    wall = WallClock()
    auth = JwtAuthenticator([trusted(keys, idp)], now=wall)
    token = idp.token(exp=int(wall.now) + 60)
    assert (await auth.authenticate(token)).subject == "alice"
    wall.now += 60 + 29  # inside the leeway still
    assert (await auth.authenticate(token)).subject == "alice"
    wall.now += 2
    await refused(auth, token, "expired")
    assert decodes == [token]  # refused on the remembered claims, without verifying again


async def test_a_remembered_token_goes_with_its_key(
    idp: Idp, keys: RemoteJwks, clock: FakeClock
) -> None:
    auth = JwtAuthenticator([trusted(keys, idp)])
    old = idp.published[0]
    token = idp.token(old)
    assert (await auth.authenticate(token)).subject == "alice"
    # the IdP drops the key (compromised, say); a token with a new kid makes fileshare look
    clock.advance(31)
    new = idp.add_key("ES256")
    idp.published.remove(old)
    assert (await auth.authenticate(idp.token(new))).subject == "alice"
    # the very same token string, remembered before: refused now
    await refused(auth, token, "not one its issuer publishes")


async def test_a_remembered_token_of_a_revoked_client_is_refused(
    idp: Idp, keys: RemoteJwks, tmp_path: Path
) -> None:
    index = await open_sql_index(url=None, sqlite_path=tmp_path / "index.sqlite3")
    try:
        identity = IdentityStore(index)
        now = datetime.now(UTC)
        client = Client("c-1", Role.PARTICIPANT, frozenset({"files:read"}), "c-1", now)
        await identity.create_client(client, None)
        auth = JwtAuthenticator([trusted(keys, idp, registered_clients=True)], identity)
        token = idp.token(sub="c-1")
        assert (await auth.authenticate(token)).subject == "c-1"
        await identity.revoke_client("c-1", now, None)
        await refused(auth, token, "unknown or revoked")
    finally:
        await index.close()


# ---------------------------------------------------------------- the JWKS cache


async def test_keys_are_fetched_once_and_cached(idp: Idp, auth: JwtAuthenticator) -> None:
    for _ in range(5):
        await auth.authenticate(idp.token())
    assert idp.fetches == 1


async def test_concurrent_first_requests_share_one_fetch(idp: Idp, auth: JwtAuthenticator) -> None:
    idp.hold = asyncio.Event()
    tasks = [asyncio.create_task(auth.authenticate(idp.token())) for _ in range(20)]
    await asyncio.wait_for(idp.fetched.wait(), 10)
    idp.hold.set()
    principals = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert [p.subject for p in principals] == ["alice"] * 20
    assert idp.fetches == 1


async def test_unknown_kid_refreshes_once_then_refuses_and_is_rate_limited(
    idp: Idp, auth: JwtAuthenticator, clock: FakeClock
) -> None:
    await auth.authenticate(idp.token())
    assert idp.fetches == 1
    clock.advance(31)  # past the minimum interval since that fetch
    ghost = idp.add_key("ES256", publish=False)
    await refused(auth, idp.token(ghost), "not one its issuer publishes")
    assert idp.fetches == 2  # exactly one refresh
    another = idp.add_key("ES256", publish=False)
    clock.advance(10)  # within the interval: no fetch for an unknown kid
    await refused(auth, idp.token(another), "not one its issuer publishes")
    await refused(auth, idp.token(ghost), "not one its issuer publishes")
    assert idp.fetches == 2
    # and known keys are served from the cache all along
    assert (await auth.authenticate(idp.token(idp.published[0]))).subject == "alice"
    assert idp.fetches == 2


async def test_concurrent_unknown_kids_share_one_refresh(
    idp: Idp, auth: JwtAuthenticator, clock: FakeClock
) -> None:
    await auth.authenticate(idp.token())
    clock.advance(31)
    idp.hold = asyncio.Event()
    idp.fetched.clear()
    ghosts = [idp.add_key("ES256", publish=False) for _ in range(5)]
    tasks = [asyncio.create_task(auth.authenticate(idp.token(g))) for g in ghosts for _ in "ab"]
    await asyncio.wait_for(idp.fetched.wait(), 10)
    idp.hold.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, errors.Unauthenticated) for r in results)
    assert idp.fetches == 2


async def test_key_rotation_at_the_idp_is_picked_up_by_one_refresh(
    idp: Idp, auth: JwtAuthenticator, clock: FakeClock
) -> None:
    old = idp.published[0]
    await auth.authenticate(idp.token(old))
    clock.advance(31)
    new = idp.add_key("ES256")  # the IdP publishes a new key and signs with it
    idp.published.remove(old)
    assert (await auth.authenticate(idp.token(new))).subject == "alice"
    assert idp.fetches == 2
    # the old key left the set at the refresh: its tokens stop working
    await refused(auth, idp.token(old), "not one its issuer publishes")


async def test_cache_control_max_age_is_honoured(
    idp: Idp, keys: RemoteJwks, clock: FakeClock
) -> None:
    idp.cache_control = "public, max-age=120"
    auth = JwtAuthenticator([trusted(keys, idp)])
    await auth.authenticate(idp.token())
    clock.advance(100)
    await auth.authenticate(idp.token())
    assert idp.fetches == 1
    clock.advance(21)  # stale: served from the cache while a refresh runs
    idp.fetched.clear()
    await auth.authenticate(idp.token())
    await asyncio.wait_for(idp.fetched.wait(), 10)
    assert idp.fetches == 2


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, DEFAULT_MAX_AGE),
        ("public", DEFAULT_MAX_AGE),
        ("public, max-age=600", 600),
        ('max-age="900", must-revalidate', 900),
        ("max-age=5", MIN_MAX_AGE),
        ("max-age=999999999", MAX_MAX_AGE),
        ("no-store", MIN_MAX_AGE),
        ("no-cache, max-age=600", MIN_MAX_AGE),
        ("s-maxage=10", DEFAULT_MAX_AGE),
    ],
)
def test_max_age_is_read_and_clamped(header: str | None, seconds: float) -> None:
    assert max_age(header) == seconds


async def test_while_the_jwks_is_down_cached_keys_keep_working(
    idp: Idp, auth: JwtAuthenticator, clock: FakeClock
) -> None:
    await auth.authenticate(idp.token())
    idp.status = 503
    clock.advance(DEFAULT_MAX_AGE + 1)  # stale, and the endpoint failing
    idp.fetched.clear()
    assert (await auth.authenticate(idp.token())).subject == "alice"
    await asyncio.wait_for(idp.fetched.wait(), 10)
    assert idp.fetches == 2
    assert (await auth.authenticate(idp.token())).subject == "alice"
    # not even answering: still the cached keys
    await idp.stop()
    clock.advance(31)
    for _ in range(3):
        assert (await auth.authenticate(idp.token())).subject == "alice"


async def test_a_never_fetched_issuer_fails_closed_and_says_so(
    idp: Idp, auth: JwtAuthenticator, clock: FakeClock
) -> None:
    idp.status = 503
    with structlog.testing.capture_logs() as logs:
        await refused(auth, idp.token(), "cannot be reached")
    warnings = [e for e in logs if e["event"] == "jwt.keys_unavailable"]
    assert [w["issuer"] for w in warnings] == [idp.issuer]
    assert warnings[0]["log_level"] == "warning"
    assert "HTTP 503" in warnings[0]["error"]
    # rate-limited: the next token within the interval does not hit the endpoint again
    await refused(auth, idp.token(), "cannot be reached")
    assert idp.fetches == 1
    # the endpoint recovers: after the interval its keys are fetched and used
    idp.status = 200
    clock.advance(31)
    assert (await auth.authenticate(idp.token())).subject == "alice"


async def test_a_refused_connection_fails_closed(idp: Idp, auth: JwtAuthenticator) -> None:
    await idp.stop()
    await refused(auth, idp.token(), "cannot be reached")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b'{"keys": "nope"}', "not a JWK Set"),
        (b'{"keys": []}', "no usable signature key"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable signature key"),
        (b'{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "use": "enc"}]}', "no usable"),
        (b'{"keys": [], "pad": "' + b"x" * MAX_BODY + b'"}', "larger than"),
    ],
)
async def test_an_unusable_jwks_answer_gives_no_keys(
    idp: Idp, keys: RemoteJwks, body: bytes, why: str
) -> None:
    idp.body = body
    auth = JwtAuthenticator([trusted(keys, idp)])
    with structlog.testing.capture_logs() as logs:
        await refused(auth, idp.token(), "cannot be reached")
    reasons = [e["reason"] for e in logs if e["event"] == "jwks.fetch_failed"]
    assert len(reasons) == 1
    assert why in reasons[0]


async def test_redirects_are_followed_within_the_origin_only(
    idp: Idp, keys: RemoteJwks, clock: FakeClock
) -> None:
    idp.redirect_to = "/moved/jwks.json"
    auth = JwtAuthenticator([trusted(keys, idp)])
    assert (await auth.authenticate(idp.token())).subject == "alice"
    assert idp.fetches == 2  # the redirect and its target
    async with Idp() as elsewhere:
        # same address, another port: another origin
        idp.redirect_to = elsewhere.jwks_url
        elsewhere.published = []
        clock.advance(31)
        with structlog.testing.capture_logs() as logs:
            await refused(auth, idp.token(idp.add_key("ES256")), "not one its issuer publishes")
        assert elsewhere.fetches == 0
        assert any("another origin" in e.get("reason", "") for e in logs)


async def test_jwks_urls_must_be_https_except_loopback(
    http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    with pytest.raises(ValueError, match="https"):
        RemoteJwks("http://idp.example.test/jwks", http, issuer="x")
    with pytest.raises(ValueError, match="https"):
        RemoteJwks("ftp://idp.example.test/jwks", http, issuer="x")
    for url in ("https://idp.example.test/jwks", "http://127.0.0.1:9/j", "http://[::1]:9/j"):
        RemoteJwks(url, http, issuer="x")
    RemoteJwks("http://idp.example.test/jwks", http, issuer="x", allow_http=True)


async def test_issuers_are_trusted_once_and_registered_ones_need_the_index(idp: Idp) -> None:
    one = trusted(None, idp)
    with pytest.raises(ValueError, match="twice"):
        JwtAuthenticator([one, replace(one, audiences=("other",))])
    with pytest.raises(ValueError, match="identity store"):
        JwtAuthenticator([replace(one, registered_clients=True)])


# ------------------------------------------------- fileshare's own issuer's clients


@pytest.fixture(params=["sqlite", "postgres"])
async def identity(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdentityStore]:
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database(f"jwt_{uuid.uuid4().hex[:10]}")
    index = await open_sql_index(url=url, sqlite_path=tmp_path / "index.sqlite3")
    try:
        yield IdentityStore(index)
    finally:
        await index.close()


async def test_registered_clients_are_read_from_the_index_on_every_request(
    idp: Idp, keys: RemoteJwks, identity: IdentityStore
) -> None:
    now = datetime.now(UTC)
    await identity.create_client(
        Client(
            id="scanner-7",
            role=Role.WORKER,
            scopes=frozenset({"files:read", "files:write"}),
            owner="ward-3",
            created=now,
        ),
        None,
    )
    own = trusted(keys, idp, registered_clients=True)
    auth = JwtAuthenticator([own], identity)
    token = idp.token(sub="scanner-7", scope="files:read files:write files:delete", role="admin")
    principal = await auth.authenticate(token)
    # role and owner from the client row, scopes: the token's within the client's
    assert principal.role is Role.WORKER
    assert (principal.subject, principal.client, principal.owner) == (
        "scanner-7",
        "scanner-7",
        "ward-3",
    )
    assert principal.scopes == {Scope.FILES_READ, Scope.FILES_WRITE}
    assert principal.registered
    await refused(auth, idp.token(sub="nobody"), "unknown or revoked")
    assert await identity.revoke_client("scanner-7", now, None)
    # the same, still unexpired token stops working at once
    await refused(auth, token, "unknown or revoked")
