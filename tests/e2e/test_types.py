"""Content-Type checks (issue 13) through the whole service, on every backend: the first
bytes of a body are compared with its declared type before any of it is stored or
scanned; a refusal is a 415 problem with a stable code and leaves nothing behind."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.e2e.conftest import ALICE, Env
from tests.e2e.test_upload import download, upload
from tests.sniff_files import dicom, dicom_polyglot, pdf, pe


async def _refused(env: Env, data: bytes, content_type: str, code: str) -> dict[str, Any]:
    resp = await upload(env, data, headers={"Content-Type": content_type})
    assert resp.status == 415, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    problem: dict[str, Any] = await resp.json()
    assert problem["code"] == code
    await env.assert_nothing_left()
    return problem


async def test_an_executable_declared_as_a_pdf_is_refused(env: Env) -> None:
    problem = await _refused(env, pe(3 * 1024 * 1024), "application/pdf", "type_mismatch")
    assert "Windows executable" in problem["detail"]


async def test_a_dicom_polyglot_is_refused_whatever_it_is_declared(env: Env) -> None:
    for declared in ("application/dicom", "application/octet-stream"):
        problem = await _refused(env, dicom_polyglot(), declared, "dicom_polyglot")
        assert "CVE-2019-11687" in problem["detail"]


async def test_dicom_without_its_preamble_is_refused_and_real_dicom_passes(env: Env) -> None:
    await _refused(env, os.urandom(5000), "application/dicom", "type_mismatch")
    data = dicom(300_000)
    resp = await upload(env, data, headers={"Content-Type": "application/dicom"})
    assert resp.status == 201, await resp.text()
    assert await (await download(env, (await resp.json())["id"])).read() == data


async def test_matching_and_unjudged_types_pass(env: Env) -> None:
    for data, declared in (
        (pdf(10_000), "application/pdf"),
        (pe(), "application/octet-stream"),
        (b"MZ Clinic, referral letter\n" * 50, "text/plain"),
        (os.urandom(2000), "video/mp2t"),
    ):
        resp = await upload(env, data, headers={"Content-Type": declared})
        assert resp.status == 201, (declared, await resp.text())


async def test_the_allow_list_refuses_before_reading(make_env: Any) -> None:
    env: Env = await make_env(allowed_types=frozenset({"application/pdf", "image/*"}))
    await _refused(env, pdf(), "application/dicom", "type_not_allowed")
    # Declared too large to read, yet answered with the type refusal: nothing was read.
    resp = await env.client.post(
        "/v1/files", data=b"x" * 10, headers={**ALICE, "Content-Type": "text/plain"}
    )
    assert resp.status == 415
    assert (await resp.json())["code"] == "type_not_allowed"
    ok = await upload(env, pdf(), headers={"Content-Type": "application/pdf"})
    assert ok.status == 201
    if env.backend == "s3":  # direct uploads: refused before any URL is signed
        intent = {"contentType": "text/plain", "size": 10, "name": "n.txt"}
        refused = await env.client.post("/v1/uploads", json=intent, headers=ALICE)
        assert refused.status == 415
        assert (await refused.json())["code"] == "type_not_allowed"


@pytest.mark.parametrize("backend", ["local"])
async def test_report_mode_logs_and_lets_the_upload_on(
    make_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    env: Env = await make_env(type_check="report")
    resp = await upload(env, pe(), headers={"Content-Type": "application/pdf"})
    assert resp.status == 201, await resp.text()
    assert "type.reported" in capsys.readouterr().out
