"""``/v1/admin/quarantine``: what the scanner refused and fileshare kept as evidence. Thin:
parse, call ``fileshare.quarantine``, render. The bytes are only ever streamed to the
administrator who asks for them with a reason (``/content``), as an attachment."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import hdrs, web

from fileshare import errors
from fileshare.api import params
from fileshare.api.acting import unscoped
from fileshare.api.files import render, stream_out, timestamp
from fileshare.api.keys import QUARANTINE, SETTINGS
from fileshare.api.names import content_disposition
from fileshare.index.quarantine import Item
from fileshare.quarantine import STATUSES, QuarantineAdmin, check_reason

routes = web.RouteTableDef()


def _admin(request: web.Request) -> QuarantineAdmin:
    found = request.app.get(QUARANTINE)
    if found is None:
        raise errors.NotFound("no quarantine is configured (FILESHARE_QUARANTINE_BUCKET)")
    return found


def _only(request: web.Request, *allowed: str) -> None:
    if unknown := set(request.query) - set(allowed):
        names = ", ".join(allowed) or "no parameters"
        raise errors.InvalidParameter(
            f"unknown parameter {sorted(unknown)[0]!r}; this takes {names}"
        )


def status_of(item: Item) -> str:
    if item.released is not None:
        return "released"
    if item.deleted is not None:
        return "deleted"
    return "held" if item.held else "gone"


def render_item(item: Item) -> dict[str, object]:
    scan = item.scan
    body: dict[str, object] = {
        "id": item.id,
        "owner": item.owner,
        "contentType": item.content_type,
        "size": item.size,
        "sha256": item.sha256,
        "state": scan.state.value,
        "status": status_of(item),
        "created": timestamp(item.created),
    }
    optional: dict[str, object | None] = {
        "fileId": item.file_id,
        "name": item.name,
        "signature": scan.signature,
        "scanner": scan.scanner,
        "scannedAt": None if scan.scanned_at is None else timestamp(scan.scanned_at),
        "createdBy": item.created_by,
        "released": None if item.released is None else timestamp(item.released),
        "releasedBy": item.released_by,
        "releasedFileId": item.released_file_id,
        "deleted": None if item.deleted is None else timestamp(item.deleted),
        "deletedBy": item.deleted_by,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


@routes.get("/v1/admin/quarantine")
async def list_quarantine(request: web.Request) -> web.Response:
    _only(request, "pageSize", "offsetKey", "status")
    query = request.query
    if any(len(query.getall(name)) > 1 for name in query):
        raise errors.InvalidParameter("each query parameter at most once")
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise errors.InvalidParameter(f"status must be one of {', '.join(STATUSES)}")
    found, more = await _admin(request).page(
        unscoped(request),
        params.page_size(query),
        before=params.decode_cursor(query["offsetKey"]) if "offsetKey" in query else None,
        status=status,
    )
    body: dict[str, object] = {"items": [render_item(i) for i in found]}
    if more is not None:
        body["nextOffsetKey"] = params.encode_cursor(more)
    return web.json_response(body)


@routes.get("/v1/admin/quarantine/{item_id}")
async def get_quarantined(request: web.Request) -> web.Response:
    _only(request)
    item = await _admin(request).get(unscoped(request), request.match_info["item_id"])
    return web.json_response(render_item(item))


@routes.post("/v1/admin/quarantine/{item_id}/release")
async def release_quarantined(request: web.Request) -> web.Response:
    _only(request)
    uploaded = await _admin(request).release(unscoped(request), request.match_info["item_id"])
    record = uploaded.record
    owner = quote(record.owner, safe="")
    location = f"{request.app[SETTINGS].base_url}/v1/files/{record.id}?owner={owner}"
    return web.json_response(render(request, record), status=201, headers={hdrs.LOCATION: location})


@routes.get("/v1/admin/quarantine/{item_id}/content")
async def quarantined_content(request: web.Request) -> web.StreamResponse:
    _only(request, "reason")
    if len(request.query.getall("reason", [])) > 1:
        raise errors.InvalidParameter("reason may be given once")
    reason = check_reason(request.query.get("reason"))
    item, stream = await _admin(request).open_content(
        unscoped(request), request.match_info["item_id"], reason
    )
    headers = {
        hdrs.CACHE_CONTROL: "no-store",
        # Never shown by a browser: saved, and only where the admin chooses.
        hdrs.CONTENT_DISPOSITION: content_disposition(item.name),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/octet-stream"
    response.content_length = item.size
    return await stream_out(
        request, response, stream, "quarantine.download_failed", quarantine_id=item.id
    )


@routes.delete("/v1/admin/quarantine/{item_id}")
async def delete_quarantined(request: web.Request) -> web.Response:
    _only(request)
    await _admin(request).delete(unscoped(request), request.match_info["item_id"])
    return web.Response(status=204)
