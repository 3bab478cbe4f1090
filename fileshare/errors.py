"""One exception hierarchy for the whole service.

Every error a client can cause, or that a dependency can cause on its behalf, is a
``FileshareError`` carrying an HTTP status, a stable machine-readable ``code`` and a
human title. ``api.problems`` renders them as RFC 9457 problem+json in one place;
domain code never imports aiohttp.web.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType


class FileshareError(Exception):
    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"
    #: Extra response headers (for example Retry-After).
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, detail: str | None = None, **extra: object) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


# --- client mistakes -------------------------------------------------------------------


class BadRequest(FileshareError):
    status, code, title = 400, "bad_request", "Bad request"


class MalformedMultipart(BadRequest):
    code, title = "malformed_multipart", "Malformed multipart body"


class InvalidFileName(BadRequest):
    code, title = "invalid_file_name", "Invalid file name"


class TruncatedBody(BadRequest):
    code, title = "truncated_body", "Request body shorter than declared"


class InvalidDigest(BadRequest):
    code, title = "invalid_digest", "Invalid digest header"


class DigestMismatch(BadRequest):
    code, title = "digest_mismatch", "The body does not match its digest"


class InvalidParameter(BadRequest):
    code, title = "invalid_parameter", "Invalid query parameter"


class InvalidFileId(BadRequest):
    code, title = "invalid_file_id", "Invalid file id"


class InvalidTag(BadRequest):
    code, title = "invalid_tag", "Invalid tag"


class InvalidJson(BadRequest):
    code, title = "invalid_json", "The body is not the JSON this route takes"


class Unauthenticated(FileshareError):
    status, code, title = 401, "unauthenticated", "Authentication required"
    headers = MappingProxyType({"WWW-Authenticate": 'Bearer realm="fileshare"'})


class Forbidden(FileshareError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(FileshareError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(FileshareError):
    status, code, title = 409, "conflict", "Conflict"


class ContentNotAvailable(Conflict):
    """The record exists but its content is not clean and stored: never served."""

    code, title = "content_not_available", "The file's content is not available"


class PreconditionFailed(FileshareError):
    status, code, title = 412, "precondition_failed", "Precondition failed"


class PayloadTooLarge(FileshareError):
    status, code, title = 413, "payload_too_large", "Upload exceeds the size limit"


class UnsupportedMediaType(FileshareError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class UnsupportedContentEncoding(UnsupportedMediaType):
    code, title = "unsupported_content_encoding", "Unsupported content encoding"


class RangeNotSatisfiable(FileshareError):
    status, code, title = 416, "range_not_satisfiable", "Range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the file has {size} bytes")
        self.headers = {"Content-Range": f"bytes */{size}"}


class Infected(FileshareError):
    status, code, title = 422, "infected", "The file contains malware"

    def __init__(self, signature: str) -> None:
        super().__init__(f"rejected by the virus scanner: {signature}", signature=signature)
        self.signature = signature


class ValidationFailed(FileshareError):
    status, code, title = 422, "validation_failed", "Request validation failed"


# --- dependency faults: fail closed ----------------------------------------------------


class ServiceUnavailable(FileshareError):
    status, code, title = 503, "service_unavailable", "Service temporarily unavailable"
    headers = MappingProxyType({"Retry-After": "5"})


class ScannerUnavailable(ServiceUnavailable):
    code, title = "scanner_unavailable", "The virus scanner could not scan the file"


class StorageUnavailable(ServiceUnavailable):
    code, title = "storage_unavailable", "The storage backend failed"

    def __init__(self, detail: str | None = None, *, operation: str | None = None) -> None:
        super().__init__(detail)
        #: Which storage call failed; for metrics and logs, never for the client.
        self.operation = operation


class IndexUnavailable(ServiceUnavailable):
    code, title = "index_unavailable", "The file index failed"


class ContentChanged(ServiceUnavailable):
    code, title = "content_changed", "The content changed during the upload; retry"


class Overloaded(ServiceUnavailable):
    code, title = "overloaded", "Too many uploads in flight"


class ShuttingDown(ServiceUnavailable):
    code, title = "shutting_down", "The server is shutting down"


class ClientDisconnected(FileshareError):
    """The client went away mid-request; nobody is left to read an answer."""

    status, code, title = 400, "client_disconnected", "Client disconnected"
