"""Storage events: the store saying an object was written, as a trigger for the ingestion of
direct uploads (the completion call and the reconciler are the other two).

An event is only a hint: which upload to look at. The ingestion decides everything from
the index and the store (a lease, the state, a HEAD), so an event delivered twice, late, out
of order, for an object fileshare never handed out, or forged, changes nothing it should
not. Losing one is harmless too: the reconciler sweeps the staging prefix.

Sources:
* ``SqsEvents``: S3 event notifications (``ObjectCreated:*``) consumed from an SQS queue;
* SeaweedFS's filer webhook, pushed to ``POST /v1/events/seaweedfs`` (``api.events``), the
  local stand-in for S3's notifications.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_plus

import structlog

from fileshare import errors
from fileshare.storage.base import DIRECT_PREFIX

log = structlog.get_logger(__name__)

#: Ingestions that events start at once; more wait (and the reconciler catches up).
EVENT_CONCURRENCY = 4
#: Events waiting for a worker beyond which new ones are dropped (the reconciler finds
#: their uploads anyway): a flood of events cannot grow memory without bound.
EVENT_BACKLOG = 10_000


@dataclass(frozen=True)
class ObjectWritten:
    bucket: str
    key: str


class EventSource(Protocol):
    """A queue of storage events fileshare pulls from."""

    async def receive(self) -> list[tuple[list[ObjectWritten], object]]:
        """Wait (bounded, e.g. a long poll) for messages: each one's events and a handle
        to ``ack`` it with once they are handled. Raises ``EventSourceError``."""

    async def ack(self, handle: object) -> None:
        """The message is handled: do not deliver it again."""

    async def close(self) -> None: ...


class EventSourceError(Exception):
    """The queue could not be read (network, permission)."""


def s3_notification(body: str) -> list[ObjectWritten]:
    """The objects an S3 event notification message says were created (its keys are URL
    encoded, spaces as ``+``). A test event, another event type or a message that is not a
    notification at all: none."""
    try:
        message = json.loads(body)
    except ValueError:
        return []
    if isinstance(message, dict) and isinstance(message.get("Message"), str):
        return s3_notification(message["Message"])  # delivered through SNS
    records = message.get("Records") if isinstance(message, dict) else None
    found: list[ObjectWritten] = []
    for record in records if isinstance(records, list) else []:
        try:
            if not str(record["eventName"]).startswith("ObjectCreated:"):
                continue
            s3 = record["s3"]
            found.append(
                ObjectWritten(str(s3["bucket"]["name"]), unquote_plus(s3["object"]["key"]))
            )
        except (KeyError, TypeError):
            continue
    return found


def seaweed_event(body: Any) -> list[ObjectWritten]:
    """The object a SeaweedFS filer webhook event says was written: a ``create`` or
    ``update`` of ``/buckets/<bucket>/<key>`` that is a file."""
    if not isinstance(body, dict) or body.get("event_type") not in ("create", "update"):
        return []
    path = body.get("key")
    entry = (
        (body.get("message") or {}).get("new_entry")
        if isinstance(body.get("message"), dict)
        else None
    )
    if not isinstance(path, str) or not isinstance(entry, dict) or entry.get("is_directory"):
        return []
    parts = path.split("/", 3)  # "", "buckets", bucket, key
    if len(parts) != 4 or parts[1] != "buckets" or not parts[2] or not parts[3]:
        return []
    return [ObjectWritten(parts[2], parts[3])]


class EventDispatcher:
    """Turns events into ingestions of the uploads they name, a few at a time."""

    def __init__(self, ingest: Callable[[str], Awaitable[object]], unscanned_bucket: str) -> None:
        self._ingest = ingest
        self._bucket = unscanned_bucket
        self._gate = asyncio.Semaphore(EVENT_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    def upload_of(self, event: ObjectWritten) -> str | None:
        if event.bucket != self._bucket or not event.key.startswith(DIRECT_PREFIX):
            return None
        upload_id = event.key[len(DIRECT_PREFIX) :]
        return upload_id if upload_id.isalnum() and len(upload_id) <= 64 else None

    def offer(self, events: list[ObjectWritten]) -> int:
        """Start the ingestion of each event's upload in the background; how many were
        taken (events for other objects, or past the backlog, are not)."""
        taken = 0
        for event in events:
            upload_id = self.upload_of(event)
            if upload_id is None or len(self._tasks) >= EVENT_BACKLOG:
                continue
            task = asyncio.create_task(self._one(upload_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            taken += 1
        return taken

    async def handle(self, events: list[ObjectWritten]) -> None:
        """Ingest each event's upload and wait for it (a pulled message is acknowledged
        only after its uploads were looked at)."""
        ids = [u for u in map(self.upload_of, events) if u is not None]
        await asyncio.gather(*(self._one(u) for u in ids))

    async def _one(self, upload_id: str) -> None:
        async with self._gate:
            try:
                await self._ingest(upload_id)
            except errors.FileshareError as exc:  # left pending: a later trigger retries
                log.warning("event.retry_later", upload_id=upload_id, code=exc.code)
            except Exception as exc:
                log.error("event.failed", upload_id=upload_id, error=type(exc).__name__)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))


async def consume(source: EventSource, dispatcher: EventDispatcher, retry: float = 5.0) -> None:
    """Pull, handle and acknowledge messages until cancelled. A message whose handling
    failed is not acknowledged: the queue delivers it again after its visibility timeout."""
    while True:
        try:
            messages = await source.receive()
        except EventSourceError as exc:
            log.warning("events.unavailable", error=str(exc))
            await asyncio.sleep(retry)
            continue
        for events, handle in messages:
            await dispatcher.handle(events)
            try:
                await source.ack(handle)
            except EventSourceError as exc:  # delivered again: harmless
                log.warning("events.ack_failed", error=str(exc))


class SqsEvents:
    """S3 event notifications from an SQS queue (long polling, aiobotocore). A message is
    deleted once its events were handled; one that is not reappears after the queue's
    visibility timeout and is handled again (harmless: see the module's docstring)."""

    def __init__(self, client: Any, queue_url: str, *, wait: int = 20, batch: int = 10) -> None:
        self._client = client
        self._queue = queue_url
        self._wait = wait
        self._batch = batch

    async def receive(self) -> list[tuple[list[ObjectWritten], object]]:
        try:
            answer = await self._client.receive_message(
                QueueUrl=self._queue,
                MaxNumberOfMessages=self._batch,
                WaitTimeSeconds=self._wait,
            )
        except Exception as exc:  # botocore's and the network's: neutral here
            raise EventSourceError(f"SQS receive: {type(exc).__name__}") from None
        return [
            (s3_notification(str(m.get("Body", ""))), m["ReceiptHandle"])
            for m in answer.get("Messages", [])
        ]

    async def ack(self, handle: object) -> None:
        try:
            await self._client.delete_message(QueueUrl=self._queue, ReceiptHandle=handle)
        except Exception as exc:
            raise EventSourceError(f"SQS delete: {type(exc).__name__}") from None

    async def close(self) -> None:
        await self._client.close()


async def open_sqs(
    queue_url: str,
    *,
    region: str,
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
) -> SqsEvents:
    """An SQS source with a client of its own (the S3 identity reads the queue; without
    keys, botocore's default credential chain)."""
    from aiobotocore.session import get_session

    client = get_session().create_client(
        "sqs",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )
    return SqsEvents(await client.__aenter__(), queue_url)
