"""Pages for people: ``/docs`` (Swagger UI over ``/openapi.json``) and one page per problem
type at ``/problems/{code}``, all public.

Swagger UI comes from the ``swagger-ui-py`` package's copy of its static distribution
(Swagger UI 5: OpenAPI 3.1), served from the installed package: nothing is fetched from a CDN
at run time, because hospital networks are closed. The page's own script is a file of its
own rather than inline, so its Content-Security-Policy can forbid inline scripts.
"""

from __future__ import annotations

import html
import importlib.util
import re
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from fileshare.api.keys import SETTINGS
from fileshare.api.problem_types import PATH as PROBLEMS_PATH
from fileshare.api.problem_types import ProblemType, problem_types
from fileshare.api.problems import problem_response

routes = web.RouteTableDef()

DOCS_PATH = "/docs"
STATIC_PATH = "/docs/static/"
#: The file names of Swagger UI's distribution are not versioned: cache for a day, then
#: revalidate (ETag / Last-Modified), so an upgrade shows within a day.
_CACHE = "public, max-age=86400"


def _swagger_ui_dir() -> Path:
    # find_spec locates the package without importing it (its __init__ pulls in jinja2 and
    # PyYAML for framework integrations fileshare does not use).
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("swagger-ui-py is not installed: pip install -e . installs it")
    return Path(spec.origin).parent / "static"


_DIST = _swagger_ui_dir()
#: The files the page uses, and only those (the package also ships Swagger Editor).
PACKAGED_ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (_DIST / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (_DIST / "swagger-ui.css", "text/css"),
    "index.css": (_DIST / "index.css", "text/css"),
    "favicon-32x32.png": (_DIST / "favicon-32x32.png", "image/png"),
    "favicon-16x16.png": (_DIST / "favicon-16x16.png", "image/png"),
}
_INIT_JS = b"""\
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  displayRequestDuration: true,
  // The default validator badge asks validator.swagger.io: out of reach, and a leak.
  validatorUrl: null,
});
"""
OWN_ASSETS: dict[str, tuple[bytes, str]] = {"docs.js": (_INIT_JS, "text/javascript")}
ASSETS = sorted([*PACKAGED_ASSETS, *OWN_ASSETS])

_PAGE = f"""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fileshare API</title>
<link rel="stylesheet" href="{STATIC_PATH}swagger-ui.css">
<link rel="stylesheet" href="{STATIC_PATH}index.css">
<link rel="icon" type="image/png" href="{STATIC_PATH}favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{STATIC_PATH}favicon-16x16.png" sizes="16x16">
</head>
<body>
<noscript>This page needs JavaScript; the API description itself is
<a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="{STATIC_PATH}swagger-ui-bundle.js"></script>
<script src="{STATIC_PATH}docs.js"></script>
</body>
</html>
""".encode()

_HARDENING = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def docs_csp(base_url: str) -> str:
    """Only this server's scripts and styles; data: images (Swagger UI's CSS icons); requests
    to this server, and to the public base URL that "Try it out" calls (the same origin
    behind an ingress, another one when the page is opened by a different host name)."""
    parts = urlsplit(base_url)
    api = f" {parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"font-src 'self'; connect-src 'self'{api}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


@routes.get(DOCS_PATH)
async def docs_page(request: web.Request) -> web.Response:
    headers = _HARDENING | {
        "Content-Security-Policy": docs_csp(request.app[SETTINGS].base_url),
        "Cache-Control": "no-cache",
    }
    return web.Response(body=_PAGE, content_type="text/html", charset="utf-8", headers=headers)


@routes.get(STATIC_PATH + "{asset}")
async def docs_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["asset"]
    headers = _HARDENING | {"Cache-Control": _CACHE}
    if name in OWN_ASSETS:
        body, content_type = OWN_ASSETS[name]
        return web.Response(body=body, headers=headers | {"Content-Type": content_type})
    if name in PACKAGED_ASSETS:
        path, content_type = PACKAGED_ASSETS[name]
        # FileResponse streams the file and answers If-None-Match / Range itself.
        return web.FileResponse(path, headers=headers | {"Content-Type": content_type})
    raise web.HTTPNotFound()


_CODE_SPAN = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """The explanations' `code` spans as <code>, everything else escaped."""
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(text))


def problem_page(problem: ProblemType) -> str:
    status = (
        f"{problem.status} {HTTPStatus(problem.status).phrase}"
        if problem.status is not None
        else "varies (a 4xx)"
    )
    refines = (
        f'<dt>refines</dt><dd><a href="{PROBLEMS_PATH}{problem.parent}">'
        f"<code>{problem.parent}</code></a></dd>\n"
        if problem.parent
        else ""
    )
    title = html.escape(problem.title)
    return f"""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} ({problem.code}) · fileshare problem type</title>
</head>
<body>
<h1>{title}</h1>
<dl>
<dt>code</dt><dd><code>{problem.code}</code></dd>
<dt>HTTP status</dt><dd>{status}</dd>
{refines}</dl>
<p>{_inline(problem.explanation)}</p>
<p>fileshare answers this problem as <code>application/problem+json</code> (RFC 9457) whose
<code>type</code> is this page: <code>detail</code> says what happened this time and
<code>requestId</code> finds the request in the server's logs.</p>
<p><a href="{DOCS_PATH}">API documentation</a></p>
</body>
</html>
"""


_PROBLEM_PAGES = {code: problem_page(p).encode() for code, p in problem_types().items()}


@routes.get(PROBLEMS_PATH + "{code}")
async def problem_type(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    page = _PROBLEM_PAGES.get(code)
    if page is None:
        # No page for it, so no type of ours either: RFC 9457's "nothing beyond the status".
        return problem_response(
            request,
            status=404,
            code="not_found",
            title=HTTPStatus.NOT_FOUND.phrase,
            detail="no such problem type",
            problem_type="about:blank",
        )
    headers = _HARDENING | {
        "Content-Security-Policy": "default-src 'none'; base-uri 'none'; form-action 'none'",
        "Cache-Control": "public, max-age=3600",
    }
    return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)
