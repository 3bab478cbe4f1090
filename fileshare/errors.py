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
    """An unexpected failure inside fileshare: a bug. The answer holds only the request id
    (`requestId`) and the server's log has the details; quote the request id when reporting it.

    The base of the hierarchy: every error below carries a status, a stable code and a title."""

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
    """The request is malformed in a way no more specific code names (a body that cannot be
    decoded, for example); `detail` says what was wrong."""

    status, code, title = 400, "bad_request", "Bad request"


class MalformedMultipart(BadRequest):
    """A `multipart/form-data` body that is broken or not the one form fileshare takes: exactly
    one file part, small other fields, nothing nested."""

    code, title = "malformed_multipart", "Malformed multipart body"


class MalformedRequest(BadRequest):
    """The request line or headers are not HTTP/1.1 as RFC 9112 defines it (a NUL or bare CR
    in a header, a field without a colon, obs-fold, a bad or duplicated `Content-Length`,
    `Content-Length` together with `Transfer-Encoding`, an unknown method, bad chunk framing).
    Nothing of the request is echoed back; the connection is closed."""

    code, title = "malformed_request", "Malformed HTTP request"


class RequestLineTooLong(FileshareError):
    """The request line (method, path and query) is longer than `FILESHARE_MAX_LINE_SIZE`."""

    status, code, title = 414, "request_line_too_long", "Request line too long"


class HeadersTooLarge(FileshareError):
    """A header line is longer than `FILESHARE_MAX_FIELD_SIZE`, or there are more than
    `FILESHARE_MAX_HEADERS` of them (RFC 6585: 431)."""

    status, code, title = 431, "headers_too_large", "Request header fields too large"


class UnsupportedHttpVersion(BadRequest):
    """fileshare speaks HTTP/1.0 and HTTP/1.1 on this connection; other major versions (an
    `HTTP/2.0` request line over HTTP/1) are refused."""

    code, title = "unsupported_http_version", "HTTP version not supported"


class UnsupportedTransferCoding(BadRequest):
    """`Transfer-Encoding` names a coding other than `chunked` (gzip, deflate...): the body
    would not be the bytes of the file. Send it unencoded, chunked or with a length."""

    code, title = "unsupported_transfer_coding", "Transfer coding not supported"


class ExpectationFailed(FileshareError):
    """`Expect` holds something other than `100-continue`, the only expectation fileshare
    meets (RFC 9110 §10.1.1)."""

    status, code, title = 417, "expectation_failed", "Expectation failed"


class InvalidFileName(BadRequest):
    """The file name (from `?name=` or Content-Disposition) is refused: it holds a path, a NUL,
    control or bidi characters, is over 255 bytes or is not UTF-8."""

    code, title = "invalid_file_name", "Invalid file name"


class TruncatedBody(BadRequest):
    """The body ended before the `Content-Length` it declared; nothing was kept."""

    code, title = "truncated_body", "Request body shorter than declared"


class InvalidDigest(BadRequest):
    """A `Content-Digest` (or `Repr-Digest`) header that is not an RFC 9530 digest dictionary,
    or whose `sha-256` is not 32 bytes of base64."""

    code, title = "invalid_digest", "Invalid digest header"


class DigestMismatch(BadRequest):
    """The body's digest is not the one `Content-Digest` declared; nothing was kept."""

    code, title = "digest_mismatch", "The body does not match its digest"


class InvalidParameter(BadRequest):
    """A query parameter out of range, garbled or unknown; `detail` names it."""

    code, title = "invalid_parameter", "Invalid query parameter"


class InvalidFileId(BadRequest):
    """A client-chosen file id (PUT) outside the id rules (characters and length, as the API
    description's `fileId` pattern says)."""

    code, title = "invalid_file_id", "Invalid file id"


class InvalidTag(BadRequest):
    """A tag outside the tag rules (empty, too long, or characters a tag cannot hold)."""

    code, title = "invalid_tag", "Invalid tag"


class InvalidJson(BadRequest):
    """A JSON body that does not parse, or is not the kind of JSON value this route takes."""

    code, title = "invalid_json", "The body is not the JSON this route takes"


class Unauthenticated(FileshareError):
    """No credentials, or credentials fileshare does not accept: send `Authorization: Bearer
    <key>` or `X-API-Key`."""

    status, code, title = 401, "unauthenticated", "Authentication required"
    headers = MappingProxyType({"WWW-Authenticate": 'Bearer realm="fileshare"'})


class Forbidden(FileshareError):
    """The credentials are valid but do not allow this request."""

    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(FileshareError):
    """No such file, tag or route, or a file that belongs to another owner (never 403, so that
    ids of other owners' files cannot be probed)."""

    status, code, title = 404, "not_found", "Not found"


class Conflict(FileshareError):
    """A change that kept losing a race with a concurrent one; retrying the request is safe."""

    status, code, title = 409, "conflict", "Conflict"


class AlreadyExists(Conflict):
    """What the request would create exists already (a client id is never reused, not even
    after it was revoked)."""

    code, title = "already_exists", "Already exists"


class ContentNotAvailable(Conflict):
    """The record exists but its content is not clean and stored: never served."""

    code, title = "content_not_available", "The file's content is not available"


class ContentPending(ContentNotAvailable):
    """The file is a direct upload whose bytes have not arrived or are still being scanned;
    its upload's status (`GET /v1/uploads/{uploadId}`) says which."""

    code, title = "content_pending", "The file's content is not scanned yet"


class UploadIncomplete(Conflict):
    """A direct upload was completed before its bytes were at the presigned URL: upload them
    first (the URL is valid until the upload's `expires`)."""

    code, title = "upload_incomplete", "Nothing was uploaded to the URL yet"


class LinkBusy(Conflict):
    """A partner link for the file cannot be issued now: a download link while an upload link
    for it is still valid (its bytes may still change), or an upload link while a download
    link is. Retry once the other has expired (`detail` says when)."""

    code, title = "link_busy", "Another link for the file is still valid"


class PreconditionFailed(FileshareError):
    """`If-Match` or `If-None-Match: *` on a PUT did not hold: the file's current ETag is
    another, or the file exists."""

    status, code, title = 412, "precondition_failed", "Precondition failed"


class PayloadTooLarge(FileshareError):
    """The upload is over the size limit: declared (answered before any byte is read) or
    actual, or over the scanner's stream limit; or a JSON body over 64 KiB."""

    status, code, title = 413, "payload_too_large", "Upload exceeds the size limit"


class UnsupportedMediaType(FileshareError):
    """A `Content-Type` that is not a media type, a form encoding on a raw body (curl's default
    `application/x-www-form-urlencoded`: use `--data-binary` or `-T`), or a PATCH that is not
    JSON."""

    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class UnsupportedContentEncoding(UnsupportedMediaType):
    """A compressed body (`Content-Encoding`): fileshare scans and stores the bytes as sent, so
    it takes them uncompressed only."""

    code, title = "unsupported_content_encoding", "Unsupported content encoding"


class RangeNotSatisfiable(FileshareError):
    """The `Range` asked for lies outside the file; `Content-Range` gives the file's size."""

    status, code, title = 416, "range_not_satisfiable", "Range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the file has {size} bytes")
        self.headers = {"Content-Range": f"bytes */{size}"}


def _kept(quarantine_id: str | None) -> dict[str, object]:
    """The problem members saying the refused bytes were kept in quarantine."""
    return {} if quarantine_id is None else {"quarantined": True, "quarantineId": quarantine_id}


class Infected(FileshareError):
    """The virus scanner found malware, named in `signature`; the file was not kept as a file.
    With a quarantine configured the bytes were kept for an administrator to examine
    (`quarantined: true`, `quarantineId`); nobody else can read them."""

    status, code, title = 422, "infected", "The file contains malware"

    def __init__(self, signature: str, quarantine_id: str | None = None) -> None:
        super().__init__(
            f"rejected by the virus scanner: {signature}",
            signature=signature,
            **_kept(quarantine_id),
        )
        self.signature = signature
        self.quarantine_id = quarantine_id


class TypeNotAllowed(FileshareError):
    """The declared `Content-Type` is not among the types this deployment accepts
    (`FILESHARE_ALLOWED_TYPES`), or those the uploading client may send (its `allowedTypes`);
    `detail` says which list. Nothing was read or stored."""

    status, code, title = 415, "type_not_allowed", "Content type not accepted"


class TypeMismatch(FileshareError):
    """The first bytes are not what the declared `Content-Type` says: an executable sent as
    a document, a PDF or image without its signature, DICOM without its preamble and `DICM`
    prefix; `detail` says what was found. Nothing was stored. Declare the real type (or
    `application/octet-stream`)."""

    status, code, title = 415, "type_mismatch", "Content does not match its type"


class DicomPolyglot(FileshareError):
    """A DICOM file whose 128-byte preamble holds an executable header: a file that is both
    an image and a program (CVE-2019-11687). Refused whatever the declared type; clear the
    preamble (zeros) and send it again."""

    status, code, title = 415, "dicom_polyglot", "DICOM preamble holds an executable"


class Unscannable(FileshareError):
    """The virus scanner could not scan the file through — a limit (size, archive depth or
    file count, time) or encrypted content it cannot open, named in `signature` (clamd's
    `Heuristics.Limits.Exceeded.*` / `Heuristics.Encrypted.*`). Not known to be clean, so
    not kept; not known to be malware either. Send it unencrypted, or split it."""

    status, code, title = 422, "unscannable", "The file could not be scanned"

    def __init__(self, signature: str, quarantine_id: str | None = None) -> None:
        super().__init__(
            f"the virus scanner could not scan it through: {signature}",
            signature=signature,
            **_kept(quarantine_id),
        )
        self.signature = signature
        self.quarantine_id = quarantine_id


class NotQuarantined(FileshareError):
    """The quarantined item's bytes are gone: released into a file, deleted, or expired by the
    quarantine bucket's retention rule. Its record stays readable."""

    status, code, title = 409, "not_quarantined", "No longer in quarantine"


class StillRefused(FileshareError):
    """A quarantined item's release rescanned it and the scanner still refuses it (`state`,
    `signature`): it stays in quarantine, with the new verdict recorded. Its bytes can only
    be handed to an administrator (`GET /v1/admin/quarantine/{id}/content`), never promoted."""

    status, code, title = 409, "quarantine_still_refused", "Still refused by the virus scanner"


class NoQuarantine(FileshareError):
    """A client's policy asked to keep its unscannable uploads in quarantine, and this
    deployment has no quarantine bucket (`FILESHARE_QUARANTINE_BUCKET`). Nothing changed."""

    status, code, title = 409, "no_quarantine", "This deployment has no quarantine"


class ValidationFailed(FileshareError):
    """A JSON body of the wrong shape: an unknown or mistyped member, metadata over 16 KiB, a
    bad tag in a body; `detail` says which."""

    status, code, title = 422, "validation_failed", "Request validation failed"


class WebhookTargetRefused(FileshareError):
    """A webhook callback URL fileshare will not post to: not https (plain http only to
    hosts allowed without TLS), with credentials in it, or naming a loopback, link-local,
    private or reserved address (server-side request forgery); `detail` says which."""

    status, code, title = 422, "webhook_target_refused", "Callback URL refused"


class DirectUploadsUnavailable(FileshareError):
    """This deployment's storage cannot sign URLs (the local directory backend; GCS not yet):
    upload through `POST /v1/files`, and download through fileshare."""

    status, code, title = 501, "direct_uploads_unavailable", "Direct uploads are not available"


# --- dependency faults: fail closed ----------------------------------------------------


class ServiceUnavailable(FileshareError):
    """A dependency failed (scanner, storage or index) or the instance cannot take the request
    now; nothing was kept. Retry after `Retry-After` seconds."""

    status, code, title = 503, "service_unavailable", "Service temporarily unavailable"
    headers = MappingProxyType({"Retry-After": "5"})


class ScannerUnavailable(ServiceUnavailable):
    """The virus scanner (clamd) was down, timed out or answered an error: the upload is
    rejected, never stored unscanned. Retry after `Retry-After` seconds."""

    code, title = "scanner_unavailable", "The virus scanner could not scan the file"


class StorageUnavailable(ServiceUnavailable):
    """The storage backend failed; retry after `Retry-After` seconds."""

    code, title = "storage_unavailable", "The storage backend failed"

    def __init__(self, detail: str | None = None, *, operation: str | None = None) -> None:
        super().__init__(detail)
        #: Which storage call failed; for metrics and logs, never for the client.
        self.operation = operation


class IndexUnavailable(ServiceUnavailable):
    """The file index (the database) failed; retry after `Retry-After` seconds."""

    code, title = "index_unavailable", "The file index failed"


class ContentChanged(ServiceUnavailable):
    """The stored copy of the uploaded bytes was removed while the upload ran, so it could
    not be recorded; retry the upload."""

    code, title = "content_changed", "The content changed during the upload; retry"


class Overloaded(ServiceUnavailable):
    """The memory budget for uploads in flight is spent or every scan slot is busy; retry after
    `Retry-After` seconds."""

    code, title = "overloaded", "Too many uploads in flight"


class ShuttingDown(ServiceUnavailable):
    """This instance is draining before it stops; retry, and another instance answers."""

    code, title = "shutting_down", "The server is shutting down"


class ClientDisconnected(FileshareError):
    """The client went away mid-request; nobody is left to read an answer."""

    status, code, title = 400, "client_disconnected", "Client disconnected"
