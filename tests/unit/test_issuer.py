"""The token endpoint's request parsing (``auth.issuer``) and the argon2 burst guard of
``auth.secrets.Verified`` it relies on."""

from __future__ import annotations

import asyncio
import base64

import pytest

from fileshare.auth import secrets
from fileshare.auth.issuer import OAuthError, basic_credentials, parameters
from fileshare.auth.secrets import Verified, hash_secret


def header(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


def test_basic_credentials_are_form_urlencoded_before_base64() -> None:
    # RFC 6749 §2.3.1: "svc:a" with secret "p:w+d%/é" is sent as svc%3Aa:p%3Aw%2Bd%25%2F%C3%A9
    assert basic_credentials(header(b"svc%3Aa:p%3Aw%2Bd%25%2F%C3%A9")) == ("svc:a", "p:w+d%/é")
    assert basic_credentials(header(b"svc:two+words")) == ("svc", "two words"), "+ is a space"
    assert basic_credentials(header(b"svc:a:b")) == ("svc", "a:b"), "split at the first colon"
    assert basic_credentials("basic " + base64.b64encode(b"svc:x").decode()) == ("svc", "x")


@pytest.mark.parametrize(
    "value",
    [
        "Basic !!!",  # not base64
        header(b"no-colon"),
        header(b":secret"),  # no client
        header(b"\xff\xfe:x"),  # not UTF-8
        header(b"svc:%ff"),  # a percent-escape that is not UTF-8
        "Bearer abc.def.ghi",  # another scheme
    ],
)
def test_malformed_basic_credentials_are_invalid_client(value: str) -> None:
    with pytest.raises(OAuthError) as caught:
        basic_credentials(value)
    assert caught.value.error == "invalid_client"
    assert caught.value.status == 401
    assert caught.value.headers == {"WWW-Authenticate": 'Basic realm="fileshare"'}


def test_empty_parameters_are_omitted_and_none_may_repeat() -> None:
    assert parameters([("grant_type", "client_credentials"), ("scope", "")]) == {
        "grant_type": "client_credentials"
    }
    assert parameters([("scope", ""), ("scope", "files:read")]) == {"scope": "files:read"}
    with pytest.raises(OAuthError) as caught:
        parameters([("client_id", "a"), ("client_id", "b")])
    assert (caught.value.error, caught.value.status) == ("invalid_request", 400)
    assert caught.value.headers == {}


async def test_a_burst_with_one_new_secret_pays_argon2_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real argon2 verification, counted: requests that queued behind the first find
    its success remembered."""
    stored = hash_secret("a-secret")
    calls: list[str] = []
    real = secrets._verify

    def counted(stored_hash: str, secret: str) -> bool:
        calls.append(secret)
        return real(stored_hash, secret)

    monkeypatch.setattr(secrets, "_verify", counted)
    verified = Verified(concurrency=1)
    results = await asyncio.gather(*(verified.check("c", stored, "a-secret") for _ in range(6)))
    assert results == [True] * 6
    assert len(calls) == 1
    # A wrong secret is never remembered: each attempt pays (and queues behind the slot).
    wrong = await asyncio.gather(*(verified.check("c", stored, "wrong") for _ in range(2)))
    assert wrong == [False, False]
    assert len(calls) == 3
