"""Sealed writes (``Writer.seal``), the storage half of single-write promotion, on every
backend against its real server: after ``seal`` every byte has left fileshare, yet the
object can be neither read, nor listed, nor completed by anyone without the writer; a
``commit`` makes it visible with no data moved, an ``abort`` leaves nothing, and a crash
leaves only an unfinished upload the sweeper aborts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from fileshare.storage.base import ObjectNotFound, StorageError
from fileshare.storage.gcs import CHUNK_QUANTUM
from fileshare.storage.s3 import S3Storage
from tests.contract.conftest import PART_SIZE, StorageCase, s3_backend
from tests.contract.test_gcs_specific import recording_proxy
from tests.contract.test_storage import _data, _keys, _read_all, _write_all

P = PART_SIZE
Q = CHUNK_QUANTUM
#: Around every boundary seal cares about: nothing, less than GCS's 256 KiB quantum, a
#: body ending on a quantum, less than one part (all in memory), parts, parts and a tail.
SIZES = [0, 1, Q - 1, 4 * Q, 4 * Q + 7, P - 1, P, 3 * P + 1]


async def _invisible(case: StorageCase, bucket: str, key: str) -> None:
    s = case.storage
    with pytest.raises(ObjectNotFound):
        await s.head(bucket, key)
    with pytest.raises(ObjectNotFound):
        await _read_all(case, bucket, key)
    assert await _keys(case, bucket, key) == []


@pytest.mark.parametrize("size", SIZES)
async def test_a_sealed_write_is_invisible_until_its_commit(
    storage: StorageCase, size: int
) -> None:
    s, key, data = storage.storage, storage.key("objects"), _data(size)
    writer = await s.open_writer(storage.permanent, key, content_type="application/pdf")
    try:
        await _write_all(writer, data)
        await writer.seal()
        await _invisible(storage, storage.permanent, key)
        info = await writer.commit()
    finally:
        await writer.abort()
    assert (info.key, info.size, info.content_type) == (key, size, "application/pdf")
    head = await s.head(storage.permanent, key)
    assert (head.size, head.version) == (size, info.version)
    assert await _read_all(storage, storage.permanent, key) == data
    assert await storage.leftovers(storage.permanent, key) == []


@pytest.mark.parametrize("size", [1, 4 * Q, 3 * P + 1])
async def test_an_aborted_sealed_write_leaves_nothing(storage: StorageCase, size: int) -> None:
    s, key = storage.storage, storage.key("objects")
    writer = await s.open_writer(storage.permanent, key)
    await _write_all(writer, _data(size))
    await writer.seal()
    await writer.abort()
    await _invisible(storage, storage.permanent, key)
    assert await storage.leftovers(storage.permanent, key) == []
    with pytest.raises(StorageError):
        await writer.commit()


async def test_nothing_is_written_after_a_seal(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key("objects")
    writer = await s.open_writer(storage.permanent, key)
    try:
        await writer.write(b"the whole body")
        await writer.seal()
        with pytest.raises(StorageError):
            await writer.write(b" and more")
        with pytest.raises(StorageError):
            await writer.seal()
        info = await writer.commit()
    finally:
        await writer.abort()
    assert info.size == len(b"the whole body")
    assert await _read_all(storage, storage.permanent, key) == b"the whole body"


async def test_a_sealed_write_a_crash_left_is_aborted_by_the_sweep(storage: StorageCase) -> None:
    """A replica killed between seal and verdict: only an unfinished upload stays (no
    object), and ``abort_stale_uploads`` removes it once older than the bound."""
    s, key = storage.storage, storage.key("objects")
    writer = await s.open_writer(storage.permanent, key)
    try:
        await _write_all(writer, _data(2 * P + 3))
        await writer.seal()
        await _invisible(storage, storage.permanent, key)
        assert await storage.leftovers(storage.permanent, key) != []
        recent = datetime.now(UTC) - timedelta(hours=1)
        assert await s.abort_stale_uploads(storage.permanent, key, recent) == 0
        later = datetime.now(UTC) + timedelta(hours=1)
        aborted = await s.abort_stale_uploads(storage.permanent, key, later)
        if storage.name == "gcs":
            # Resumable sessions cannot be listed; an abandoned one expires after a week
            # and was never an object.
            assert aborted == 0
        else:
            assert aborted == 1
            assert await storage.leftovers(storage.permanent, key) == []
        await _invisible(storage, storage.permanent, key)
    finally:
        await writer.abort()


async def test_s3_a_sealed_upload_is_completed_only_with_its_upload_id(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Anyone who may write the bucket can list the unfinished upload, but completing it
    needs its id and its parts' ETags: a guessed id is refused and nothing appears. (GCS
    sessions and local hidden files have no such id: their URL or path is the writer's.)"""
    async with s3_backend(request, tmp_path) as storage:
        await _complete_only_with_the_id(storage)


async def _complete_only_with_the_id(storage: StorageCase) -> None:
    s = storage.storage
    assert isinstance(s, S3Storage)
    key = storage.key("objects")
    writer = await s.open_writer(storage.permanent, key)
    try:
        await _write_all(writer, _data(P + 5))
        await writer.seal()
        with pytest.raises(ClientError):
            await s._client.complete_multipart_upload(
                Bucket=storage.permanent,
                Key=key,
                UploadId="not-the-upload-id",
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0"'}]},
            )
        listed = await s._client.list_objects_v2(Bucket=storage.permanent, Prefix=key)
        assert listed.get("KeyCount", 0) == 0
        await _invisible(storage, storage.permanent, key)
        await writer.commit()
    finally:
        await writer.abort()
    assert (await s.head(storage.permanent, key)).size == P + 5


async def test_part_checksums_are_computed_right_and_checked_by_the_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """fileshare computes each part's CRC32 itself, off the event loop, and sends it as
    ``x-amz-checksum-crc32`` (botocore then skips its own): the store refuses a part whose
    checksum is wrong, and accepts every part fileshare sends."""
    async with s3_backend(request, tmp_path) as case:
        s = case.storage
        assert isinstance(s, S3Storage)
        key = case.key("crc")
        created = await s._client.create_multipart_upload(
            Bucket=case.permanent, Key=key, ChecksumAlgorithm="CRC32"
        )
        try:
            with pytest.raises(ClientError) as refused:
                await s._client.upload_part(
                    Bucket=case.permanent,
                    Key=key,
                    UploadId=created["UploadId"],
                    PartNumber=1,
                    Body=b"x" * 1000,
                    ChecksumAlgorithm="CRC32",
                    ChecksumCRC32="AAAAAA==",
                )
            assert refused.value.response["Error"]["Code"] == "BadDigest"
        finally:
            await s._client.abort_multipart_upload(
                Bucket=case.permanent, Key=key, UploadId=created["UploadId"]
            )
        data = _data(3 * P + 1)
        writer = await s.open_writer(case.permanent, key)
        await _write_all(writer, data)
        await writer.commit()
        assert await _read_all(case, case.permanent, key) == data


async def test_a_body_ending_on_a_part_boundary_seals_without_an_empty_part(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with s3_backend(request, tmp_path) as case:
        s = case.storage
        assert isinstance(s, S3Storage)
        key = case.key("boundary")
        writer = await s.open_writer(case.permanent, key)
        data = _data(2 * P)
        await _write_all(writer, data)
        await writer.seal()
        listed = await s._client.list_multipart_uploads(Bucket=case.permanent, Prefix=key)
        (upload,) = listed["Uploads"]
        parts = await s._client.list_parts(
            Bucket=case.permanent, Key=key, UploadId=upload["UploadId"]
        )
        assert [p["Size"] for p in parts["Parts"]] == [P, P]
        await writer.commit()
        assert await _read_all(case, case.permanent, key) == data


async def test_a_copy_cancelled_while_its_upload_is_created_leaves_no_upload(
    request: pytest.FixtureRequest,
) -> None:
    """The client leaves (its handler is cancelled) while the store is creating the
    promotion copy's multipart upload: once the store answers, the upload is aborted,
    never left invisible with an id nobody knows. The Recorder holds the create request
    so that the cancellation lands exactly there (a real server cannot be made to)."""
    seaweed = request.getfixturevalue("seaweed")
    src, dst = "cancel-src", "cancel-dst"
    for bucket in (src, dst):
        seaweed.create_bucket(bucket)
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_create(req: web.Request, body: bytes) -> web.StreamResponse | None:
        if req.method == "POST" and "uploads" in req.query and req.path.startswith(f"/{dst}/"):
            held.set()
            await release.wait()
        return None

    async with recording_proxy(seaweed.endpoint) as rec:
        storage = S3Storage(
            buckets=(src, dst),
            endpoint=rec.url,
            region=seaweed.region,
            access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
            part_size=P,
            timeout=30,
        )
        await storage.start()
        try:
            data = _data(P + 1)
            await storage.put(src, "staged", data)
            rec.intercept = hold_create
            copy = asyncio.create_task(
                storage.begin_copy(src, "staged", dst, "target", size=len(data))
            )
            await held.wait()
            copy.cancel()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await copy
            listed = await storage._client.list_multipart_uploads(Bucket=dst)
            assert listed.get("Uploads", []) == []
        finally:
            await storage.close()
