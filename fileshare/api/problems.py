"""RFC 9457 problem+json: the one place errors become HTTP answers."""

from __future__ import annotations

import json

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from fileshare import errors
from fileshare.api.context import REQUEST_ID
from fileshare.api.keys import SETTINGS
from fileshare.api.problem_types import HTTP_ERROR, METHOD_NOT_ALLOWED, type_uri
from fileshare.api.routing import route_template

log = structlog.get_logger(__name__)


def problem_document(
    base_url: str,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str,
    request_id: str,
    problem_type: str | None = None,
) -> dict[str, object]:
    """The RFC 9457 members every answer carries; each code's type URI is a page fileshare
    serves itself (``/problems/{code}``)."""
    return {
        "type": problem_type or type_uri(base_url, code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": instance,
        "requestId": request_id,
    }


def problem_response(
    request: web.Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
    problem_type: str | None = None,
) -> web.Response:
    body = problem_document(
        request.app[SETTINGS].base_url,
        status=status,
        code=code,
        title=title,
        detail=detail,
        # The route, not the path: paths carry ids and tag names the client chose, and an
        # answer echoes nothing of the request.
        instance=route_template(request) or "",
        request_id=request.get(REQUEST_ID, ""),
        problem_type=problem_type,
    )
    if extra:
        body.update(extra)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
        headers=headers,
    )


def from_error(request: web.Request, exc: errors.FileshareError) -> web.Response:
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=dict(exc.headers),
        extra={k: v for k, v in exc.extra.items() if isinstance(v, str | int)},
    )


_HTTP_CODES = {
    404: (errors.NotFound.code, errors.NotFound.title),
    405: (METHOD_NOT_ALLOWED.code, METHOD_NOT_ALLOWED.title),
    413: (errors.PayloadTooLarge.code, errors.PayloadTooLarge.title),
}


def _close_if_unread(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """A refusal sent before the body was read says ``Connection: close`` (RFC 9110
    §10.1.1): the client then knows the rest of its body will not be read as the next
    request, and aiohttp drains it for a bounded moment only."""
    if request.body_exists and not request.content.is_eof():
        response.force_close()
    return response


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.FileshareError as exc:
        if exc.status >= 500:
            # The code, not the detail: a detail may quote what the request held.
            log.warning("request.failed", code=exc.code, status=exc.status)
        return _close_if_unread(request, from_error(request, exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, title = _HTTP_CODES.get(exc.status, (HTTP_ERROR.code, exc.reason))
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        answer = problem_response(
            request, status=exc.status, code=code, title=title, detail=exc.reason, headers=headers
        )
        return _close_if_unread(request, answer)
    except Exception:
        # Internal text never reaches the client; the log has the traceback.
        log.exception("request.crashed")
        answer = problem_response(
            request,
            status=500,
            code="internal_error",
            title="Internal server error",
            detail="An unexpected error occurred; quote the request id when reporting it.",
        )
        return _close_if_unread(request, answer)
