"""The storage contract (``fileshare.storage.base``), run against every backend.

Tests are backend-neutral unless their name says otherwise; backend-specific checks use
the case's hooks (``leftovers``, ``broken``) so that a new backend only needs a fixture.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fileshare.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    Writer,
)
from fileshare.storage.local import LocalStorage
from tests.contract.conftest import PART_SIZE, StorageCase

P = PART_SIZE
#: Sizes around the part boundaries (S3 multipart with 5 MiB parts).
AWKWARD_SIZES = [0, 1, P - 1, P, P + 1, 3 * P + 1]
#: Chunk sizes a writer is fed with, cycled: nothing aligned with anything.
CHUNKS = [1, 1000, 65_537, 1024 * 1024 + 3, 7]
#: No read chunk may be larger than this (bounded memory).
MAX_READ_CHUNK = 1024 * 1024


def _data(size: int) -> bytes:
    return os.urandom(size)


async def _write_all(writer: Writer, data: bytes) -> None:
    view = memoryview(data)
    offset = 0
    for n in itertools.cycle(CHUNKS):
        if offset >= len(data):
            return
        await writer.write(bytes(view[offset : offset + n]))
        offset += n


async def _write_and_commit(s: Storage, bucket: str, key: str, data: bytes) -> ObjectInfo:
    """open_writer, write, commit; abort whatever happens (as the pipeline does)."""
    writer = await s.open_writer(bucket, key)
    try:
        await _write_all(writer, data)
        return await writer.commit()
    finally:
        await writer.abort()


async def _copy_and_commit(
    s: Storage, *args: str, size: int, src_version: str | None = None
) -> ObjectInfo:
    copy = await s.begin_copy(*args, size=size, src_version=src_version)
    try:
        return await copy.commit()
    finally:
        await copy.abort()


async def _read_all(case: StorageCase, bucket: str, key: str, **kw: int | None) -> bytes:
    out = bytearray()
    async for chunk in case.storage.read(bucket, key, **kw):  # type: ignore[arg-type]
        assert 0 < len(chunk) <= MAX_READ_CHUNK
        out += chunk
    return bytes(out)


async def _keys(case: StorageCase, bucket: str, prefix: str) -> list[str]:
    return [k async for k in case.storage.list_keys(bucket, prefix)]


async def _assert_absent(case: StorageCase, bucket: str, key: str) -> None:
    with pytest.raises(ObjectNotFound):
        await case.storage.head(bucket, key)
    assert await _keys(case, bucket, key) == []
    assert await case.leftovers(bucket, key) == []


# --- writer ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", AWKWARD_SIZES)
async def test_writer_round_trip(storage: StorageCase, size: int) -> None:
    s, key, data = storage.storage, storage.key(), _data(size)
    meta = {"sha256": "ab" * 32, "owner": "someone"}
    writer = await s.open_writer(storage.unscanned, key, content_type="image/png", metadata=meta)
    try:
        await _write_all(writer, data)
        with pytest.raises(ObjectNotFound):  # invisible until commit
            await s.head(storage.unscanned, key)
        info = await writer.commit()
    finally:
        await writer.abort()  # after commit: a no-op
    assert (info.key, info.size, info.content_type, info.metadata) == (key, size, "image/png", meta)
    assert info.version

    head = await s.head(storage.unscanned, key)
    assert (head.key, head.size, head.content_type, head.metadata) == (
        key,
        size,
        "image/png",
        meta,
    )
    assert head.version == info.version
    assert await _read_all(storage, storage.unscanned, key) == data
    assert await storage.leftovers(storage.unscanned, key) == []


async def test_writer_buffered_while_nothing_sent(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key()
    writer = await s.open_writer(storage.unscanned, key)
    try:
        assert writer.buffered() == b""
        small = _data(1000)
        await writer.write(small)
        await writer.write(b"x")
        assert writer.buffered() == small + b"x"
        await writer.write(_data(storage.buffer_limit))
        assert writer.buffered() is None  # some of it has left memory
    finally:
        await writer.abort()
    await _assert_absent(storage, storage.unscanned, key)


async def test_writer_buffered_bytes_can_be_put_elsewhere(storage: StorageCase) -> None:
    """The pipeline's small-file path: never commit the writer, put its buffer."""
    s, key, data = storage.storage, storage.key(), _data(4321)
    writer = await s.open_writer(storage.unscanned, key)
    try:
        await _write_all(writer, data)
        buffered = writer.buffered()
        assert buffered == data
        await s.put(storage.permanent, key, buffered, if_absent=True)
    finally:
        await writer.abort()
    await _assert_absent(storage, storage.unscanned, key)
    assert await _read_all(storage, storage.permanent, key) == data


@pytest.mark.parametrize("size", [10, 3 * P + 1])
async def test_writer_abort_leaves_nothing(storage: StorageCase, size: int) -> None:
    s, key = storage.storage, storage.key()
    writer = await s.open_writer(storage.unscanned, key)
    await _write_all(writer, _data(size))
    await writer.abort()
    await writer.abort()  # idempotent
    await _assert_absent(storage, storage.unscanned, key)
    with pytest.raises(StorageError):
        await writer.write(b"more")


async def test_writer_cancelled_mid_write_then_aborted(storage: StorageCase) -> None:
    """A request cancelled while ``write`` waits (back-pressure) leaves nothing behind."""
    s, key = storage.storage, storage.key()
    writer = await s.open_writer(storage.unscanned, key)
    data = _data(4 * P)
    task = asyncio.create_task(_write_all(writer, data))
    # Cancel once something has left memory (S3: the multipart upload is being created
    # or parts are in flight); the local backend may even have finished: fine too.
    while writer.buffered() is not None and not task.done():  # noqa: ASYNC110 (polls state)
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.wait([task])
    await writer.abort()
    await _assert_absent(storage, storage.unscanned, key)


async def test_writer_replaces_existing_object(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key()
    first = await s.put(storage.unscanned, key, b"old", metadata={"v": "1"})
    writer = await s.open_writer(storage.unscanned, key, content_type="text/plain")
    try:
        await writer.write(b"new content")
        info = await writer.commit()
    finally:
        await writer.abort()
    assert info.version != first.version
    head = await s.head(storage.unscanned, key)
    assert (head.size, head.content_type, head.metadata) == (11, "text/plain", {})
    assert await _read_all(storage, storage.unscanned, key) == b"new content"


async def test_writer_closed_after_commit(storage: StorageCase) -> None:
    writer = await storage.storage.open_writer(storage.unscanned, storage.key())
    await writer.write(b"abc")
    await writer.commit()
    with pytest.raises(StorageError):
        await writer.write(b"more")
    with pytest.raises(StorageError):
        await writer.commit()
    await writer.abort()


async def test_writer_to_a_bucket_that_cannot_exist_fails(storage: StorageCase) -> None:
    """A write that the backend refuses (here, midway at the first part it sends)
    raises ``StorageError`` by ``commit`` at the latest, and abort leaves nothing.

    The name is invalid for S3: SeaweedFS creates missing buckets on write for admin
    identities, so a merely missing name would succeed there."""
    s, key = storage.storage, storage.key()
    with pytest.raises(StorageError):
        await _write_and_commit(s, "no_such_bucket", key, _data(3 * P))


# Backends with credentials to break (the local directory has none).
WITH_CREDENTIALS = pytest.mark.parametrize("storage", ["s3", "gcs"], indirect=True)


@WITH_CREDENTIALS
async def test_writer_failing_midway_broken_backend(storage: StorageCase) -> None:
    """Backend-specific (S3: wrong secret key): the failure surfaces as ``StorageError``
    once the writer talks to the server, and nothing is left behind."""
    assert storage.broken is not None
    key = storage.key()
    async with storage.broken() as bad:
        with pytest.raises(StorageError) as caught:
            await _write_and_commit(bad, storage.unscanned, key, _data(3 * P + 1))
    assert "wrong-" not in str(caught.value)
    await _assert_absent(storage, storage.unscanned, key)


@WITH_CREDENTIALS
async def test_bad_credentials_are_storage_errors(storage: StorageCase) -> None:
    """Backend-specific: no SDK exception escapes, and no secret is in the message."""
    assert storage.broken is not None
    key = storage.key()
    await storage.storage.put(storage.unscanned, key, b"exists")
    async with storage.broken() as bad:
        calls = [
            bad.head(storage.unscanned, key),
            bad.put(storage.unscanned, key, b"x"),
            bad.delete(storage.unscanned, key),
            bad.ping(),
            _drain(bad.read(storage.unscanned, key)),
            _drain(bad.list_keys(storage.unscanned)),
        ]
        for call in calls:
            with pytest.raises(StorageError) as caught:
                await call
            assert type(caught.value) is StorageError  # not "not found", not "exists"
            assert "wrong-" not in str(caught.value)
    assert await _read_all(storage, storage.unscanned, key) == b"exists"


async def _drain(stream: AsyncIterator[object]) -> None:
    async for _ in stream:
        pass


# --- put, head, read, delete, list ----------------------------------------------------


async def test_put_round_trip_with_metadata(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key()
    meta = {"sha1": "qUqP5cyxm6YcTAhz05Hph5gvu9M=", "name": "report.pdf"}
    info = await s.put(
        storage.permanent, key, b"%PDF-1.7", content_type="application/pdf", metadata=meta
    )
    assert (info.size, info.content_type, info.metadata) == (8, "application/pdf", meta)
    head = await s.head(storage.permanent, key)
    assert (head.size, head.content_type, head.metadata, head.version) == (
        8,
        "application/pdf",
        meta,
        info.version,
    )
    assert await _read_all(storage, storage.permanent, key) == b"%PDF-1.7"


async def test_put_defaults_and_empty_object(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key()
    await s.put(storage.permanent, key, b"")
    head = await s.head(storage.permanent, key)
    assert (head.size, head.content_type, head.metadata) == (0, "application/octet-stream", {})
    assert await _read_all(storage, storage.permanent, key) == b""


async def test_put_if_absent(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key("sha256/ab/cd")
    await s.put(storage.permanent, key, b"first", if_absent=True, metadata={"n": "1"})
    with pytest.raises(ObjectExists):
        await s.put(storage.permanent, key, b"second", if_absent=True, metadata={"n": "2"})
    head = await s.head(storage.permanent, key)
    assert head.metadata == {"n": "1"}
    assert await _read_all(storage, storage.permanent, key) == b"first"
    # Without if_absent, put replaces.
    await s.put(storage.permanent, key, b"third")
    assert await _read_all(storage, storage.permanent, key) == b"third"


async def test_put_if_absent_race_has_one_winner(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key()
    results = await asyncio.gather(
        *(s.put(storage.permanent, key, b"same", if_absent=True) for _ in range(8)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert all(isinstance(r, ObjectExists) for r in results if r not in winners), results


async def test_head_and_read_missing(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key()
    with pytest.raises(ObjectNotFound):
        await s.head(storage.permanent, key)
    stream = s.read(storage.permanent, key)
    with pytest.raises(ObjectNotFound):
        await anext(stream)
    with pytest.raises(ObjectNotFound):
        await s.head("missing-bucket-0b1d", key)
    with pytest.raises(ObjectNotFound):
        await _drain(s.read("missing-bucket-0b1d", key))


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 0),  # first byte
        (0, None),  # everything
        (12_345, 500_000),  # middle, across read chunks
        (777_776, 777_776),  # last byte
        (700_000, None),  # to the end
        (0, 777_776),
        (700_000, 10_000_000),  # end past the end: clipped
    ],
)
async def test_read_ranges(storage: StorageCase, start: int, end: int | None) -> None:
    s, key, data = storage.storage, storage.key(), _data(777_777)
    await s.put(storage.permanent, key, data)
    got = await _read_all(storage, storage.permanent, key, start=start, end=end)
    assert got == data[start : None if end is None else end + 1]


async def test_read_range_beyond_the_end_fails(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key()
    await s.put(storage.permanent, key, b"0123456789")
    with pytest.raises(StorageError):
        await _drain(s.read(storage.permanent, key, start=10))
    with pytest.raises(StorageError):
        await _drain(s.read(storage.permanent, key, start=5, end=4))


async def test_read_stopped_early_releases_the_stream(storage: StorageCase) -> None:
    s, key, data = storage.storage, storage.key(), _data(3 * 1024 * 1024)
    await s.put(storage.permanent, key, data)
    for _ in range(80):  # more than any connection pool: leaks would hang here
        stream = s.read(storage.permanent, key)
        first = await anext(stream)
        assert data.startswith(first)
        await stream.aclose()  # type: ignore[attr-defined]
    assert await _read_all(storage, storage.permanent, key) == data


async def test_delete_is_idempotent(storage: StorageCase) -> None:
    s, key = storage.storage, storage.key()
    await s.put(storage.permanent, key, b"x")
    await s.delete(storage.permanent, key)
    await s.delete(storage.permanent, key)
    await s.delete(storage.permanent, storage.key())  # never existed
    with pytest.raises(ObjectNotFound):
        await s.head(storage.permanent, key)


async def test_list_keys(storage: StorageCase) -> None:
    s = storage.storage
    base = storage.key("list")
    keys = [f"{base}/a", f"{base}/b/c", f"{base}/b/d", f"{base}x/e"]
    for key in keys:
        await s.put(storage.unscanned, key, b"x")
    pending = await s.open_writer(storage.unscanned, f"{base}/pending")
    await pending.write(_data(storage.buffer_limit + 1))
    copy = await s.begin_copy(storage.unscanned, keys[0], storage.unscanned, f"{base}/copy", size=1)
    try:
        assert await _keys(storage, storage.unscanned, base) == sorted(keys)
        assert await _keys(storage, storage.unscanned, f"{base}/") == sorted(keys[:3])
        assert await _keys(storage, storage.unscanned, f"{base}/b") == keys[1:3]
        assert await _keys(storage, storage.unscanned, f"{base}/b/") == keys[1:3]
        assert await _keys(storage, storage.unscanned, f"{base}/zzz") == []
    finally:
        await pending.abort()
        await copy.abort()
    await s.delete(storage.unscanned, keys[1])
    assert await _keys(storage, storage.unscanned, f"{base}/") == [keys[0], keys[2]]


async def test_ping(storage: StorageCase) -> None:
    await storage.storage.ping()


# --- copies -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, P - 1, P, 2 * P + 3])
async def test_copy_commit(storage: StorageCase, size: int) -> None:
    s, src, dst, data = storage.storage, storage.key(), storage.key("sha256/ab"), _data(size)
    await s.put(storage.unscanned, src, data, content_type="x/staging", metadata={"a": "1"})
    meta = {"sha256": "cd" * 32, "sha1": "abc="}
    copy = await s.begin_copy(
        storage.unscanned,
        src,
        storage.permanent,
        dst,
        size=size,
        content_type="image/jpeg",
        metadata=meta,
    )
    try:
        await asyncio.sleep(0.05)  # let background parts run: still invisible
        with pytest.raises(ObjectNotFound):
            await s.head(storage.permanent, dst)
        info = await copy.commit()
    finally:
        await copy.abort()  # after commit: a no-op
    assert (info.key, info.size, info.content_type, info.metadata) == (
        dst,
        size,
        "image/jpeg",
        meta,
    )
    head = await s.head(storage.permanent, dst)
    assert (head.size, head.content_type, head.metadata, head.version) == (
        size,
        "image/jpeg",
        meta,
        info.version,
    )
    assert await storage.leftovers(storage.permanent, dst) == []
    # The copy is independent of its source.
    await s.delete(storage.unscanned, src)
    assert await _read_all(storage, storage.permanent, dst) == data


@pytest.mark.parametrize("size", [10, 2 * P + 3])
async def test_copy_abort_leaves_nothing(storage: StorageCase, size: int) -> None:
    s, src, dst, data = storage.storage, storage.key(), storage.key(), _data(size)
    await s.put(storage.unscanned, src, data)
    copy = await s.begin_copy(storage.unscanned, src, storage.permanent, dst, size=size)
    await asyncio.sleep(0.05)
    await copy.abort()
    await copy.abort()  # idempotent
    await _assert_absent(storage, storage.permanent, dst)
    with pytest.raises(StorageError):
        await copy.commit()
    assert await _read_all(storage, storage.unscanned, src) == data  # source untouched


@pytest.mark.parametrize("size", [10, 2 * P + 3])
async def test_copy_onto_existing_target_raises_object_exists(
    storage: StorageCase, size: int
) -> None:
    s, src, dst = storage.storage, storage.key(), storage.key()
    await s.put(storage.unscanned, src, _data(size))
    copy = await s.begin_copy(storage.unscanned, src, storage.permanent, dst, size=size)
    try:
        # Another upload of the same content promoted first.
        await s.put(storage.permanent, dst, b"winner", metadata={"w": "1"})
        with pytest.raises(ObjectExists):
            await copy.commit()
    finally:
        await copy.abort()
    head = await s.head(storage.permanent, dst)
    assert (head.size, head.metadata) == (6, {"w": "1"})
    assert await storage.leftovers(storage.permanent, dst) == []


@pytest.mark.parametrize("size", [10, 2 * P + 3])
async def test_copy_of_missing_source(storage: StorageCase, size: int) -> None:
    s, dst = storage.storage, storage.key()
    with pytest.raises(ObjectNotFound):
        await _copy_and_commit(
            s, storage.unscanned, storage.key(), storage.permanent, dst, size=size
        )
    await _assert_absent(storage, storage.permanent, dst)


async def test_writer_then_copy_pipeline_path(storage: StorageCase) -> None:
    """Stage with a writer, copy while "scanning", commit: the pipeline's large path."""
    s, staging, final, data = (
        storage.storage,
        storage.key("staging"),
        storage.key("sha256"),
        _data(2 * P + 5),
    )
    writer = await s.open_writer(storage.unscanned, staging)
    try:
        await _write_all(writer, data)
        assert writer.buffered() is None
        await writer.commit()
    finally:
        await writer.abort()
    copy = await s.begin_copy(storage.unscanned, staging, storage.permanent, final, size=len(data))
    try:
        info = await copy.commit()
    finally:
        await copy.abort()
    await s.delete(storage.unscanned, staging)
    assert info.size == len(data)
    assert await _read_all(storage, storage.permanent, final) == data
    assert (
        await _read_all(storage, storage.permanent, final, start=P - 1, end=P)
        == data[P - 1 : P + 1]
    )


# fake-gcs-server ignores ifSourceGenerationMatch: GCS sends it (test_gcs_specific.py).
@pytest.mark.parametrize("storage", ["local", "s3"], indirect=True)
async def test_copy_is_pinned_to_the_version_written(storage: StorageCase) -> None:
    """The pipeline's source pin: a staging object replaced after it was written (and
    scanned) must not be promoted; the written version itself copies fine."""
    s, staging, final = storage.storage, storage.key("staging"), storage.key("sha256")
    size = 2 * P + 5
    first = await s.put(storage.unscanned, staging, _data(size))
    pinned = await s.begin_copy(
        storage.unscanned, staging, storage.permanent, final, size=size, src_version=first.version
    )
    try:
        assert (await pinned.commit()).size == size
    finally:
        await pinned.abort()
    await s.delete(storage.permanent, final)
    await s.put(storage.unscanned, staging, _data(size)[::-1])  # swapped after the scan
    with pytest.raises(StorageError) as caught:
        await _copy_and_commit(
            s,
            storage.unscanned,
            staging,
            storage.permanent,
            final,
            size=size,
            src_version=first.version,
        )
    assert not isinstance(caught.value, ObjectExists | ObjectNotFound)
    await _assert_absent(storage, storage.permanent, final)
    assert await storage.leftovers(storage.permanent, final) == []


# --- local backend specifics -----------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape",
        "a/../../escape",
        "/abs",
        "a//b",
        "a/./b",
        "a/",
        "nul\0",
        ".partial/x",
        ".objects/x",
    ],
)
async def test_local_refuses_keys_outside_the_bucket(tmp_path: Path, key: str) -> None:
    s = LocalStorage(tmp_path, buckets=("b",))
    with pytest.raises(StorageError):
        await s.put("b", key, b"x")
    with pytest.raises(StorageError):
        await s.head("b", key)
    with pytest.raises(StorageError):
        await s.open_writer("b", key)
    assert sorted(os.listdir(tmp_path)) == ["b"]
    assert [n for n in os.listdir(tmp_path / "b") if not n.startswith(".")] == []


@pytest.mark.parametrize("bucket", ["", "..", ".", "a/b", ".partial"])
async def test_local_refuses_bad_bucket_names(tmp_path: Path, bucket: str) -> None:
    s = LocalStorage(tmp_path / "root", buckets=("b",))
    with pytest.raises(StorageError):
        await s.put(bucket, "k", b"x")


async def test_local_key_cannot_nest_under_another_key(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path, buckets=("b",))
    await s.put("b", "a", b"x")
    with pytest.raises(StorageError):
        await s.put("b", "a/b", b"y")
    assert await _drain_keys(s, "b") == ["a"]


async def test_local_ping_fails_without_the_bucket_directory(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path, buckets=("b",))
    await s.ping()
    (tmp_path / "b" / ".objects").rmdir()
    with pytest.raises(StorageError):
        await s.ping()


async def _drain_keys(s: LocalStorage, bucket: str) -> list[str]:
    return [k async for k in s.list_keys(bucket)]
