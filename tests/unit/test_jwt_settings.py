"""``FILESHARE_JWT_ISSUERS`` and ``FILESHARE_JWKS_ALLOW_HTTP``: parsed and checked at load."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fileshare.auth.principal import Role
from fileshare.config import ConfigError, JwtIssuer, load_settings

BASE = {"FILESHARE_API_KEYS": "dev:dev-key-0123456789abcdef"}
ISSUER = {
    "issuer": "https://login.example.org/",
    "jwks_url": "https://login.example.org/jwks",
    "audience": "fileshare",
}


def issuers(*items: dict[str, Any]) -> dict[str, str]:
    return {"FILESHARE_JWT_ISSUERS": json.dumps(list(items))}


def test_an_issuer_with_its_defaults() -> None:
    settings = load_settings(BASE | issuers(ISSUER))
    assert settings.jwt_issuers == (
        JwtIssuer(
            issuer="https://login.example.org/",
            jwks_url="https://login.example.org/jwks",
            audiences=("fileshare",),
            algorithms=("RS256", "ES256"),
            scope_claim="scope",
            role_claim="role",
            owner_claim=None,
            default_role=Role.PARTICIPANT,
        ),
    )
    assert settings.jwks_allow_http is False


def test_every_member_is_read() -> None:
    full = ISSUER | {
        "audience": ["fileshare", "api://fileshare"],
        "algorithms": ["PS256"],
        "scope_claim": "scp",
        "role_claim": "fs_role",
        "owner_claim": "patient",
        "default_role": "researcher",
    }
    (issuer,) = load_settings(BASE | issuers(full)).jwt_issuers
    assert issuer.audiences == ("fileshare", "api://fileshare")
    assert issuer.algorithms == ("PS256",)
    assert (issuer.scope_claim, issuer.role_claim, issuer.owner_claim) == (
        "scp",
        "fs_role",
        "patient",
    )
    assert issuer.default_role is Role.RESEARCHER


def test_issuers_without_api_keys_are_enough() -> None:
    settings = load_settings(issuers(ISSUER))
    assert settings.api_keys == {}
    with pytest.raises(ConfigError, match="FILESHARE_API_KEYS must name at least one"):
        load_settings({})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FILESHARE_JWT_ISSUERS": "[{"}, "not JSON"),
        ({"FILESHARE_JWT_ISSUERS": '{"issuer": "x"}'}, "a JSON list"),
        ({"FILESHARE_JWT_ISSUERS": '["x"]'}, r"\[0\]: expected an object"),
        (issuers(ISSUER | {"audiences": "x"}), "unknown member.*audiences"),
        (issuers({k: v for k, v in ISSUER.items() if k != "audience"}), "audience must be"),
        (issuers(ISSUER | {"audience": []}), "at least one audience"),
        (issuers(ISSUER | {"issuer": ""}), "issuer must not be empty"),
        (issuers(ISSUER | {"jwks_url": 5}), "jwks_url must be a string"),
        (issuers(ISSUER | {"jwks_url": "http://login.example.org/jwks"}), "must be https"),
        (issuers(ISSUER | {"jwks_url": "login.example.org/jwks"}), "absolute https URL"),
        (issuers(ISSUER | {"jwks_url": "https://u:p@login.example.org/"}), "credentials"),
        (issuers(ISSUER | {"algorithms": ["RS256", "HS256"]}), "HS256 are not accepted"),
        (issuers(ISSUER | {"algorithms": ["none"]}), "none are not accepted"),
        (issuers(ISSUER | {"algorithms": []}), "at least one algorithm"),
        (issuers(ISSUER | {"default_role": "root"}), "default_role must be one of"),
        (issuers(ISSUER | {"role_claim": ""}), "claim names"),
        (issuers(ISSUER, ISSUER), r"\[1\].*listed twice"),
        (issuers(ISSUER | {"issuer": "http://127.0.0.1:8080/"}), "own token issuer"),
        ({"FILESHARE_JWKS_ALLOW_HTTP": "maybe"}, "FILESHARE_JWKS_ALLOW_HTTP"),
    ],
)
def test_bad_issuers_fail_fast_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(BASE | env)
    assert "FILESHARE_JWT" in str(caught.value) or "FILESHARE_JWKS" in str(caught.value)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8081/jwks", "http://localhost/jwks", "http://[::1]:9/jwks"]
)
def test_plain_http_is_allowed_on_loopback(url: str) -> None:
    (issuer,) = load_settings(BASE | issuers(ISSUER | {"jwks_url": url})).jwt_issuers
    assert issuer.jwks_url == url


def test_plain_http_elsewhere_needs_the_development_setting() -> None:
    env = BASE | issuers(ISSUER | {"jwks_url": "http://keycloak:8080/certs"})
    with pytest.raises(ConfigError, match="must be https"):
        load_settings(env)
    settings = load_settings(env | {"FILESHARE_JWKS_ALLOW_HTTP": "true"})
    assert settings.jwks_allow_http is True
