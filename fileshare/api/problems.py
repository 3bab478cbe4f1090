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

log = structlog.get_logger(__name__)


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
    # Each code's type URI is a page fileshare serves itself (``/problems/{code}``).
    body: dict[str, object] = {
        "type": problem_type or type_uri(request.app[SETTINGS].base_url, code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.path,
        "requestId": request.get(REQUEST_ID, ""),
    }
    if extra:
        body.update(extra)
    response = web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
        headers=headers,
    )
    return response


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


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.FileshareError as exc:
        if exc.status >= 500:
            # The code, not the detail: a detail may quote what the request held.
            log.warning("request.failed", code=exc.code, status=exc.status)
        return from_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, title = _HTTP_CODES.get(exc.status, (HTTP_ERROR.code, exc.reason))
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem_response(
            request, status=exc.status, code=code, title=title, detail=exc.reason, headers=headers
        )
    except Exception:
        # Internal text never reaches the client; the log has the traceback.
        log.exception("request.crashed")
        return problem_response(
            request,
            status=500,
            code="internal_error",
            title="Internal server error",
            detail="An unexpected error occurred; quote the request id when reporting it.",
        )
