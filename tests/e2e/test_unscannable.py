"""``unscannable`` (issue 13): bytes clamd could not scan through — encrypted, or past one
of its limits — are their own verdict, never ``clean`` and never ``infected``: the upload
is refused with ``422 unscannable`` naming clamd's reason, the verdict is recorded with its
provenance, and nothing is left in either bucket. Real clamd, real bytes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fileshare.app import INDEX
from fileshare.config import ClamdAddress, MiB
from fileshare.index.tables import contents
from fileshare.models import ScanState
from tests.e2e.conftest import Env
from tests.e2e.test_upload import EICAR, upload
from tests.servers import Clamd
from tests.unscannable_files import encrypted_pdf, encrypted_zip, nested_zip, zip_of


async def _refused_as_unscannable(env: Env, data: bytes, reason: str) -> None:
    resp = await upload(env, data)
    assert resp.status == 422, await resp.text()
    problem = await resp.json()
    assert problem["code"] == "unscannable"
    assert problem["signature"].startswith(reason), problem
    assert problem["signature"] in problem["detail"]
    await env.assert_nothing_left()
    # The verdict is remembered as what it is, with the scanner that made it.
    sha = hashlib.sha256(data).hexdigest()

    def row(conn: Any) -> Any:
        return conn.execute(select(contents).where(contents.c.sha256 == sha)).mappings().one()

    content = await env.client.app[INDEX].run(row)  # type: ignore[attr-defined]
    assert content["state"] == ScanState.UNSCANNABLE
    assert content["signature"] == problem["signature"]
    assert content["object_key"] is None
    # The test database has no daily.cvd, so clamd names no database version here.
    assert content["scanner"].startswith("ClamAV ")
    assert content["scanned_at"] is not None


@pytest.mark.parametrize(
    ("make", "reason"),
    [(encrypted_zip, "Heuristics.Encrypted.Zip"), (encrypted_pdf, "Heuristics.Encrypted.PDF")],
)
async def test_encrypted_content_is_unscannable_not_infected_nor_clean(
    env: Env, make: Any, reason: str
) -> None:
    await _refused_as_unscannable(env, make(), reason)


async def test_malware_is_still_infected(env: Env) -> None:
    resp = await upload(env, EICAR)
    assert resp.status == 422
    assert (await resp.json())["code"] == "infected"


@pytest.fixture(scope="module")
def limited_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """A clamd with small limits (its stream limit stays large: fileshare sends it all)."""
    limits = {
        "MaxFileSize": str(1 * MiB),
        "MaxScanSize": str(2 * MiB),
        "MaxRecursion": "3",
        "MaxFiles": "5",
    }
    with Clamd(workdir=tmp_path_factory.mktemp("limited-clamd"), extra_config=limits) as server:
        yield server


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("over MaxFileSize", "Heuristics.Limits.Exceeded.MaxFileSize"),
        ("over MaxScanSize", "Heuristics.Limits.Exceeded.MaxScanSize"),
        ("over MaxRecursion", "Heuristics.Limits.Exceeded.MaxRecursion"),
        ("over MaxFiles", "Heuristics.Limits.Exceeded.MaxFiles"),
    ],
)
async def test_bytes_past_a_clamd_limit_are_unscannable(
    make_env: Any, limited_clamd: Clamd, tmp_path: Path, name: str, reason: str
) -> None:
    host, port = limited_clamd.host, limited_clamd.port
    env: Env = await make_env(clamd=ClamdAddress(host=host, port=port))
    data = {
        "over MaxFileSize": lambda: os.urandom(2 * MiB),
        "over MaxScanSize": lambda: zip_of(3, 900 * 1024),
        "over MaxRecursion": lambda: nested_zip(6),
        "over MaxFiles": lambda: zip_of(12, 100),
    }[name]()
    await _refused_as_unscannable(env, data, reason)
    # Under the limits the same clamd passes clean bytes.
    ok = await upload(env, os.urandom(64 * 1024))
    assert ok.status == 201, await ok.text()
