"""fileshare's own OAuth 2.0 token endpoint, end to end on the local backend: client
authentication (secret in Basic or the body, private_key_jwt), the RFC 6749 errors, scopes,
the tokens it issues working (and stopping) on the API, the published keys, the metadata
document, the audit trail, and ``fileshare token`` against a live ``fileshare serve``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Connection

from fileshare.api.keys import AUDIT, IDENTITY
from fileshare.app import INDEX
from fileshare.audit import Action, AuditRecord, Result
from fileshare.auth.principal import Role, Scope
from fileshare.auth.secrets import hash_secret
from fileshare.index.audit import AuditQuery, AuditStore
from fileshare.index.identity import Client
from fileshare.index.signing import new_key
from fileshare.index.sql import SqlIndex
from fileshare.index.tables import signing_keys
from tests.e2e.conftest import ALICE_KEY, Env
from tests.e2e.test_cli import Server, _start, _stop, cli

BASE = "https://files.example.test"
TOKEN_URL = f"{BASE}/oauth/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT = {"grant_type": "client_credentials"}
SECRET = "s3cr3t:with+odd%chars/and=more-0123456789"
WORKER_SCOPES = frozenset(
    {Scope.FILES_READ, Scope.FILES_WRITE, Scope.FILES_DELETE, Scope.TAGS_WRITE}
)


@pytest.fixture
def backend() -> str:
    """The token endpoint does not touch storage: one backend (local, SQLite) is enough."""
    return "local"


def basic(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 §2.3.1: each form-urlencoded, then HTTP Basic."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(
    env: Env,
    client_id: str | None = None,
    *,
    secret: str | None = SECRET,
    jwks: dict[str, Any] | None = None,
    role: Role = Role.WORKER,
    scopes: frozenset[str] = WORKER_SCOPES,
) -> str:
    client_id = client_id or f"svc-{uuid.uuid4().hex[:8]}"
    client = Client(
        id=client_id,
        role=role,
        scopes=scopes,
        owner=client_id,
        created=datetime.now(UTC),
        secret_hash=hash_secret(secret) if secret else None,
        jwks=jwks,
    )
    await env.client.app[IDENTITY].create_client(client, None)
    return client_id


async def token_request(
    env: Env, form: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    response = await env.client.post("/oauth/token", data=form, headers=headers or {})
    return response.status, await response.json(), response.headers


async def issued(env: Env, form: dict[str, str], headers: dict[str, str] | None = None) -> str:
    status, body, _ = await token_request(env, form, headers)
    assert status == 200, body
    token = body["access_token"]
    assert isinstance(token, str)
    return token


async def jwks(env: Env) -> dict[str, Any]:
    response = await env.client.get("/.well-known/jwks.json")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def claims_of(env: Env, token: str) -> dict[str, Any]:
    """The token verified against the published keys, as a relying party would."""
    kid = jwt.get_unverified_header(token)["kid"]
    [key] = [k for k in (await jwks(env))["keys"] if k["kid"] == kid]
    decoded: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(key), algorithms=["ES256"], audience=BASE, issuer=BASE
    )
    return decoded


async def audit_rows(env: Env, action: Action) -> list[AuditRecord]:
    store: AuditStore = env.client.app[AUDIT]
    return await store.query(AuditQuery(action=str(action)))


# ------------------------------------------------------------------ client secrets


async def test_client_secret_basic_issues_a_token_that_works(env: Env) -> None:
    client_id = await register(env)
    response = await env.client.post("/oauth/token", data=GRANT, headers=basic(client_id, SECRET))
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert set(body["scope"].split()) == WORKER_SCOPES
    claims = await claims_of(env, body["access_token"])
    assert claims["sub"] == claims["client_id"] == client_id
    assert claims["role"] == "worker"
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"]
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    listed = await env.client.get("/v1/files", headers=bearer(body["access_token"]))
    assert listed.status == 200, await listed.text()
    [row] = [r for r in await audit_rows(env, Action.TOKEN_ISSUE) if r.event.subject == client_id]
    assert row.event.result is Result.SUCCESS
    assert row.event.detail["jti"] == claims["jti"]
    assert row.event.detail["method"] == "client_secret_basic"
    assert body["access_token"] not in json.dumps(row.event.detail), "never the token itself"


async def test_client_secret_post_issues_a_token(env: Env) -> None:
    client_id = await register(env)
    token = await issued(env, GRANT | {"client_id": client_id, "client_secret": SECRET})
    assert (await claims_of(env, token))["sub"] == client_id


async def test_a_bootstrap_principal_gets_a_token_with_its_key(env: Env) -> None:
    token = await issued(env, GRANT, basic("alice", ALICE_KEY))
    claims = await claims_of(env, token)
    assert claims["sub"] == "alice"
    assert claims["role"] == "participant"
    uploaded = await env.client.post("/v1/files", data=b"hello", headers=bearer(token))
    assert uploaded.status == 201, await uploaded.text()
    listed = await env.client.get("/v1/files", headers={"X-API-Key": ALICE_KEY})
    assert [f["id"] for f in (await listed.json())["items"]] == [(await uploaded.json())["id"]], (
        "the token acts in alice's own namespace"
    )


async def test_a_bootstrap_key_is_only_its_own_principals_secret(env: Env) -> None:
    status, body, headers = await token_request(env, GRANT, basic("bob", ALICE_KEY))
    assert (status, body["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"] == 'Basic realm="fileshare"'


async def test_a_wrong_secret_is_invalid_client_with_a_basic_challenge(env: Env) -> None:
    client_id = await register(env)
    status, body, headers = await token_request(env, GRANT, basic(client_id, SECRET + "x"))
    assert status == 401
    assert body["error"] == "invalid_client"
    assert headers["WWW-Authenticate"] == 'Basic realm="fileshare"'
    assert headers["Cache-Control"] == "no-store"
    [row] = [
        r
        for r in await audit_rows(env, Action.AUTH_FAIL)
        if r.event.detail.get("client_id") == client_id
    ]
    assert row.event.result is Result.DENIED
    assert row.event.detail["error"] == "invalid_client"
    assert row.event.detail["method"] == "client_secret_basic"
    assert row.event.subject is None, "nobody was authenticated"


async def test_an_unknown_client_in_the_body_is_invalid_client(env: Env) -> None:
    status, body, headers = await token_request(
        env, GRANT | {"client_id": "nobody", "client_secret": SECRET}
    )
    assert (status, body["error"]) == (401, "invalid_client")
    assert "WWW-Authenticate" in headers, "a 401 always carries a challenge (RFC 9110)"


async def test_no_client_authentication_is_invalid_client(env: Env) -> None:
    status, body, _ = await token_request(env, GRANT)
    assert (status, body["error"]) == (401, "invalid_client")


async def test_basic_credentials_that_are_not_base64_are_invalid_client(env: Env) -> None:
    status, body, _ = await token_request(env, GRANT, {"Authorization": "Basic %%%not-base64"})
    assert (status, body["error"]) == (401, "invalid_client")


async def test_basic_credentials_are_form_urlencoded_first(env: Env) -> None:
    """A ``:`` in the id, and ``+``, ``%``, ``/`` in the secret survive (RFC 6749 §2.3.1)."""
    client_id = await register(env, f"ingest:{uuid.uuid4().hex[:6]} é")
    token = await issued(env, GRANT, basic(client_id, SECRET))
    assert (await claims_of(env, token))["sub"] == client_id


async def test_a_revoked_clients_token_stops_working_at_once(env: Env) -> None:
    client_id = await register(env)
    token = await issued(env, GRANT, basic(client_id, SECRET))
    assert (await env.client.get("/v1/files", headers=bearer(token))).status == 200
    revoked = await env.client.app[IDENTITY].revoke_client(client_id, datetime.now(UTC), None)
    assert revoked
    after = await env.client.get("/v1/files", headers=bearer(token))
    assert after.status == 401
    status, body, _ = await token_request(env, GRANT, basic(client_id, SECRET))
    assert (status, body["error"]) == (401, "invalid_client"), "and it gets no new one"


# ----------------------------------------------------------------- request errors


async def test_an_unknown_grant_type_is_unsupported_grant_type(env: Env) -> None:
    client_id = await register(env)
    status, body, _ = await token_request(
        env, {"grant_type": "password", "username": "u", "password": "p"}, basic(client_id, SECRET)
    )
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_a_missing_grant_type_is_invalid_request(env: Env) -> None:
    client_id = await register(env)
    status, body, _ = await token_request(env, {}, basic(client_id, SECRET))
    assert (status, body["error"]) == (400, "invalid_request")


async def test_two_authentication_methods_at_once_are_invalid_request(env: Env) -> None:
    client_id = await register(env)
    status, body, _ = await token_request(
        env, GRANT | {"client_id": client_id, "client_secret": SECRET}, basic(client_id, SECRET)
    )
    assert (status, body["error"]) == (400, "invalid_request")
    assert "more than one" in body["error_description"]


async def test_a_repeated_parameter_is_invalid_request(env: Env) -> None:
    client_id = await register(env)
    response = await env.client.post(
        "/oauth/token",
        data=b"grant_type=client_credentials&scope=files:read&scope=files:write",
        headers=basic(client_id, SECRET) | {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_a_body_that_is_not_a_form_is_invalid_request(env: Env) -> None:
    client_id = await register(env)
    response = await env.client.post(
        "/oauth/token", json={"grant_type": "client_credentials"}, headers=basic(client_id, SECRET)
    )
    assert response.status == 400
    assert response.content_type == "application/json", "RFC 6749 JSON, not problem+json"
    assert (await response.json())["error"] == "invalid_request"


async def test_an_oversized_body_is_invalid_request(env: Env) -> None:
    client_id = await register(env)
    response = await env.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "junk": "x" * 20_000},
        headers=basic(client_id, SECRET),
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_a_secret_in_the_url_is_refused(env: Env) -> None:
    client_id = await register(env)
    response = await env.client.post(
        f"/oauth/token?client_id={client_id}&client_secret={quote_plus(SECRET)}", data=GRANT
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


# ------------------------------------------------------------------------- scopes


async def test_a_requested_scope_narrows_the_token(env: Env) -> None:
    client_id = await register(env)
    token = await issued(env, GRANT | {"scope": "files:read"}, basic(client_id, SECRET))
    claims = await claims_of(env, token)
    assert claims["scope"] == "files:read"
    assert (await env.client.get("/v1/files", headers=bearer(token))).status == 200
    upload = await env.client.post("/v1/files", data=b"x", headers=bearer(token))
    assert upload.status == 403, "files:write was not asked for"


@pytest.mark.parametrize(
    "scope",
    [
        "files:read admin",  # a scope the client is not registered for
        "audit:read",  # one its role never holds
        "files:read nonsense",  # one that does not exist
    ],
)
async def test_asking_beyond_the_clients_scopes_is_invalid_scope(env: Env, scope: str) -> None:
    client_id = await register(env)
    status, body, _ = await token_request(env, GRANT | {"scope": scope}, basic(client_id, SECRET))
    assert (status, body["error"]) == (400, "invalid_scope")
    [row] = [r for r in await audit_rows(env, Action.TOKEN_ISSUE) if r.event.subject == client_id]
    assert row.event.result is Result.DENIED
    assert row.event.detail["error"] == "invalid_scope"


async def test_scopes_beyond_the_role_are_never_granted(env: Env) -> None:
    # Registered with admin, but a researcher: the role caps it to files:read.
    client_id = await register(
        env, role=Role.RESEARCHER, scopes=frozenset({Scope.FILES_READ, Scope.ADMIN})
    )
    token = await issued(env, GRANT, basic(client_id, SECRET))
    assert (await claims_of(env, token))["scope"] == "files:read"


async def test_a_client_with_no_scope_is_unauthorized_client(env: Env) -> None:
    # Registered for admin only, as a participant: nothing is left once the role caps it.
    client_id = await register(env, role=Role.PARTICIPANT, scopes=frozenset({Scope.ADMIN}))
    status, body, _ = await token_request(env, GRANT, basic(client_id, SECRET))
    assert (status, body["error"]) == (400, "unauthorized_client")


# --------------------------------------------------------------- private_key_jwt


class Keypair:
    def __init__(self, kid: str, algorithm: str = "ES256") -> None:
        self.kid = kid
        self.algorithm = algorithm
        if algorithm.startswith("ES"):
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            self.jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwk |= {"kid": kid, "use": "sig"}

    def assertion(self, client_id: str, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": TOKEN_URL,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        claims |= overrides
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid})


def assertion_form(assertion: str, **extra: str) -> dict[str, str]:
    return GRANT | {"client_assertion_type": JWT_BEARER, "client_assertion": assertion} | extra


@pytest.fixture
def keypair() -> Keypair:
    return Keypair("client-key-1")


async def jwt_client(env: Env, *keys: Keypair) -> str:
    return await register(env, secret=None, jwks={"keys": [k.jwk for k in keys]})


async def test_private_key_jwt_issues_a_token(env: Env, keypair: Keypair) -> None:
    rsa_key = Keypair("client-key-2", "PS256")
    client_id = await jwt_client(env, keypair, rsa_key)
    for key in (keypair, rsa_key):
        token = await issued(env, assertion_form(key.assertion(client_id), client_id=client_id))
        assert (await claims_of(env, token))["sub"] == client_id
    # The issuer URL is an accepted audience too.
    token = await issued(env, assertion_form(keypair.assertion(client_id, aud=BASE)))
    assert (await env.client.get("/v1/files", headers=bearer(token))).status == 200
    rows = [r for r in await audit_rows(env, Action.TOKEN_ISSUE) if r.event.subject == client_id]
    assert {r.event.detail["method"] for r in rows} == {"private_key_jwt"}


async def test_a_replayed_assertion_is_invalid_client(env: Env, keypair: Keypair) -> None:
    client_id = await jwt_client(env, keypair)
    assertion = keypair.assertion(client_id)
    await issued(env, assertion_form(assertion))
    status, body, _ = await token_request(env, assertion_form(assertion))
    assert (status, body["error"]) == (401, "invalid_client")
    assert "used before" in body["error_description"]
    [row] = [
        r
        for r in await audit_rows(env, Action.AUTH_FAIL)
        if r.event.detail.get("client_id") == client_id
    ]
    assert row.event.detail == {
        "error": "invalid_client",
        "route": "/oauth/token",
        "method": "private_key_jwt",
        "client_id": client_id,
    }


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://elsewhere.example/oauth/token"}, "aud"),
        ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 180}, "expired"),
        ({"exp": int(time.time()) + 3600}, "too long"),
        ({"jti": None}, "jti"),
        ({"sub": "someone-else"}, "iss and sub"),
    ],
)
async def test_a_bad_assertion_is_invalid_client(
    env: Env, keypair: Keypair, overrides: dict[str, Any], reason: str
) -> None:
    client_id = await jwt_client(env, keypair)
    status, body, _ = await token_request(
        env, assertion_form(keypair.assertion(client_id, **overrides))
    )
    assert (status, body["error"]) == (401, "invalid_client")
    assert reason in body["error_description"]


async def test_an_assertion_signed_by_an_unregistered_key_is_invalid_client(
    env: Env, keypair: Keypair
) -> None:
    client_id = await jwt_client(env, keypair)
    impostor = Keypair(keypair.kid)  # the registered kid, another key
    status, body, _ = await token_request(env, assertion_form(impostor.assertion(client_id)))
    assert (status, body["error"]) == (401, "invalid_client")
    assert "not valid for any registered client key" in body["error_description"]


async def test_an_hs256_assertion_is_invalid_client(env: Env, keypair: Keypair) -> None:
    """Signed with the client's public key as an HMAC secret: the classic confusion."""
    client_id = await jwt_client(env, keypair)
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": now + 60}
    header = {"alg": "HS256", "typ": "JWT", "kid": keypair.kid}
    secret = keypair.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # By hand: PyJWT itself refuses to use a public key as an HMAC secret.
    signing_input = b".".join(
        b64(json.dumps(part).encode()) for part in (header, claims | {"jti": uuid.uuid4().hex})
    )
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + b64(signature)).decode()
    status, body, _ = await token_request(env, assertion_form(forged))
    assert (status, body["error"]) == (401, "invalid_client")
    assert "alg" in body["error_description"]


async def test_a_wrong_assertion_type_and_a_client_without_keys_are_refused(
    env: Env, keypair: Keypair
) -> None:
    client_id = await jwt_client(env, keypair)
    form = assertion_form(keypair.assertion(client_id))
    form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    status, body, _ = await token_request(env, form)
    assert (status, body["error"]) == (401, "invalid_client")
    secret_only = await register(env)
    status, body, _ = await token_request(env, assertion_form(keypair.assertion(secret_only)))
    assert (status, body["error"]) == (401, "invalid_client")


# ------------------------------------------------------- keys, rotation, metadata


async def test_the_jwks_publishes_the_key_the_token_names(env: Env) -> None:
    token = await issued(env, GRANT, basic("alice", ALICE_KEY))
    kid = jwt.get_unverified_header(token)["kid"]
    response = await env.client.get("/.well-known/jwks.json")
    assert "max-age" in response.headers["Cache-Control"]
    keys = (await response.json())["keys"]
    assert kid in [k["kid"] for k in keys]
    assert all("d" not in k for k in keys), "public members only"


async def test_tokens_outlive_a_rotation_and_new_ones_use_the_new_key(env: Env) -> None:
    """A key that stopped signing (a rotation that happened before this start) but is still
    published: its tokens are accepted, new ones are signed by the current key."""
    now = datetime.now(UTC)
    old = new_key(now - timedelta(days=30), now - timedelta(minutes=1), now + timedelta(minutes=9))
    index = env.client.app[INDEX]
    assert isinstance(index, SqlIndex)

    def insert(conn: Connection) -> None:
        conn.execute(
            signing_keys.insert().values(
                kid=old.kid,
                alg=old.alg,
                private_pem=old.private_pem,
                public_jwk=old.public_jwk,
                created=old.created,
                sign_until=old.sign_until,
                verify_until=old.verify_until,
            )
        )

    await index.run(insert, write=True)
    iat = int(now.timestamp()) - 120  # issued before the rotation, by the old key
    old_token = jwt.encode(
        {
            "iss": BASE,
            "sub": "alice",
            "aud": BASE,
            "iat": iat,
            "nbf": iat,
            "exp": iat + 600,
            "jti": "before-rotation",
            "scope": "files:read",
            "client_id": "alice",
            "role": "participant",
        },
        old.private_key(),
        algorithm="ES256",
        headers={"kid": old.kid, "typ": "at+jwt"},
    )
    assert (await env.client.get("/v1/files", headers=bearer(old_token))).status == 200
    new_token = await issued(env, GRANT, basic("alice", ALICE_KEY))
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != old.kid
    assert {old.kid, new_kid} <= {k["kid"] for k in (await jwks(env))["keys"]}
    assert (await env.client.get("/v1/files", headers=bearer(new_token))).status == 200

    # A key that was never published (or was pruned) signs nothing that is accepted.
    stray = new_key(now, now + timedelta(hours=1), now + timedelta(hours=2))
    forged = jwt.encode(
        jwt.decode(old_token, options={"verify_signature": False}),
        stray.private_key(),
        algorithm="ES256",
        headers={"kid": stray.kid, "typ": "at+jwt"},
    )
    assert (await env.client.get("/v1/files", headers=bearer(forged))).status == 401


async def test_the_metadata_document_describes_the_endpoint(env: Env) -> None:
    response = await env.client.get("/.well-known/oauth-authorization-server")
    assert response.status == 200
    meta = await response.json()
    assert meta["issuer"] == BASE
    assert meta["token_endpoint"] == TOKEN_URL
    assert meta["jwks_uri"] == f"{BASE}/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert meta["response_types_supported"] == []
    assert set(meta["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    algs = meta["token_endpoint_auth_signing_alg_values_supported"]
    assert "ES256" in algs
    assert "none" not in algs
    assert not any(a.startswith("HS") for a in algs)
    assert set(meta["scopes_supported"]) == {s.value for s in Scope}


async def test_the_token_audience_is_configurable(make_env: Any) -> None:
    env = await make_env(token_audience="urn:fileshare:test", token_lifetime=120.0)
    status, body, _ = await token_request(env, GRANT, basic("alice", ALICE_KEY))
    assert status == 200
    assert body["expires_in"] == 120
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "urn:fileshare:test"
    assert claims["exp"] - claims["iat"] == 120
    assert (await env.client.get("/v1/files", headers=bearer(body["access_token"]))).status == 200


# --------------------------------------------------------------- fileshare token


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, clamd: Any) -> Iterator[Server]:
    running = _start(tmp_path_factory.mktemp("oauth-server"), clamd)
    yield running
    _stop(running)


def client_env(url: str, **extra: str) -> dict[str, str]:
    """A client machine: no server settings, only the client's own variables."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    return base | {"FILESHARE_URL": url} | extra


def test_fileshare_token_prints_a_token_that_works(served: Server, tmp_path: Path) -> None:
    done = cli("token", "--client-id", "alice", env=client_env(served.url, FILESHARE_KEY=ALICE_KEY))
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    [token] = done.stdout.decode().splitlines()
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "alice"
    # The token does what the key does: upload with it, through the client too.
    source = tmp_path / "note.txt"
    source.write_bytes(b"a note")
    up = cli("upload", source, env=client_env(served.url, FILESHARE_TOKEN=token))
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["name"] == "note.txt"


def test_fileshare_token_narrows_and_reports_refusals(served: Server) -> None:
    env = client_env(served.url, FILESHARE_CLIENT_ID="alice")
    done = cli("token", "--key", ALICE_KEY, "--scope", "files:read", env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.decode().strip()
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == "files:read"
    refused = cli("token", "--key", ALICE_KEY, "--scope", "admin", env=env)
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (
        "fileshare: token: 400 invalid_scope: this client may not be granted: admin"
    )
    wrong = cli("token", "--key", "not-alices-key-0123456789", env=env)
    assert wrong.returncode == 1
    assert wrong.stderr.decode().startswith("fileshare: token: 401 invalid_client")


def test_fileshare_token_usage_errors_and_an_unreachable_server() -> None:
    nowhere = client_env("http://127.0.0.1:9")  # the discard port: nothing listens
    done = cli("token", env=nowhere)
    assert done.returncode == 2
    assert "no credentials" in done.stderr.decode()
    done = cli("token", "--client-secret", "x", env=nowhere)
    assert done.returncode == 2
    assert "--client-id" in done.stderr.decode()
    done = cli("token", "--key", "k", env=nowhere)
    assert done.returncode == 3
    assert "cannot reach" in done.stderr.decode()
