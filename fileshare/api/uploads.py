"""``/v1/uploads``: direct-to-bucket uploads. Create an intent (and get the presigned PUT
its bytes go to), read its status, complete it. Thin: parse, authorize, call, render."""

from __future__ import annotations

import re

from aiohttp import hdrs, web

from fileshare import errors
from fileshare.api import params
from fileshare.api.acting import actor
from fileshare.api.body import json_members
from fileshare.api.files import timestamp
from fileshare.api.keys import DIRECT, SETTINGS
from fileshare.api.names import validate_media_type, validate_name
from fileshare.direct import Intent, Issued
from fileshare.index.uploads import Upload
from fileshare.models import UploadState
from fileshare.storage.base import Presigned

routes = web.RouteTableDef()

_SHA256 = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
#: The answer holds a bearer credential (the URL): never kept by a cache.
_NO_STORE = {hdrs.CACHE_CONTROL: "no-store"}


def _upload_id(request: web.Request) -> str:
    value = request.match_info["upload_id"]
    if not _UPLOAD_ID.fullmatch(value):
        raise errors.NotFound("no such upload")
    return value


def render(request: web.Request, upload: Upload) -> dict[str, object]:
    base = request.app[SETTINGS].base_url
    body: dict[str, object] = {
        "id": upload.id,
        "status": f"{base}/v1/uploads/{upload.id}",
        "fileId": upload.file_id,
        "name": upload.name,
        "contentType": upload.content_type,
        "size": upload.size,
        "state": upload.state.value,
        "created": timestamp(upload.created),
        "expires": timestamp(upload.expires),
    }
    if upload.sha256 is not None:
        body["sha256"] = upload.sha256
    if upload.state is UploadState.CLEAN:
        body["file"] = f"{base}/v1/files/{upload.file_id}"
    if upload.code is not None:
        body["code"] = upload.code
    if upload.detail is not None:
        body["detail"] = upload.detail
    if upload.signature is not None:
        body["signature"] = upload.signature
    if upload.finished is not None:
        body["finished"] = timestamp(upload.finished)
    return body


def _request(presigned: Presigned) -> dict[str, object]:
    return {
        "method": presigned.method,
        "url": presigned.url,
        "headers": presigned.headers,
        "expires": timestamp(presigned.expires),
    }


def _intent(body: dict[str, object]) -> Intent:
    name = params.string_member(body, "name")
    content_type = params.string_member(body, "contentType", required=True) or ""
    if not content_type:
        raise errors.ValidationFailed("contentType must be a media type (type/subtype)")
    try:
        media = validate_media_type(content_type)
    except errors.UnsupportedMediaType as exc:
        raise errors.ValidationFailed(f"contentType: {exc.detail}") from None
    size = body.get("size")
    if isinstance(size, float) and size.is_integer():
        size = int(size)  # 157.0 is an integer to JSON Schema
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise errors.ValidationFailed("size must be a whole number of bytes")
    sha256 = params.string_member(body, "sha256")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise errors.ValidationFailed("sha256 must be 64 lower-case hex digits")
    try:
        checked_name = None if name is None else validate_name(name)
    except errors.InvalidFileName as exc:
        raise errors.ValidationFailed(f"name: {exc.detail}") from None
    form = body.get("form", False)
    if not isinstance(form, bool):
        raise errors.ValidationFailed("form must be true or false")
    return Intent(name=checked_name, content_type=media, size=size, sha256=sha256, form=form)


@routes.post("/v1/uploads")
async def create_upload(request: web.Request) -> web.Response:
    """An intent, and the presigned PUT its bytes go to (straight into the unscanned
    bucket). The file exists once the upload is ingested and clean."""
    acting = await actor(request, write=True)
    body = await json_members(request, {"name", "contentType", "size", "sha256", "form"})
    intent = _intent(body)
    issued: Issued = await request.app[DIRECT].create(acting, intent)
    answer = render(request, issued.upload)
    if issued.request is not None:
        answer["upload"] = _request(issued.request)
    elif issued.form is not None:
        answer["form"] = {
            "method": "POST",
            "url": issued.form.url,
            "fields": issued.form.fields,
            "expires": timestamp(issued.form.expires),
        }
    else:
        answer["parts"] = [
            {"number": p.number, "size": p.size, **_request(p.request)} for p in issued.parts
        ]
        answer["partSize"] = issued.upload.part_size
    answer["complete"] = f"{answer['status']}/complete"
    headers = {hdrs.LOCATION: str(answer["status"]), **_NO_STORE}
    return web.json_response(answer, status=201, headers=headers)


_LIST_QUERY = frozenset({"pageSize", "offsetKey", "state", "owner"})


@routes.get("/v1/uploads")
async def list_uploads(request: web.Request) -> web.Response:
    """The caller's uploads, oldest first: pending ones, and how the others ended."""
    query = request.query
    if set(query) - _LIST_QUERY:
        raise errors.InvalidParameter("this list takes pageSize, offsetKey, state and owner")
    if any(len(query.getall(name)) > 1 for name in query):
        raise errors.InvalidParameter("each query parameter at most once")
    state = None
    if "state" in query:
        try:
            state = UploadState(query["state"])
        except ValueError:
            raise errors.InvalidParameter("state must be one of the upload states") from None
    after = params.decode_cursor(query["offsetKey"]) if "offsetKey" in query else None
    limit = params.page_size(query)
    acting = await actor(request, write=False)
    found, more = await request.app[DIRECT].page(acting, state=state, after=after, limit=limit)
    body: dict[str, object] = {"items": [render(request, u) for u in found]}
    if more is not None:
        body["nextOffsetKey"] = params.encode_cursor(more)
    return web.json_response(body, headers=_NO_STORE)


@routes.get("/v1/uploads/{upload_id}")
async def upload_status(request: web.Request) -> web.Response:
    upload_id = _upload_id(request)
    acting = await actor(request, write=False)
    upload = await request.app[DIRECT].status(acting, upload_id)
    return web.json_response(render(request, upload), headers=_NO_STORE)


@routes.post("/v1/uploads/{upload_id}/complete")
async def complete_upload(request: web.Request) -> web.Response:
    """The bytes are at the URL: ingest them now and answer the outcome (``clean``, a
    refusal, ...). 202 while another worker is still ingesting them."""
    upload_id = _upload_id(request)
    acting = await actor(request, write=True)
    upload = await request.app[DIRECT].complete(acting, upload_id)
    status = 202 if upload.state is UploadState.PENDING else 200
    return web.json_response(render(request, upload), status=status, headers=_NO_STORE)
