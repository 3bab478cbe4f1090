"""Request bodies as async chunk iterators, never read whole.

Two shapes are accepted: the raw file as the body, or ``multipart/form-data`` with
exactly one file part. Transport failures (client gone, body shorter than declared,
broken multipart framing) become domain errors here, at the edge.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import BodyPartReader, ClientError, MultipartReader, web
from aiohttp.http_exceptions import BadHttpMessage, ContentLengthError, HttpProcessingError

from fileshare import errors
from fileshare.api import params
from fileshare.api.edge import continue_if_expected
from fileshare.api.names import name_from_content_disposition, validate_media_type, validate_name

#: Non-file form fields are skipped, but only if small: a form is not a place to smuggle data.
MAX_FIELD_BYTES = 64 * 1024
READ_CHUNK = 256 * 1024
#: The largest JSON body a route takes (PATCH, POST /v1/tags).
MAX_JSON_BODY = 64 * 1024
JSON = ("application/json",)
_TRANSPORT_ERRORS = (ClientError, HttpProcessingError, OSError, asyncio.IncompleteReadError)


def refuse_content_encoding(request: web.Request) -> None:
    """Compressed uploads are refused (RFC 7694: 415): aiohttp would inflate them on the
    fly, which makes the declared length and any digest describe other bytes, and turns
    a small request into an unbounded stream of work (a decompression bomb)."""
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise errors.UnsupportedContentEncoding(
            "a Content-Encoding is not accepted: send the file as it is"
        )


@dataclass
class IncomingFile:
    chunks: AsyncIterator[bytes]
    name: str | None
    content_type: str
    declared_size: int | None
    #: Hex sha256 the client declared for the file (RFC 9530 ``Content-Digest``).
    sha256: str | None = None


_DIGEST_MEMBER = re.compile(r"^\s*([a-z0-9-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*$")


def declared_sha256(request: web.Request) -> str | None:
    """The sha-256 of ``Content-Digest`` or ``Repr-Digest`` (the same thing for a raw,
    unencoded body); other algorithms are ignored, as RFC 9530 allows. Every sha-256 member
    of every such header counts: they must all name the same digest (checking only the
    first would let a second, wrong one pass unnoticed by whoever relies on it)."""
    found: set[str] = set()
    for header in ("Content-Digest", "Repr-Digest"):
        # Several fields of one name are one comma-separated list (RFC 9110 §5.3).
        for member in ",".join(request.headers.getall(header, [])).split(","):
            if not member.strip():
                continue
            m = _DIGEST_MEMBER.match(member)
            if not m:
                raise errors.InvalidDigest(f"{header} is not an RFC 9530 digest dictionary")
            if m.group(1) != "sha-256":
                continue
            try:
                digest = base64.b64decode(m.group(2), validate=True)
            except binascii.Error:
                raise errors.InvalidDigest(f"{header}: sha-256 is not base64") from None
            if len(digest) != 32:
                raise errors.InvalidDigest(f"{header}: sha-256 must be 32 bytes")
            found.add(digest.hex())
    if len(found) > 1:
        raise errors.InvalidDigest("the request declares different sha-256 digests")
    return found.pop() if found else None


async def _raw_chunks(request: web.Request) -> AsyncIterator[bytes]:
    await continue_if_expected(request)  # the first read: every refusal is behind us
    try:
        async for chunk in request.content.iter_any():
            yield chunk
    except web.RequestPayloadError:
        raise errors.BadRequest("the request body could not be read as sent") from None
    except ContentLengthError:  # the connection ended before the declared length
        raise errors.ClientDisconnected("the request body ended early") from None
    except BadHttpMessage:  # chunk framing the parser refused: the client is still there
        raise errors.MalformedRequest("the body's chunked framing is broken") from None
    except _TRANSPORT_ERRORS:
        raise errors.ClientDisconnected("the request body ended early") from None


def raw_file(request: web.Request) -> IncomingFile:
    name: str | None = None
    if header := request.headers.get("Content-Disposition"):
        name = name_from_content_disposition(header)
    if name is None and "name" in request.query:
        name = validate_name(request.query["name"])
    return IncomingFile(
        chunks=_raw_chunks(request),
        name=name,
        content_type=validate_media_type(request.headers.get("Content-Type")),
        declared_size=request.content_length,
        sha256=declared_sha256(request),
    )


@contextmanager
def _multipart_errors() -> Iterator[None]:
    """aiohttp's multipart parser reports broken framing with plain exceptions."""
    try:
        yield
    except errors.FileshareError:
        raise
    except (ValueError, AssertionError, RuntimeError, KeyError, web.RequestPayloadError):
        raise errors.MalformedMultipart("the multipart body is malformed") from None
    except ContentLengthError:
        raise errors.ClientDisconnected("the request body ended early") from None
    except BadHttpMessage:
        # A part's headers the parser refused (a NUL, an over-long line, no colon): the
        # client sent them and is waiting for the answer.
        raise errors.MalformedMultipart("a part's headers are malformed") from None
    except _TRANSPORT_ERRORS:
        raise errors.ClientDisconnected("the request body ended early") from None


async def multipart_file(request: web.Request) -> IncomingFile:
    """Find the file part; the chunks iterator then checks that nothing follows it."""
    await continue_if_expected(request)
    with _multipart_errors():
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                raise errors.MalformedMultipart("the form has no file part")
            if not isinstance(part, BodyPartReader):
                raise errors.MalformedMultipart("nested multipart bodies are not accepted")
            if part.filename is not None or part.name == "file":
                break
            await _skip_field(part)
    name = validate_name(part.filename) if part.filename is not None else None
    return IncomingFile(
        chunks=_part_chunks(reader, part),
        name=name,
        content_type=validate_media_type(part.headers.get("Content-Type")),
        declared_size=None,
    )


async def _skip_field(part: BodyPartReader) -> None:
    seen = 0
    while chunk := await part.read_chunk(READ_CHUNK):
        seen += len(chunk)
        if seen > MAX_FIELD_BYTES:
            raise errors.MalformedMultipart("form fields other than the file must be small")


async def _part_chunks(reader: MultipartReader, part: BodyPartReader) -> AsyncIterator[bytes]:
    with _multipart_errors():
        while chunk := await part.read_chunk(READ_CHUNK):
            yield chunk
        # Still inside the read loop of the pipeline: a second file fails the upload
        # before anything is promoted.
        while (extra := await reader.next()) is not None:
            if isinstance(extra, BodyPartReader) and extra.filename is not None:
                raise errors.MalformedMultipart("send exactly one file part")
            if isinstance(extra, BodyPartReader):
                await _skip_field(extra)


async def read_json(request: web.Request, *, media_types: tuple[str, ...]) -> object:
    """A small JSON body, read in bounded chunks (never more than ``MAX_JSON_BODY``)."""
    refuse_content_encoding(request)
    if request.content_type not in media_types:
        raise errors.UnsupportedMediaType(f"send the body as {' or '.join(media_types)}")
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise errors.PayloadTooLarge(f"a JSON body is at most {MAX_JSON_BODY} bytes")
    parts: list[bytes] = []
    size = 0
    await continue_if_expected(request)
    try:
        while chunk := await request.content.read(16 * 1024):
            size += len(chunk)
            if size > MAX_JSON_BODY:
                raise errors.PayloadTooLarge(f"a JSON body is at most {MAX_JSON_BODY} bytes")
            parts.append(chunk)
    except web.RequestPayloadError:
        raise errors.BadRequest("the request body could not be read as sent") from None
    except _TRANSPORT_ERRORS:
        raise errors.ClientDisconnected("the request body ended early") from None
    try:
        return json.loads(b"".join(parts).decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise errors.InvalidJson("the body is not valid UTF-8 JSON") from None


async def json_members(
    request: web.Request, allowed: set[str], *, media_types: tuple[str, ...] = JSON
) -> dict[str, object]:
    """A JSON object body with no members but ``allowed`` (none named in the answer)."""
    body = dict(params.json_object(await read_json(request, media_types=media_types), "the body"))
    if set(body) - allowed:
        raise errors.ValidationFailed(
            f"an unknown member; the body takes {', '.join(sorted(allowed))}"
        )
    return body
