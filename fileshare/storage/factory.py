"""Build the configured storage backend (the only place that knows all of them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fileshare.config import Settings
from fileshare.storage.base import Storage


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    buckets: tuple[str, ...] = (settings.unscanned_bucket, settings.permanent_bucket)
    if settings.quarantine_bucket is not None:
        buckets += (settings.quarantine_bucket,)
    storage: Storage
    if settings.storage == "local":
        from fileshare.storage.local import LocalStorage

        storage = LocalStorage(settings.data_dir, buckets=buckets)
    elif settings.storage == "s3":
        from fileshare.storage.s3 import S3Storage

        storage = await S3Storage.create(
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            buckets=buckets,
            part_size=settings.part_size,
            parts_in_flight=settings.parts_in_flight,
            timeout=settings.storage_timeout,
            encryption=settings.encryption,
        )
    else:
        from fileshare.storage.gcs_signing import open_gcs_storage

        # A Presigner (direct uploads, download redirects) only where something can sign.
        storage = await open_gcs_storage(
            signing_key=settings.gcs_signing_credentials,
            endpoint=settings.gcs_endpoint,
            project=settings.gcs_project,
            buckets=buckets,
            part_size=settings.part_size,
            timeout=settings.storage_timeout,
            encryption=settings.encryption,
        )
    try:
        yield storage
    finally:
        await storage.close()
