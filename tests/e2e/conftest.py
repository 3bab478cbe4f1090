"""The whole service, in-process, on each storage backend against real servers:
local storage with the SQLite index, S3 (SeaweedFS) and GCS (fake-gcs-server) with the
PostgreSQL index."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from fileshare.app import STORAGE, create_app
from fileshare.config import MiB, Settings
from fileshare.models import UPLOAD_KEY_PREFIX
from fileshare.storage.base import Storage
from tests.e2e.openapi_check import Contracts, ValidatingClient, check_response

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}
PART = 5 * MiB
MAX_UPLOAD = 96 * MiB


@dataclass
class Env:
    """One running fileshare and a way to look behind it."""

    client: TestClient[Any, Any]
    settings: Settings
    backend: str
    s3: Any = None  # a boto3 client for S3-only checks

    @property
    def storage(self) -> Storage:
        return self.client.app[STORAGE]

    async def keys(self, bucket: str) -> list[str]:
        return [k async for k in self.storage.list_keys(bucket)]

    async def permanent_keys(self) -> list[str]:
        """Content objects: ``sha256/...`` (copy promotion), ``objects/...`` (single-write)."""
        return [
            k
            for k in await self.keys(self.settings.permanent_bucket)
            if k.startswith(("sha256/", UPLOAD_KEY_PREFIX))
        ]

    async def unscanned_keys(self) -> list[str]:
        return await self.keys(self.settings.unscanned_bucket)

    def open_multipart_uploads(self) -> list[str]:
        if self.s3 is None:
            return []
        found: list[str] = []
        for bucket in (self.settings.unscanned_bucket, self.settings.permanent_bucket):
            answer = self.s3.list_multipart_uploads(Bucket=bucket)
            found += [u["Key"] for u in answer.get("Uploads", [])]
        return found

    async def assert_nothing_left(self) -> None:
        """Invariant 4 after a failed upload: nothing promoted, nothing staged."""
        assert await self.permanent_keys() == []
        assert await self.unscanned_keys() == []
        assert self.open_multipart_uploads() == []


def _buckets() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"unscanned-{tag}", f"permanent-{tag}"


@pytest.fixture(params=["local", "s3", "gcs"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def base_settings(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    clamd = request.getfixturevalue("clamd")
    unscanned, permanent = _buckets()
    common: dict[str, Any] = {
        "unscanned_bucket": unscanned,
        "permanent_bucket": permanent,
        "data_dir": tmp_path / "data",
        "index_path": tmp_path / "index.sqlite3",
        "clamd": _address(clamd.address),
        "max_upload_size": MAX_UPLOAD,
        "part_size": PART,
        "memory_budget": 64 * MiB,
        "budget_wait": 2.0,
        "api_keys": {"alice": ALICE_KEY, "bob": BOB_KEY},
        "public_base_url": "https://files.example.test/",
        "log_format": "console",
        "clamd_verdict_timeout": 30.0,
    }
    if backend != "local":
        # Cloud backends run with the production index: a database of their own each.
        postgres = request.getfixturevalue("postgres")
        common["index_url"] = postgres.create_database(f"e2e_{uuid.uuid4().hex[:12]}")
    if backend == "s3":
        seaweed = request.getfixturevalue("seaweed")
        seaweed.create_bucket(unscanned)
        seaweed.create_bucket(permanent)
        common |= {
            "storage": "s3",
            "s3_endpoint": seaweed.endpoint,
            "s3_region": seaweed.region,
            "s3_access_key": seaweed.access_key,
            "s3_secret_key": seaweed.secret_key,
        }
    elif backend == "gcs":
        gcs = request.getfixturevalue("fake_gcs")
        gcs.create_bucket(unscanned)
        gcs.create_bucket(permanent)
        common |= {"storage": "gcs", "gcs_endpoint": gcs.endpoint, "gcs_project": "test"}
    return Settings(**common)


def _address(value: str) -> Any:
    from fileshare.config import ClamdAddress

    return ClamdAddress.parse(value)


@pytest.fixture(scope="session")
def api_contracts() -> Contracts:
    """The served OpenAPI documents, each compiled into validators once per session."""
    return Contracts()


@pytest.fixture
def aiohttp_client_cls() -> type[TestClient[Any, Any]]:
    """Every e2e client checks every answer against the OpenAPI document."""
    return ValidatingClient


@pytest.fixture
def make_env(
    aiohttp_client: AiohttpClient,
    base_settings: Settings,
    backend: str,
    request: pytest.FixtureRequest,
    api_contracts: Contracts,
) -> Any:
    async def make(**overrides: Any) -> Env:
        settings = replace(base_settings, **overrides)
        client = await aiohttp_client(create_app(settings))
        assert isinstance(client, ValidatingClient)
        # Checked against exactly what this app serves (the document's own answer too).
        served = await client.get("/openapi.json")
        assert served.status == 200, await served.text()
        client.contract = api_contracts.get(await served.read())
        await check_response(client.contract, served)
        s3 = None
        if backend == "s3":
            seaweed = request.getfixturevalue("seaweed")
            s3 = seaweed.client()
        return Env(client=client, settings=settings, backend=backend, s3=s3)

    return make


@pytest.fixture
def quarantine_bucket(backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh quarantine bucket on the test's backend (local: a directory made on use)."""
    name = f"quarantine-{uuid.uuid4().hex[:10]}"
    if backend == "s3":
        request.getfixturevalue("seaweed").create_bucket(name)
    elif backend == "gcs":
        request.getfixturevalue("fake_gcs").create_bucket(name)
    return name


@pytest.fixture
async def env(make_env: Any) -> Env:
    return await make_env()  # type: ignore[no-any-return]
