"""The crash-recovery half of the storage contract: leftovers of uploads that never finished
(a staging object, an unfinished multipart upload or partial write) are found by age, and
unfinished writes are aborted — on every backend, against real servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.contract.conftest import StorageCase


def _now() -> datetime:
    return datetime.now(UTC)


async def test_staging_objects_are_stale_only_once_older_than_the_bound(
    storage: StorageCase,
) -> None:
    s = storage.storage
    prefix = storage.key("staging/stale") + "/"
    key = prefix + "left-behind"
    await s.put(storage.unscanned, key, b"an upload that crashed after staging")
    fresh = [k async for k in s.list_stale(storage.unscanned, prefix, _now() - timedelta(hours=1))]
    old = [k async for k in s.list_stale(storage.unscanned, prefix, _now() + timedelta(hours=1))]
    assert fresh == []
    assert old == [key]


async def test_unfinished_writes_older_than_the_bound_are_aborted(storage: StorageCase) -> None:
    s = storage.storage
    key = storage.key("staging/unfinished")
    writer = await s.open_writer(storage.unscanned, key)
    try:
        # Past the in-memory buffer: an S3 multipart upload, a GCS session, a partial file.
        for _ in range(3):
            await writer.write(b"u" * storage.buffer_limit)
        assert await storage.leftovers(storage.unscanned, key) != []
        # A write still in progress (younger than the bound) is never touched.
        recent = _now() - timedelta(hours=1)
        assert await s.abort_stale_uploads(storage.unscanned, key, recent) == 0
        assert await storage.leftovers(storage.unscanned, key) != []
        aborted = await s.abort_stale_uploads(storage.unscanned, key, _now() + timedelta(hours=1))
        if storage.name == "gcs":
            # GCS cannot list resumable sessions: nothing to abort (they expire in a week).
            assert aborted == 0
        else:
            assert aborted == 1
            assert await storage.leftovers(storage.unscanned, key) == []
    finally:
        await writer.abort()
