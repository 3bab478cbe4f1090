"""Where backend failures become domain errors: storage, index and scanner alike.

Backends raise their neutral exceptions (``StorageError``, ``IndexUnavailable``,
``ScanError``); the pipeline and the service await their calls through these helpers, so
that each kind of failure is turned into one ``FileshareError`` in one place, logged once,
and never with the backend's text in the client's answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

import structlog

from fileshare import errors
from fileshare.index.base import Conflict, IndexUnavailable
from fileshare.scan.base import ScanError, ScanSizeExceeded
from fileshare.storage.base import StorageError

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def prepended(first: bytes, rest: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """A storage stream whose first chunk was read ahead (so that a missing object or a
    fault became an error before any header went out): that chunk, then the rest, a
    failure mid-way a 503; the stream is closed however it ends, which releases its
    connection when the client goes away."""
    try:
        if first:
            yield first
        try:
            async for chunk in rest:
                yield chunk
        except StorageError as exc:
            log.warning("storage.failed", error=str(exc))
            raise errors.StorageUnavailable() from None
    finally:
        await close_stream(rest)


async def close_stream(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def storage_call(
    operation: str,
    awaitable: Awaitable[T],
    expected: type[StorageError] | None = None,
) -> T:
    """Await a storage call; ``expected`` (a meaningful answer such as "not found" for a
    HEAD) passes through, any other backend failure becomes a 503."""
    try:
        return await awaitable
    except StorageError as exc:
        if expected is not None and isinstance(exc, expected):
            raise
        log.warning("storage.failed", operation=operation, error=str(exc))
        raise errors.StorageUnavailable(operation=operation) from None


async def index_call(awaitable: Awaitable[T]) -> T:
    """Await an index call; a failing index becomes a 503 (the index's answers, such as
    ``PreconditionFailed``, pass through for the caller to interpret)."""
    try:
        return await awaitable
    except IndexUnavailable as exc:
        log.error("index.failed", error=str(exc))
        raise errors.IndexUnavailable() from None
    except Conflict:
        # The index already ran the transaction again several times.
        raise errors.Conflict("the file changed concurrently; retry") from None


def domain_error(exc: BaseException) -> BaseException:
    """The domain error for a backend exception raised inside a fan-out step."""
    if isinstance(exc, ScanSizeExceeded):
        return errors.PayloadTooLarge("the virus scanner refused a stream this large")
    if isinstance(exc, ScanError):
        log.warning("scan.failed", error=str(exc))
        return errors.ScannerUnavailable()
    if isinstance(exc, StorageError):
        log.warning("storage.failed", operation="write", error=str(exc))
        return errors.StorageUnavailable(operation="write")
    if isinstance(exc, IndexUnavailable):
        log.error("index.failed", error=str(exc))
        return errors.IndexUnavailable()
    return exc
