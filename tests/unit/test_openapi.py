"""The OpenAPI document: valid OpenAPI 3.1, every route of the app in it and every
operation in it routed, every error code of the hierarchy in its Problem schema and in
the README's table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from fileshare import errors
from fileshare.api.names import validate_name
from fileshare.api.openapi import document, error_codes, name_schema, tag_schema
from fileshare.api.params import tag
from fileshare.app import create_app
from fileshare.config import Settings

SETTINGS = Settings(api_keys={"dev": "dev-key-0123456789abcdef"})


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(document("https://files.example.test"))  # type: ignore[arg-type]


def test_every_route_is_described_and_every_operation_is_routed() -> None:
    app = create_app(SETTINGS)
    routed = {
        (route.method.lower(), _shape(route.resource.canonical))
        for route in app.router.routes()
        if route.resource is not None and route.method != "*"
    }
    described = {
        (method, _shape(path))
        for path, item in document("https://x.test")["paths"].items()
        for method in item
        if method != "parameters"
    }
    # aiohttp answers HEAD for every GET route; the document names HEAD where it matters
    assert {r for r in routed if r[0] != "head"} == {d for d in described if d[0] != "head"}
    assert {d for d in described if d[0] == "head"} <= routed


def test_every_error_code_is_in_the_problem_schema_and_the_readme() -> None:
    codes = error_codes()
    schema = document("https://x.test")["components"]["schemas"]["Problem"]
    assert schema["properties"]["code"]["enum"] == codes
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("### Errors") :]
    missing = [code for code in codes if f"`{code}`" not in table]
    assert missing == [], f"error codes missing from the README's table: {missing}"


def _documented(schema: dict[str, Any], value: str) -> bool:
    return len(value) <= schema["maxLength"] and re.search(schema["pattern"], value) is not None


@pytest.mark.parametrize(
    "name",
    [
        "report.pdf",
        "été report (2).pdf",
        "0" * 255,
        "0" * 256,
        "",
        "   ",
        ".",
        "..",
        "...",
        ".hidden",
        "a/b",
        "a\\b",
        "nul\x00",
        "tab\there",
        "del\x7f",
        "c1\x85",
        "invoice\u202efdp.exe",
        "zero\u200bwidth",
        "bom\ufeff",
        "bad\ufffd",
    ],
)
def test_the_documented_name_rule_is_the_servers(name: str) -> None:
    """The name schema lets through exactly what ``validate_name`` takes (for names of
    ASCII length, where its byte limit and the schema's character limit agree)."""
    try:
        validate_name(name)
        accepted = True
    except errors.InvalidFileName:
        accepted = False
    assert _documented(name_schema(), name) == accepted


@pytest.mark.parametrize(
    "value",
    [
        "radiology",
        "CT-Scan",
        "Befund-Ärzte",
        "a_b",
        "x" * 64,
        "x" * 65,
        "",
        "..",
        "_",
        "a b",
        "a/b",
        "a%b",
        "v1.2:β@c+d",
        "日本",
        "٣",
    ],
)
def test_the_documented_tag_rule_is_the_servers(value: str) -> None:
    try:
        tag(value)
        accepted = True
    except errors.InvalidTag:
        accepted = False
    assert _documented(tag_schema(), value) == accepted
