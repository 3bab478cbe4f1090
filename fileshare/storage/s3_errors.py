"""S3 SDK failures as the storage contract's neutral errors: what every S3 module of the
backend raises through (``translate``), with descriptions that never carry a secret."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from fileshare.storage.base import ObjectExists, ObjectNotFound, StorageError

#: S3 error codes meaning "no such object or bucket". HEAD answers have no body, so
#: botocore reports their bare status as the code.
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})

SDK_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def describe(exc: BaseException) -> str:
    """A short, secret-free description of an SDK exception."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{error_code(exc) or 'error'} (HTTP {status}) in {exc.operation_name}"
    if isinstance(exc, BotoCoreError | StorageError):
        # botocore's messages name the endpoint or parameter, never credentials.
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn SDK exceptions raised inside the block into the neutral errors."""
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if code in NOT_FOUND_CODES:
            raise ObjectNotFound(f"{what}: not found ({code})") from exc
        if code in PRECONDITION_CODES:
            raise ObjectExists(f"{what}: already exists") from exc
        raise StorageError(f"{what}: {describe(exc)}") from exc
    except SDK_ERRORS as exc:
        raise StorageError(f"{what}: {describe(exc)}") from exc
