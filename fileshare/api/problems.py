"""RFC 9457 problem+json: the one place errors become HTTP answers."""

from __future__ import annotations

import json

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from fileshare import errors
from fileshare.api.context import REQUEST_ID

log = structlog.get_logger(__name__)

PROBLEM_TYPE_BASE = "https://fileshare.dev/problems/"


def problem_response(
    request: web.Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> web.Response:
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + code,
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
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Upload exceeds the size limit"),
}


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.FileshareError as exc:
        if exc.status >= 500:
            log.warning("request.failed", code=exc.code, detail=exc.detail)
        return from_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, title = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
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
