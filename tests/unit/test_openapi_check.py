"""The e2e suites' contract checker (``tests/e2e/openapi_check.py``) catches what it must:
each case is an answer the document does not allow, next to one it does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from fileshare.api.openapi import document
from tests.e2e.openapi_check import ApiContract, ContractViolation, Exchange

BASE = "https://files.example.test"
SHA = "a" * 64
BEARER = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def contract() -> ApiContract:
    return ApiContract(json.loads(json.dumps(document(BASE))))


def _file(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "f1",
        "name": "a.txt",
        "contentType": "text/plain",
        "size": 1,
        "sha256": SHA,
        "created": "2024-05-01T12:00:00Z",
        "updated": "2024-05-01T12:00:00Z",
        "state": "clean",
        "present": True,
        "tags": [],
        "metadata": {},
        "url": f"{BASE}/v1/files/f1",
        "attachment": {
            "contentType": "text/plain",
            "size": 1,
            "hash": "x",
            "creation": "2024-05-01T12:00:00Z",
            "url": f"{BASE}/v1/files/f1",
        },
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def _exchange(
    method: str,
    path: str,
    status: int,
    body: object = None,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    request_headers: dict[str, str] | None = None,
) -> Exchange:
    sent = CIMultiDict({"Content-Type": content_type} if body is not None else {})
    sent.update(headers or {})
    raw = None if body is None else json.dumps(body).encode()
    if raw is not None:
        sent["Content-Length"] = str(len(raw))
    return Exchange(
        method=method,
        url=URL(f"http://127.0.0.1:1{path}"),
        request_headers=CIMultiDictProxy(CIMultiDict(BEARER | (request_headers or {}))),
        request_body=None,
        status=status,
        headers=CIMultiDictProxy(sent),
        body=raw,
    )


def _metadata(body: object, **headers: str) -> Exchange:
    return _exchange("GET", "/v1/files/f1/metadata", 200, body, headers=headers)


def test_a_documented_answer_passes(contract: ApiContract) -> None:
    contract.check(_metadata(_file(), ETag=f'"{SHA}"'))


@pytest.mark.parametrize(
    ("exchange", "says"),
    [
        (_metadata(_file(), ETag="nope"), "ETag"),
        (_metadata(_file()), "Missing required header: ETag"),
        (_metadata(_file(size=None), ETag=f'"{SHA}"'), "'size' is a required property"),
        (_metadata(_file(extra=1), ETag=f'"{SHA}"'), "extra"),
        (_metadata(_file(state="odd"), ETag=f'"{SHA}"'), "'odd' is not one of"),
        (_exchange("GET", "/v1/files/f1/metadata", 418, {}), "status 418 is not documented"),
        (
            _exchange("GET", "/v1/files/f1/metadata", 200, {}, content_type="text/html"),
            "content type 'text/html' is not documented",
        ),
        (_exchange("GET", "/v2/nothing", 200, {}), "no such operation"),
        (
            _exchange("GET", "/v2/nothing", 404, {"x": 1}, content_type="application/problem+json"),
            "problem",
        ),
        (
            _exchange("GET", "/v1/files?bogus=1", 200, {"items": []}),
            "query parameter 'bogus' is accepted but not documented",
        ),
        (
            _exchange("GET", "/v1/files?pageSize=1000", 200, {"items": []}),
            "pageSize",
        ),
    ],
)
def test_an_answer_the_document_does_not_allow_fails(
    contract: ApiContract, exchange: Exchange, says: str
) -> None:
    with pytest.raises(ContractViolation, match="does not allow") as failure:
        contract.check(exchange)
    assert says in str(failure.value)


def test_a_refused_request_is_not_held_against_the_document(contract: ApiContract) -> None:
    """Tests send bad requests on purpose: only an accepted one must fit the document."""
    problem = {
        "type": f"{BASE}/problems/invalid_parameter",
        "title": "Invalid query parameter",
        "status": 400,
        "detail": "unknown parameter",
        "code": "invalid_parameter",
    }
    contract.check(
        _exchange("GET", "/v1/files?bogus=1", 400, problem, content_type="application/problem+json")
    )
