"""The HTTP edge: what fileshare answers before (or instead of) its application runs.

aiohttp answers a request its parser cannot read on its own, below every middleware: a
``text/plain`` 400 whose body may quote the offending line — a header with an API key in
it, say — after logging a traceback that quotes it again. Here that answer is replaced by
problem+json with a stable code and a fixed detail (nothing of the request is echoed),
logged as one JSON line that names the code only, and the connection is closed.

Also here, because they too happen before the application sees a request:

- ``Expect: 100-continue`` is no longer answered by the router before the middlewares run
  (aiohttp's default expect handler), which invited bodies that authentication or the
  size limit then refused. The router's handler only checks the expectation; ``100
  Continue`` is sent by ``continue_if_expected`` when a handler is about to read the body,
  that is after authentication, authorisation and every check that can refuse without it.
- A request line naming another major HTTP version (``HTTP/2.0`` over HTTP/1) is answered
  as HTTP/1.1 and refused, instead of being echoed in the status line.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import ERROR as PARSE_ERROR
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from multidict import CIMultiDict, CIMultiDictProxy

from fileshare import errors
from fileshare.api.context import REQUEST_ID
from fileshare.api.problems import from_error, problem_document

log = structlog.get_logger(__name__)

#: ``request[ASKED_VERSION]``: the version of a request line that was not HTTP/1.x.
ASKED_VERSION = web.RequestKey("asked_version", tuple[int, int])
#: ``request[EXPECTED]``: the ``Expect`` header the edge took out of aiohttp's sight.
EXPECTED = web.RequestKey("expected", str)
_CONTINUED = web.RequestKey("continued", bool)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: How long an unread body is drained after its refusal before the connection is closed.
LINGER_SECONDS = 2.0

#: A fixed detail per code: the parser's own message quotes the request.
_DETAILS = {
    errors.MalformedRequest.code: "the request line or headers are not valid HTTP/1.1",
    errors.RequestLineTooLong.code: "the request line is too long",
    errors.HeadersTooLarge.code: "a header line is too long, or there are too many headers",
    errors.FileshareError.code: "an unexpected error occurred; quote the request id",
}


def parser_error(status: int, exc: BaseException | None) -> errors.FileshareError:
    """The domain error for what aiohttp's parser (or connection handler) refused."""
    if status >= 500:
        return errors.FileshareError()
    if isinstance(exc, LineTooLong):
        # The parser says only where the line began (its first bytes, never echoed): a
        # request target starts with "/" (or is absolute, or "*"), a header does not.
        start = (
            bytes(exc.args[0]) if exc.args and isinstance(exc.args[0], bytes | bytearray) else b""
        )
        if start.startswith((b"/", b"*")) or b"://" in start[:16]:
            return errors.RequestLineTooLong()
        return errors.HeadersTooLarge()
    if "too many headers" in str(exc).lower():
        return errors.HeadersTooLarge()
    return errors.MalformedRequest()


class EdgeRequestHandler(RequestHandler):
    """aiohttp's connection handler, with its own error answer replaced."""

    #: Set by ``EdgeRunner``: the public base URL for the problems' ``type``.
    base_url = ""

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) <= queued or not isinstance(self._messages[-1][0], _ErrInfo):
            return
        # The parser refused bytes of a body being read (chunk framing in a later segment):
        # aiohttp queues the error as the next request and leaves the body's reader waiting
        # for bytes that will never come. A body not yet at its end is the only place such
        # an error can come from, so the reader is told instead; its handler answers
        # ``malformed_request`` and the connection is closed.
        request = self._current_request
        if request is not None and not request.content.is_eof():
            request.content.set_exception(BadHttpMessage("the chunked framing is broken"))

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # An answer is already on its way: all that can be done is to cut it.
            raise ConnectionError("the answer was already started")
        error = parser_error(status, exc)
        rid = uuid.uuid4().hex
        if isinstance(exc, BadHttpMethod) and self._request_count == 1:
            # TLS or other non-HTTP bytes on the port: routine noise from the internet.
            log.debug("http.malformed_request", code=error.code, request_id=rid)
        else:
            # The code only: the exception's text quotes the request (headers, keys).
            log.warning(
                "http.malformed_request",
                code=error.code,
                status=error.status,
                error=type(exc).__name__ if exc is not None else None,
                request_id=rid,
            )
        document = problem_document(
            self.base_url,
            status=error.status,
            code=error.code,
            title=error.title,
            detail=_DETAILS.get(error.code, error.detail),
            instance="",
            request_id=rid,
        )
        response = web.Response(
            status=error.status,
            body=json.dumps(document).encode(),
            content_type="application/problem+json",
            headers={"X-Request-ID": rid},
        )
        response.force_close()
        return response


class _EdgeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are handled by ``EdgeRequestHandler`` and whose
    requests of another major HTTP version are marked for refusal (``ASKED_VERSION``)."""

    def __init__(self, app: web.Application, *, base_url: str, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._base_url = base_url

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same state, our connection handler: everything else of aiohttp's setup is kept.
        server.__class__ = _EdgeServer
        EdgeRequestHandler.base_url = self._base_url
        make = server.request_factory

        def request_factory(message: RawRequestMessage, *args: Any) -> web.BaseRequest:
            expect = message.headers.get("Expect")
            if expect is not None:
                # Taken out of aiohttp's sight: its router would answer it before the
                # middlewares on paths and methods no route takes (100 before a 404 or 405,
                # a 417 quoting the header). ``refuse_unsupported`` and the body readers
                # meet it from ``EXPECTED`` instead.
                headers = CIMultiDict(message.headers)
                del headers["Expect"]
                message = message._replace(headers=CIMultiDictProxy(headers))
            request = make_one(message, *args)
            if expect is not None:
                request[EXPECTED] = expect.strip().lower()
            return request

        def make_one(message: RawRequestMessage, *args: Any) -> web.BaseRequest:
            if message is PARSE_ERROR:
                # The stand-in request of an unparsable one says HTTP/1.0; the answer
                # (``handle_error``) is HTTP/1.1 like every other.
                return make(message._replace(version=HttpVersion11), *args)
            if message.version[0] == 1:
                return make(message, *args)
            # Answered as HTTP/1.1 (the status line echoes the request's version).
            request = make(message._replace(version=HttpVersion11), *args)
            request[ASKED_VERSION] = message.version
            return request

        server.request_factory = request_factory
        return server


async def check_expectation(request: web.Request) -> web.StreamResponse | None:
    """The router's ``expect_handler`` for every route: refuse what fileshare does not meet,
    and send nothing yet (``continue_if_expected`` does, once the body is wanted). It runs
    before the middlewares, so it answers itself."""
    expect = _expectation(request)
    if not expect or expect == "100-continue":
        return None
    request[REQUEST_ID] = uuid.uuid4().hex  # the middlewares that set it have not run
    response = from_error(request, errors.ExpectationFailed("only 100-continue is met"))
    response.force_close()  # the body, if any, is not read
    return response


def _expectation(request: web.Request) -> str:
    if EXPECTED in request:
        return request[EXPECTED]
    return request.headers.get("Expect", "").strip().lower()


@web.middleware
async def refuse_unsupported(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What the parser let through but fileshare cannot take: another major HTTP version,
    and transfer codings other than chunked (aiohttp would pass gzip-coded bytes on as if
    they were the body)."""
    if ASKED_VERSION in request:
        raise errors.UnsupportedHttpVersion("send HTTP/1.1 (or HTTP/1.0) on this connection")
    if (expect := _expectation(request)) and expect != "100-continue":
        raise errors.ExpectationFailed("only 100-continue is met")
    codings = [
        c.strip().lower()
        for value in request.headers.getall("Transfer-Encoding", [])
        for c in value.split(",")
    ]
    if any(c != "chunked" for c in codings):
        raise errors.UnsupportedTransferCoding("only chunked transfer coding is accepted")
    return await handler(request)


async def continue_if_expected(request: web.Request) -> None:
    """Invite the body of a client that waits for it: called by the body readers, after
    every check that can refuse the request without reading it."""
    if request.get(_CONTINUED) or request.version < HttpVersion11:
        return
    if _expectation(request) == "100-continue":
        request[_CONTINUED] = True
        await request.writer.write(_CONTINUE)
        # The interim answer is not the answer: a failure after it may still send one.
        request.writer.output_size = 0


def meet_expectations_late(app: web.Application) -> None:
    """Give every route ``check_expectation`` as its expect handler (after all are added)."""
    for route in app.router.routes():
        # aiohttp keeps it in a private attribute; tests/e2e/test_http_edge.py fails if it
        # stops being used.
        route._expect_handler = check_expectation
