"""Partner links (seed 003): presigned URLs into the links bucket, under
``<resource_id>/<percent-encoded resource_name>``, for third parties (ambulatory contracts).

The bucket is the objects' final place, so a partner's upload is scanned where it lies: a
download link is issued only for the version the scanner found clean (scanned on the first
request for one, in the request), and never while an upload link for the object is still
valid, nor an upload link while a download link is (``index.links``). What is not clean is
deleted and never linked to.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import quote

import structlog

from fileshare import errors
from fileshare.audit import Action, Actor, AuditEvent, Result
from fileshare.boundary import index_call, storage_call
from fileshare.index.links import LinkStore, Opened
from fileshare.models import ScanState
from fileshare.pipeline import Pipeline, refusal
from fileshare.service import Clock, FileService
from fileshare.storage.base import ObjectInfo, ObjectNotFound, Presigned, Storage

log = structlog.get_logger(__name__)

#: A folder identifier (a contractor legal entity's id): nothing that could be a path.
RESOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The content type a partner's PUT is signed with (the link knows nothing of the file).
UPLOAD_TYPE = "application/octet-stream"


class LinkAction(enum.StrEnum):
    UPLOAD = "upload"
    DOWNLOAD = "download"


class LinkSigner(Protocol):
    """The S3 signing a link needs: a PUT of unknown length, a GET."""

    async def presign_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        size: int | None,
        sha256: str | None,
        expires: int,
        exclusive: bool = True,
    ) -> Presigned: ...

    async def presign_download(
        self, bucket: str, key: str, *, content_type: str, disposition: str, expires: int
    ) -> Presigned: ...


@dataclass(frozen=True)
class Link:
    action: LinkAction
    key: str
    request: Presigned


def link_key(resource_id: str, resource_name: str) -> str:
    """``<resource_id>/<resource_name percent-encoded>``: every byte of the name that is
    not unreserved is encoded (``/`` and ``%`` included), so a name is one path segment and
    two names never share a key."""
    return f"{resource_id}/{quote(resource_name, safe='')}"


def check_resource(resource_id: str, resource_name: str) -> None:
    if not RESOURCE_ID.fullmatch(resource_id):
        raise errors.ValidationFailed(
            "resource_id is 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    encoded = resource_name.encode("utf-8", "surrogatepass")
    if not resource_name.strip() or len(encoded) > MAX_NAME_BYTES or _CONTROL.search(resource_name):
        raise errors.ValidationFailed(
            f"resource_name is 1 to {MAX_NAME_BYTES} bytes of text without control characters"
        )
    if any(0xD800 <= ord(c) <= 0xDFFF for c in resource_name):
        raise errors.ValidationFailed("resource_name must be valid Unicode")


class LinkService:
    def __init__(
        self,
        *,
        signer: LinkSigner,
        storage: Storage,
        pipeline: Pipeline,
        links: LinkStore,
        files: FileService,
        bucket: str,
        ttl: int,
        clock: Clock,
    ) -> None:
        self.signer = signer
        self.storage = storage
        self.pipeline = pipeline
        self.links = links
        self.files = files
        self.bucket = bucket
        self.ttl = ttl
        self.clock = clock

    async def issue(
        self,
        actor: Actor,
        action: LinkAction,
        resource_id: str,
        resource_name: str,
        disposition: str,
    ) -> Link:
        key = link_key(resource_id, resource_name)
        event = actor.event(
            Action.URL_ISSUE, detail={"action": f"link.{action.value}", "route": "links"}
        )
        try:
            if action is LinkAction.UPLOAD:
                request = await self._upload(key, resource_id, event)
            else:
                request = await self._download(key, resource_id, disposition, event)
        except errors.FileshareError as exc:
            await self.files.audit_refusal(event, exc)
            raise
        log.info("link.issued", action=action.value)
        return Link(action, key, request)

    async def _upload(self, key: str, resource_id: str, event: AuditEvent) -> Presigned:
        now = self.clock()
        until = now + timedelta(seconds=self.ttl)
        opened, busy = await index_call(self.links.open_upload(key, resource_id, now, until, event))
        if opened is Opened.BUSY:
            raise _busy("a download link", busy)
        return await storage_call(
            "presign",
            self.signer.presign_upload(
                self.bucket,
                key,
                content_type=UPLOAD_TYPE,
                size=None,
                sha256=None,
                expires=self.ttl,
                # A partner may upload again while the link is valid: no download link
                # is issued before it has expired, and then the last version is scanned.
                exclusive=False,
            ),
        )

    async def _download(
        self, key: str, resource_id: str, disposition: str, event: AuditEvent
    ) -> Presigned:
        try:
            stored = await storage_call(
                "head", self.storage.head(self.bucket, key), expected=ObjectNotFound
            )
        except ObjectNotFound:
            raise errors.NotFound("no such file in the links bucket") from None
        for _ in range(2):
            now = self.clock()
            until = now + timedelta(seconds=self.ttl)
            opened, busy = await index_call(
                self.links.open_download(key, stored.version, now, until, event)
            )
            if opened is Opened.OK:
                return await storage_call(
                    "presign",
                    self.signer.presign_download(
                        self.bucket,
                        key,
                        content_type=stored.content_type,
                        disposition=disposition,
                        expires=self.ttl,
                    ),
                )
            if opened is Opened.BUSY:
                raise _busy("an upload link", busy)
            if opened is Opened.REFUSED:
                raise errors.ContentNotAvailable("the file was not found clean")
            await self._scan(key, resource_id, stored, event, since=busy)
        raise errors.Conflict("the file kept changing while it was scanned; retry")

    async def _scan(
        self,
        key: str,
        resource_id: str,
        stored: ObjectInfo,
        event: AuditEvent,
        *,
        since: datetime | None,
    ) -> None:
        """Scan the object where it lies; what is not clean is deleted."""
        try:
            digest, scan = await self.pipeline.scan_stored(self.bucket, stored)
        except errors.PayloadTooLarge as exc:
            await self._remove(key)
            raise errors.ContentNotAvailable(f"the file cannot be scanned: {exc.detail}") from None
        verdict = event.but(
            action=Action.SCAN_VERDICT,
            result=Result.SUCCESS if scan.state is ScanState.CLEAN else Result.DENIED,
            sha256=digest.sha256,
            detail={
                "state": scan.state.value,
                "signature": scan.signature,
                "scanner": scan.scanner,
            },
        )
        now = self.clock()
        recorded = await index_call(
            self.links.record_scan(
                key, resource_id, stored.version, scan, now, verdict, since=since
            )
        )
        if not recorded:
            # An upload link went out while the scan ran: these may not be the bytes there
            # now. Neither a verdict nor a delete: the next request scans what is there.
            raise errors.LinkBusy("the file may have changed while it was scanned; retry")
        if scan.state is not ScanState.CLEAN:
            log.warning(f"link.{scan.state.value}", signature=scan.signature)
            await self._remove(key)
            raise refusal(scan)

    async def _remove(self, key: str) -> None:
        try:
            await self.storage.delete(self.bucket, key)
        except Exception as exc:  # its verdict stays: it is never linked to
            log.error("link.delete_failed", error=str(exc))


def _busy(other: str, until: datetime | None) -> errors.LinkBusy:
    when = "" if until is None else f" until {until.isoformat()}"
    return errors.LinkBusy(f"{other} for this file is valid{when}")
