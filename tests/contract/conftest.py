"""The ``storage`` fixture: one ``StorageCase`` per backend, against real servers.

To add a backend, write an async context manager ``(request, tmp_path) -> StorageCase``
and register it in ``BACKENDS``; every contract test then runs against it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fileshare.storage.base import Storage
from fileshare.storage.encryption import Encryption
from fileshare.storage.local import WRITE_BATCH, LocalStorage
from fileshare.storage.s3 import MIN_PART_SIZE, S3Storage

#: The S3 part size under test: S3's minimum, so that multipart sizes stay small.
PART_SIZE = MIN_PART_SIZE

Leftovers = Callable[[str, str], Awaitable[list[str]]]
BrokenFactory = Callable[[], AbstractAsyncContextManager[Storage]]


@dataclass(frozen=True)
class StorageCase:
    name: str
    storage: Storage
    unscanned: str
    permanent: str
    #: ``Writer.buffered()`` returns the bytes while fewer than this many were written.
    buffer_limit: int
    #: ``leftovers(bucket, key)``: what an unfinished write or copy of ``key`` may leave
    #: behind (S3: multipart uploads; local: staging directories). Empty after abort.
    leftovers: Leftovers
    #: A storage for the same buckets whose every request fails (bad credentials), or
    #: None when the backend has no such notion.
    broken: BrokenFactory | None = None

    def key(self, prefix: str = "test") -> str:
        """A fresh key: buckets are shared by the whole session on servers."""
        return f"{prefix}/{uuid.uuid4().hex}"


Backend = Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[StorageCase]]


@asynccontextmanager
async def local_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StorageCase]:
    root = tmp_path / "storage"
    storage = LocalStorage(root, buckets=("unscanned", "permanent"))

    async def leftovers(bucket: str, key: str) -> list[str]:
        return sorted(os.listdir(root / bucket / ".partial"))

    try:
        yield StorageCase(
            name="local",
            storage=storage,
            unscanned="unscanned",
            permanent="permanent",
            buffer_limit=WRITE_BATCH,
            leftovers=leftovers,
        )
    finally:
        await storage.close()


@asynccontextmanager
async def s3_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageCase]:
    seaweed = request.getfixturevalue("seaweed")
    buckets = ("contract-unscanned", "contract-permanent")
    for bucket in buckets:
        seaweed.create_bucket(bucket)

    def make(secret_key: str) -> S3Storage:
        return S3Storage(
            buckets=buckets,
            endpoint=seaweed.endpoint,
            region=seaweed.region,
            access_key=seaweed.access_key,
            secret_key=secret_key,
            part_size=PART_SIZE,
            parts_in_flight=2,
            timeout=30,
            copy_part_size=PART_SIZE,  # several copy parts even for small test objects
            # As deployed: every contract test (ranges, copies...) runs on encrypted objects.
            encryption=Encryption("sse-s3"),
        )

    storage = make(seaweed.secret_key)
    await storage.start()

    async def leftovers(bucket: str, key: str) -> list[str]:
        resp = await storage._client.list_multipart_uploads(Bucket=bucket, Prefix=key)
        return [f"{u.get('Key')} {u.get('UploadId')}" for u in resp.get("Uploads", [])]

    @asynccontextmanager
    async def broken() -> AsyncIterator[Storage]:
        async with make("wrong-" + seaweed.secret_key) as bad:
            yield bad

    try:
        yield StorageCase(
            name="s3",
            storage=storage,
            unscanned=buckets[0],
            permanent=buckets[1],
            buffer_limit=PART_SIZE,
            leftovers=leftovers,
            broken=broken,
        )
    finally:
        await storage.close()


@asynccontextmanager
async def gcs_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageCase]:
    from google.oauth2.credentials import Credentials

    from fileshare.storage.gcs import GcsStorage
    from tests.contract.test_gcs_specific import recording_proxy

    fake_gcs = request.getfixturevalue("fake_gcs")
    buckets = ("contract-unscanned", "contract-permanent")
    for bucket in buckets:
        fake_gcs.create_bucket(bucket)

    @asynccontextmanager
    async def broken() -> AsyncIterator[Storage]:
        # A refresh token its token endpoint refuses (fake-gcs checks no credentials).
        creds = Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token="wrong-refresh-token",
            client_id="fileshare-tests",
            client_secret="wrong-client-secret",
            token_uri=f"{fake_gcs.endpoint}/oauth2/v4/token",
        )
        async with await GcsStorage.create(
            endpoint=proxy.url, buckets=buckets, part_size=PART_SIZE, credentials=creds
        ) as bad:
            yield bad

    # Through a recording proxy: GCS cannot list resumable sessions, the proxy can tell
    # which were neither finalised nor cancelled.
    async with recording_proxy(fake_gcs.endpoint) as proxy:
        storage = await GcsStorage.create(
            endpoint=proxy.url, buckets=buckets, part_size=PART_SIZE, timeout=30
        )

        async def leftovers(bucket: str, key: str) -> list[str]:
            return proxy.open_sessions(bucket, key)

        try:
            yield StorageCase(
                name="gcs",
                storage=storage,
                unscanned=buckets[0],
                permanent=buckets[1],
                buffer_limit=PART_SIZE,
                leftovers=leftovers,
                broken=broken,
            )
        finally:
            await storage.close()


BACKENDS: dict[str, Backend] = {
    "local": local_backend,
    "s3": s3_backend,
    "gcs": gcs_backend,
}


@pytest.fixture(params=list(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageCase]:
    async with BACKENDS[request.param](request, tmp_path) as case:
        yield case
