"""``/v1/files`` and ``/v1/search/files``: upload (POST, PUT), download, metadata, list,
search, patch, tag, delete. Thin: parse, authorize, call, render."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from types import EllipsisType

import structlog
from aiohttp import hdrs, web

from fileshare import errors
from fileshare.api import params
from fileshare.api.acting import actor
from fileshare.api.body import multipart_file, raw_file, read_json, refuse_content_encoding
from fileshare.api.keys import METRICS, SERVICE, SETTINGS
from fileshare.api.names import content_disposition, validate_name
from fileshare.api.ranges import parse_range
from fileshare.audit import Action
from fileshare.boundary import close_stream
from fileshare.index.base import FilePatch, Page
from fileshare.models import FileRecord
from fileshare.service import MAX_TAGS_PER_FILE, Target, Uploaded

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

MERGE_PATCH = ("application/merge-patch+json", "application/json")
#: What a PATCH may hold: a record's metadata is small, its tags few.
METADATA_LIMIT = 16 * 1024
_PATCHABLE = frozenset({"name", "metadata", "tags"})


def timestamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def file_url(request: web.Request, record: FileRecord) -> str:
    return f"{request.app[SETTINGS].base_url}/v1/files/{record.id}"


def render(request: web.Request, record: FileRecord) -> dict[str, object]:
    """One shape for a file everywhere: POST, PUT, PATCH, metadata, list, search."""
    content = record.content
    url = file_url(request, record)
    created = timestamp(record.created)
    attachment: dict[str, object] = {
        "contentType": record.content_type,
        "size": content.size,
        "hash": content.sha1_b64,
        "creation": created,
    }
    if record.name:
        attachment["title"] = record.name
    body: dict[str, object] = {
        "id": record.id,
        "name": record.name,
        "contentType": record.content_type,
        "size": content.size,
        "sha256": content.sha256,
        "created": created,
        "updated": timestamp(record.updated),
        "state": content.state.value,
        "present": content.present,
        "tags": list(record.tags),
        "metadata": dict(record.metadata),
    }
    if content.scan.signature:
        body["signature"] = content.scan.signature
    if record.created_by is not None:
        body["createdBy"] = record.created_by
    if content.present:
        # Seed 002: a file has a url only once its content is really there.
        body["url"] = url
        attachment["url"] = url
    body["attachment"] = attachment
    return body


def render_page(request: web.Request, page: Page) -> dict[str, object]:
    body: dict[str, object] = {"items": [render(request, r) for r in page.items]}
    if page.next is not None:
        body["nextOffsetKey"] = params.encode_cursor(page.next)
    return body


def _answer(request: web.Request, uploaded: Uploaded) -> web.Response:
    record = uploaded.record
    return web.json_response(
        render(request, record),
        status=201 if uploaded.created else 200,
        headers={hdrs.LOCATION: file_url(request, record), hdrs.ETAG: record.etag},
    )


async def _upload(request: web.Request, target: Target | None) -> Uploaded:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_upload_size:
        # Answer before reading a byte of an oversized body.
        raise errors.PayloadTooLarge(f"the limit is {settings.max_upload_size} bytes")
    refuse_content_encoding(request)
    acting = await actor(request, write=True)
    # What the headers alone show to be wrong (name, media type, digest) is answered before
    # the preconditions are (RFC 9110 section 13.2.1); a form's name is in its body, which
    # is read only once they hold.
    multipart = request.content_type == "multipart/form-data"
    incoming = None if multipart else raw_file(request)
    if target is not None:
        await request.app[SERVICE].check_target(acting, target)
    if incoming is None:
        incoming = await multipart_file(request)
    return await request.app[SERVICE].upload(
        acting,
        incoming.chunks,
        name=incoming.name,
        content_type=incoming.content_type,
        declared_size=incoming.declared_size,
        sha256=incoming.sha256,
        target=target,
    )


@routes.post("/v1/files")
async def upload(request: web.Request) -> web.Response:
    return _answer(request, await _upload(request, None))


def _etags(header: str) -> tuple[str, ...]:
    """An ``If-Match`` list as sha256 values (our strong ETags), ``*`` kept. A weak or
    foreign ETag is kept as written: it matches nothing, as RFC 9110 wants for If-Match."""
    found = []
    for item in header.split(","):
        item = item.strip()
        if item == "*" or (len(item) == 66 and item[0] == item[-1] == '"'):
            found.append(item.strip('"'))
        elif item:
            found.append(item)
    return tuple(found)


@routes.put("/v1/files/{file_id}")
async def put_file(request: web.Request) -> web.Response:
    """Create or replace the file under the client's id (seed 000)."""
    file_id = params.file_id(request.match_info["file_id"], creating=True)
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match is not None and if_none_match.strip() != "*":
        raise errors.BadRequest("If-None-Match on PUT takes only * (create, never replace)")
    if_match = request.headers.get(hdrs.IF_MATCH)
    target = Target(
        file_id=file_id,
        if_match=_etags(if_match) if if_match else (),
        if_none_match=if_none_match is not None,
    )
    return _answer(request, await _upload(request, target))


@routes.get("/v1/files")
async def list_files(request: web.Request) -> web.Response:
    query = params.file_query(request.query, search=False)
    acting = await actor(request, write=False)
    page = await request.app[SERVICE].list_files(acting, query)
    return web.json_response(render_page(request, page))


@routes.get("/v1/search/files")
async def search_files(request: web.Request) -> web.Response:
    query = params.file_query(request.query, search=True)
    acting = await actor(request, write=False)
    page = await request.app[SERVICE].list_files(acting, query, search=True)
    return web.json_response(render_page(request, page))


async def _record(request: web.Request, action: Action, *, present: bool = False) -> FileRecord:
    file_id = params.file_id(request.match_info["file_id"])
    acting = await actor(request, write=False)
    return await request.app[SERVICE].get(acting, file_id, action, present=present)


@routes.get("/v1/files/{file_id}/metadata")
async def metadata(request: web.Request) -> web.Response:
    record = await _record(request, Action.FILE_READ)
    return web.json_response(render(request, record), headers={hdrs.ETAG: record.etag})


def _patch(body: object) -> FilePatch:
    patch = params.json_object(body, "a merge patch")
    unknown = sorted(set(patch) - _PATCHABLE)
    if unknown:
        raise errors.ValidationFailed("only name, metadata and tags can be patched")
    name: str | EllipsisType | None = ...
    if "name" in patch:
        value = patch["name"]
        if value is not None and not isinstance(value, str):
            raise errors.ValidationFailed("name must be a string or null")
        name = None if value is None else validate_name(value)
    meta: Mapping[str, object] | EllipsisType | None = ...
    if "metadata" in patch:
        value = patch["metadata"]
        if value is not None and not isinstance(value, dict):
            raise errors.ValidationFailed("metadata must be a JSON object or null")
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (\ud800) parses, but is no text
            raise errors.ValidationFailed("metadata strings must be valid Unicode") from None
        meta = value  # null removes the member: the metadata becomes empty
    tags: tuple[str, ...] | EllipsisType = ...
    if "tags" in patch:
        value = patch["tags"]
        if value is None:
            value = []
        if not isinstance(value, list) or len(value) > MAX_TAGS_PER_FILE:
            raise errors.ValidationFailed(
                f"tags must be a list of at most {MAX_TAGS_PER_FILE} tags or null"
            )
        try:
            tags = tuple(params.tag(t) for t in value)
        except errors.InvalidTag as exc:
            raise errors.ValidationFailed(exc.detail) from None
    return FilePatch(name=name, metadata=meta, tags=tags, metadata_limit=METADATA_LIMIT)


@routes.patch("/v1/files/{file_id}")
async def patch_file(request: web.Request) -> web.Response:
    """RFC 7396 merge patch of name, metadata and tags."""
    file_id = params.file_id(request.match_info["file_id"])
    service = request.app[SERVICE]
    acting = await actor(request, write=True)
    # Existence first: a patch of someone else's (or no) file is 404 whatever its body.
    await service.get(acting, file_id, refused_as=Action.FILE_UPDATE)
    patch = _patch(await read_json(request, media_types=MERGE_PATCH))
    record = await service.patch(acting, file_id, patch)
    return web.json_response(render(request, record), headers={hdrs.ETAG: record.etag})


@routes.delete("/v1/files/{file_id}")
async def delete_file(request: web.Request) -> web.Response:
    file_id = params.file_id(request.match_info["file_id"])
    acting = await actor(request, write=True)
    await request.app[SERVICE].delete(acting, file_id)
    return web.Response(status=204)


async def _tagging(request: web.Request, *, add: bool) -> web.Response:
    file_id = params.file_id(request.match_info["file_id"])
    service = request.app[SERVICE]
    acting = await actor(request, write=True)
    await service.get(acting, file_id, refused_as=Action.FILE_TAG if add else Action.FILE_UNTAG)
    tag = params.tag(request.match_info["tag"])
    record = await service.tag_file(acting, file_id, tag, add=add)
    return web.json_response(render(request, record), headers={hdrs.ETAG: record.etag})


@routes.put("/v1/files/{file_id}/tags/{tag}")
async def tag_file(request: web.Request) -> web.Response:
    return await _tagging(request, add=True)


@routes.delete("/v1/files/{file_id}/tags/{tag}")
async def untag_file(request: web.Request) -> web.Response:
    return await _tagging(request, add=False)


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


def _redirect_asked(request: web.Request) -> bool:
    """``?redirect=true`` or ``false``; without it, the deployment's default."""
    values = request.query.getall("redirect", [])
    if len(values) > 1 or (values and values[0] not in ("true", "false")):
        raise errors.InvalidParameter("redirect must be true or false, once")
    if values:
        return bool(values[0] == "true")
    return request.app[SETTINGS].download_redirect


@routes.route("GET", "/v1/files/{file_id}")
async def download(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    # Not present (pending, infected...) is refused, and audited as refused, there.
    record = await _record(request, Action.FILE_DOWNLOAD, present=True)
    size = record.content.size
    headers = {
        hdrs.ETAG: record.etag,
        hdrs.ACCEPT_RANGES: "bytes",
        hdrs.CACHE_CONTROL: "private, no-cache",
        hdrs.CONTENT_DISPOSITION: content_disposition(record.name),
        "X-Content-Type-Options": "nosniff",
        # User content never runs as a page of this origin.
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if _redirect_asked(request):
        acting = await actor(request, write=False)
        presigned = await service.redirect(acting, record, headers[hdrs.CONTENT_DISPOSITION])
        if presigned is not None:
            # The store serves the bytes (ranges included); the URL is a bearer credential
            # for a few minutes, so the answer is never cached.
            return web.Response(
                status=302,
                headers={hdrs.LOCATION: presigned.url, hdrs.CACHE_CONTROL: "no-store"},
            )
    if (inm := request.headers.get(hdrs.IF_NONE_MATCH)) and _etag_matches(inm, record.etag):
        return web.Response(status=304, headers=headers)
    byte_range = None
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is None or if_range.strip() == record.etag:
        byte_range = parse_range(request.headers.get(hdrs.RANGE), size)
    status, start, end = 200, 0, size - 1
    if byte_range is not None:
        status, (start, end) = 206, byte_range
        headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = record.content_type
    response.content_length = end - start + 1 if size else 0
    if request.method == hdrs.METH_HEAD or size == 0:
        await response.prepare(request)
        await response.write_eof()
        return response
    stream = await service.open_content(record, start, end)
    return await stream_out(request, response, stream, "download.failed", file_id=record.id)


async def stream_out(
    request: web.Request,
    response: web.StreamResponse,
    stream: AsyncIterator[bytes],
    failed: str,
    **ids: str,
) -> web.StreamResponse:
    """Send ``stream`` as the body of ``response`` (its headers set), counted in the
    download metric, and close the stream whatever happens."""
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
        log.error(failed, code=exc.code, **ids)
        if request.transport is not None:
            request.transport.close()
    finally:
        await close_stream(stream)
    return response
