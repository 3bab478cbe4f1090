"""``/v1/files``: upload, download, metadata. Thin: parse, authorize, call, render."""

from __future__ import annotations

import structlog
from aiohttp import hdrs, web

from fileshare import errors
from fileshare.api.body import multipart_file, raw_file, refuse_content_encoding
from fileshare.api.context import PRINCIPAL
from fileshare.api.keys import METRICS, SERVICE, SETTINGS
from fileshare.api.names import content_disposition
from fileshare.api.ranges import parse_range
from fileshare.models import FileRecord

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


def file_url(request: web.Request, record: FileRecord) -> str:
    return f"{request.app[SETTINGS].base_url}/v1/files/{record.id}"


def render(request: web.Request, record: FileRecord) -> dict[str, object]:
    url = file_url(request, record)
    created = record.created.isoformat().replace("+00:00", "Z")
    attachment: dict[str, object] = {
        "contentType": record.content_type,
        "url": url,
        "size": record.size,
        "hash": record.sha1_b64,
        "creation": created,
    }
    if record.name:
        attachment["title"] = record.name
    return {
        "id": record.id,
        "name": record.name,
        "contentType": record.content_type,
        "size": record.size,
        "sha256": record.sha256,
        "created": created,
        "url": url,
        "attachment": attachment,
    }


@routes.post("/v1/files")
async def upload(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_upload_size:
        # Answer before reading a byte of an oversized body.
        raise errors.PayloadTooLarge(f"the limit is {settings.max_upload_size} bytes")
    refuse_content_encoding(request)
    if request.content_type == "multipart/form-data":
        incoming = await multipart_file(request)
    else:
        incoming = raw_file(request)
    uploaded = await request.app[SERVICE].upload(
        request[PRINCIPAL],
        incoming.chunks,
        name=incoming.name,
        content_type=incoming.content_type,
        declared_size=incoming.declared_size,
        sha256=incoming.sha256,
    )
    record = uploaded.record
    return web.json_response(
        render(request, record),
        status=201 if uploaded.created else 200,
        headers={hdrs.LOCATION: file_url(request, record)},
    )


@routes.get("/v1/files/{file_id}/metadata")
async def metadata(request: web.Request) -> web.Response:
    record = await request.app[SERVICE].get(request[PRINCIPAL], request.match_info["file_id"])
    return web.json_response(render(request, record), headers={hdrs.ETAG: record.etag})


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


@routes.route("GET", "/v1/files/{file_id}")
async def download(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    record = await service.get(request[PRINCIPAL], request.match_info["file_id"])
    headers = {
        hdrs.ETAG: record.etag,
        hdrs.ACCEPT_RANGES: "bytes",
        hdrs.CACHE_CONTROL: "private, no-cache",
        hdrs.CONTENT_DISPOSITION: content_disposition(record.name),
        "X-Content-Type-Options": "nosniff",
        # User content never runs as a page of this origin.
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if (inm := request.headers.get(hdrs.IF_NONE_MATCH)) and _etag_matches(inm, record.etag):
        return web.Response(status=304, headers=headers)
    byte_range = None
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is None or if_range.strip() == record.etag:
        byte_range = parse_range(request.headers.get(hdrs.RANGE), record.size)
    status, start, end = 200, 0, record.size - 1
    if byte_range is not None:
        status, (start, end) = 206, byte_range
        headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end}/{record.size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = record.content_type
    response.content_length = end - start + 1 if record.size else 0
    if request.method == hdrs.METH_HEAD or record.size == 0:
        await response.prepare(request)
        await response.write_eof()
        return response
    stream = await service.open_content(record, start, end)
    try:
        await response.prepare(request)
        sent = request.app[METRICS].bytes_out
        async for chunk in stream:
            await response.write(chunk)
            sent.inc(len(chunk))
        await response.write_eof()
    except errors.FileshareError as exc:
        # Headers are gone: the only honest signal left is a cut connection, which the
        # client sees as a body shorter than Content-Length.
        log.error("download.failed", file_id=record.id, code=exc.code)
        if request.transport is not None:
            request.transport.close()
    finally:
        await stream.aclose()
    return response
