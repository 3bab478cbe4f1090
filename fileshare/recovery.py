"""Crash recovery: what an upload that never finished left in the stores.

An upload cut short by SIGKILL, an OOM kill or a node loss has no ``finally`` that runs: its
staging object, its S3 multipart upload (staging, the promotion copy being assembled under
the permanent key, or a single-write upload under it) or its local partial write stays
behind. The sweeper removes them once
they are older than ``FILESHARE_STAGING_MAX_AGE`` — longer than any upload may take, so a
write in progress on another replica is never touched. Keys are fileshare's own and never
reused, so two replicas sweeping at once only repeat each other's deletes. (The lifecycle
rules of ``k8s/lifecycle`` are the second net, for when no replica runs.)

Index rows an interrupted upload left (content reservations) expire by themselves: the next
upload of the same bytes takes an expired reservation over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from fileshare.models import UPLOAD_KEY_PREFIX
from fileshare.storage.base import DIRECT_PREFIX, STAGING_PREFIX, Storage, StorageError

log = structlog.get_logger(__name__)

#: Where promotions assemble their copies (content keys ``sha256/ab/cd/<hex>``), and where
#: single-write promotion streams its uploads (``objects/<id>``).
PERMANENT_PREFIXES = ("sha256/", UPLOAD_KEY_PREFIX)


@dataclass(frozen=True)
class Swept:
    objects: int = 0
    uploads: int = 0


class StagingSweeper:
    def __init__(
        self,
        storage: Storage,
        *,
        unscanned: str,
        permanent: str,
        max_age: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self.storage = storage
        self.unscanned = unscanned
        self.permanent = permanent
        self.max_age = max_age
        self.clock = clock

    async def sweep(self) -> Swept:
        """One round. Raises ``StorageError`` when the store cannot be listed (the next
        round tries again); a single failed delete is logged and left for the next."""
        before = self.clock() - self.max_age
        objects = 0
        async for key in self.storage.list_stale(self.unscanned, STAGING_PREFIX, before):
            if key.startswith(DIRECT_PREFIX):
                continue  # direct uploads: the reconciler's, whose URLs may still be valid
            try:
                await self.storage.delete(self.unscanned, key)
            except StorageError as exc:
                log.warning("recovery.delete_failed", key=key, error=type(exc).__name__)
                continue
            objects += 1
        uploads = 0
        failed: StorageError | None = None
        places = [(self.unscanned, STAGING_PREFIX)]
        places += [(self.permanent, prefix) for prefix in PERMANENT_PREFIXES]
        for bucket, prefix in places:
            # Each on its own: a refusal in one place (a missing permission) must not leave
            # the others unswept.
            try:
                uploads += await self.storage.abort_stale_uploads(bucket, prefix, before)
            except StorageError as exc:
                log.warning("recovery.uploads_failed", prefix=prefix, error=type(exc).__name__)
                failed = exc
        if objects or uploads:
            log.info("recovery.swept", staging_objects=objects, unfinished_uploads=uploads)
        if failed is not None:
            raise failed  # after the other places were swept
        return Swept(objects, uploads)
