"""The HTTP edge of a live ``fileshare serve`` (issue 14): each problem found with raw
sockets has its test here, and each failed before its fix.

Every answer below is problem+json with a stable code, echoes nothing of the request (the
API key least of all), and the log holds nothing of it either.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ALICE_KEY
from tests.e2e.hostile import Live, exchange, start_live

KEY = ALICE_KEY.encode()
AUTH = b"Authorization: Bearer " + KEY + b"\r\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, clamd: Any) -> Iterator[Live]:
    yield from start_live(tmp_path_factory.mktemp("edge"), clamd.address)


def _request(head: bytes, body: bytes = b"") -> bytes:
    return head + b"\r\n" + body


def _assert_refused(answer: Any, status: int, code: str) -> None:
    assert answer.status == status, answer.raw[:600]
    problem = answer.problem
    assert problem["code"] == code, problem
    assert problem["status"] == status
    assert answer.headers.get("x-request-id") == problem["requestId"]
    assert KEY not in answer.raw
    assert b"Traceback" not in answer.raw


def _log_lines(live: Live) -> list[dict[str, Any]]:
    return [json.loads(line) for line in live.log.read_text().splitlines()]


# --- parser errors: problem+json, no echo, the key kept out of the log ------------------------

PARSER_CASES = {
    "nul in the authorization header": b"GET /v1/files HTTP/1.1\r\nHost: x\r\n"
    b"Authorization: Bearer " + KEY + b"\x00\r\n",
    "cr in a header value": b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-A: a\rb" + KEY + b"\r\n",
    "obs-fold": b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  " + KEY + b"\r\n",
    "a header without a colon": b"GET /v1/files HTTP/1.1\r\nHost: x\r\nBearer " + KEY + b"\r\n",
    "negative content-length": b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n",
    "non-numeric content-length": b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n",
    "two different content-lengths": b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    "content-length with transfer-encoding": b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "an unknown method": b"FR\x00B /v1/files HTTP/1.1\r\nHost: x\r\n",
    "lf-only lines": b"GET /v1/files HTTP/1.1\nHost: x\nAuthorization: Bearer " + KEY + b"\n",
}


@pytest.mark.parametrize("case", list(PARSER_CASES))
def test_what_the_parser_refuses_is_a_problem_that_echoes_nothing(live: Live, case: str) -> None:
    answer = exchange(live.port, _request(PARSER_CASES[case]), check_close=True)
    if answer.status == 401:  # a lenient parse (LF-only lines) reaches the app: still refused
        assert answer.problem["code"] == "unauthenticated"
        return
    _assert_refused(answer, 400, "malformed_request")
    assert answer.version == "HTTP/1.1"
    assert answer.closed
    assert live.healthy()


def test_the_key_in_a_bad_header_never_reaches_the_log(live: Live) -> None:
    exchange(live.port, _request(PARSER_CASES["nul in the authorization header"]))
    text = live.log.read_text()
    assert ALICE_KEY not in text
    lines = _log_lines(live)  # every line is JSON
    assert any(e["event"] == "http.malformed_request" for e in lines)


def test_over_long_lines_and_too_many_headers(live: Live) -> None:
    line = exchange(live.port, _request(b"GET /v1/files?name=" + b"a" * 9000 + b" HTTP/1.1\r\n"))
    _assert_refused(line, 414, "request_line_too_long")
    assert b"aaaa" not in line.raw
    field = exchange(
        live.port, _request(b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n")
    )
    _assert_refused(field, 431, "headers_too_large")
    many = b"".join(b"X-H%d: v\r\n" % n for n in range(150))
    _assert_refused(
        exchange(live.port, _request(b"GET /v1/files HTTP/1.1\r\nHost: x\r\n" + many)),
        431,
        "headers_too_large",
    )


def test_a_bad_chunk_size_is_malformed_not_a_disconnect(live: Live) -> None:
    before = live.stored()
    head = b"POST /v1/files HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n"
    answer = exchange(live.port, _request(head, b"zz\r\nhello\r\n0\r\n\r\n"))
    assert answer.status == 400, answer.raw[:400]
    assert answer.problem["code"] == "malformed_request"
    assert live.stored() == before


def test_a_bad_chunk_size_in_a_later_segment_is_answered_not_hung(live: Live) -> None:
    """The framing error arrives after the body's reader started (the client sends it only
    after ``100 Continue``): aiohttp queued it as the next request and the upload waited
    for the rest of a body that never came, until the client gave up."""
    before = live.stored()
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    started = time.monotonic()
    answer = exchange(live.port, head, then=b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n", timeout=8)
    assert answer.interim == [100]  # the second segment came after the reader started
    _assert_refused(answer, 400, "malformed_request")
    assert time.monotonic() - started < 5
    assert live.stored() == before


# --- HTTP versions and codings --------------------------------------------------------------


def test_an_http_2_request_line_is_refused_in_http_1_1(live: Live) -> None:
    answer = exchange(live.port, _request(b"GET /healthz HTTP/2.0\r\nHost: x\r\n"))
    assert answer.version == "HTTP/1.1"
    _assert_refused(answer, 400, "unsupported_http_version")


@pytest.mark.parametrize("coding", [b"br", b"zstd", b"deflate", b"gzip", b"x-custom"])
def test_every_content_coding_is_415_before_any_decoding(live: Live, coding: bytes) -> None:
    body = b"\x28\xb5\x2f\xfd" + b"\x00" * 64  # not valid in any of them: never decoded
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Encoding: " + coding + b"\r\n"
        b"Content-Length: %d\r\n" % len(body)
    )
    _assert_refused(exchange(live.port, _request(head, body)), 415, "unsupported_content_encoding")


def test_a_transfer_coding_other_than_chunked_is_refused(live: Live) -> None:
    before = live.stored()
    payload = gzip.compress(b"the raw bytes must not be stored as the file")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: gzip, chunked\r\n"
    )
    _assert_refused(
        exchange(live.port, _request(head, chunked)), 400, "unsupported_transfer_coding"
    )
    assert live.stored() == before


def test_a_decompression_bomb_costs_nothing_and_stalls_nothing(live: Live) -> None:
    """A gzip of 256 MiB of zeros (about 256 KiB on the wire), refused three ways (415 with
    a key, 401 without, 405 on /healthz): never inflated, so /healthz answers at once."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\x00" * (1 << 20)
    body = b"".join(bomb.compress(zeros) for _ in range(256)) + bomb.flush()
    for head, status in (
        (b"POST /v1/files HTTP/1.1\r\nHost: x\r\n" + AUTH, 415),
        (b"POST /v1/files HTTP/1.1\r\nHost: x\r\n", 401),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\n", 405),
    ):
        cpu = _server_cpu(live)
        request = head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
        answer = exchange(live.port, request + body)
        assert answer.status == status, answer.raw[:300]
        started = time.monotonic()
        assert live.healthy()
        assert time.monotonic() - started < 0.5
        # Inflating 256 MiB takes about 0.5 CPU-s; reading 256 KiB takes next to none.
        assert _server_cpu(live) - cpu < 0.25


def _server_cpu(live: Live) -> float:
    fields = Path(f"/proc/{live.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


# --- Expect: 100-continue ------------------------------------------------------------------


def test_100_continue_is_sent_only_to_a_request_that_will_be_read(live: Live) -> None:
    body = b"continued body"
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Expect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    before = live.stored()
    answer = exchange(live.port, head, then=body)
    assert answer.interim == [100]
    assert answer.status == 201, answer.raw[:400]
    # (and ``stored`` sees a new file: the "nothing stored" checks here can fail)
    assert any(key.startswith("permanent/sha256/") for key in set(live.stored()) - set(before))


@pytest.mark.parametrize(
    ("credentials", "length", "status", "code"),
    [
        (b"", 10, 401, "unauthenticated"),
        (AUTH, 64 * 1024 * 1024, 413, "payload_too_large"),
    ],
)
def test_no_100_continue_before_a_refusal(
    live: Live, credentials: bytes, length: int, status: int, code: str
) -> None:
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n" + credentials + b"Expect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )
    answer = exchange(live.port, head, then=b"x" * min(length, 10))
    assert answer.interim == []
    _assert_refused(answer, status, code)


def test_no_100_continue_where_no_route_takes_the_request(live: Live) -> None:
    for line in (b"POST /healthz HTTP/1.1", b"POST /v1/no-such-route HTTP/1.1"):
        head = (
            line + b"\r\nHost: x\r\n" + AUTH + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        answer = exchange(live.port, head, then=b"hello")
        assert answer.interim == []
        assert answer.status in (404, 405), answer.raw[:300]
        assert answer.headers.get("connection", "").lower() == "close"


def test_a_refusal_before_the_body_closes_the_connection(live: Live) -> None:
    """Otherwise the unread body would be read as the next request on the connection."""
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
    )
    answer = exchange(live.port, head, then=b"GET /healt")
    _assert_refused(answer, 401, "unauthenticated")
    assert answer.headers.get("connection", "").lower() == "close"


def test_an_unknown_expectation_is_417(live: Live) -> None:
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Expect: 200-ok\r\nContent-Length: 3\r\n"
    )
    _assert_refused(exchange(live.port, _request(head, b"abc")), 417, "expectation_failed")


# --- multipart part headers, names, digests ---------------------------------------------------


def _form(part_head: bytes, content: bytes = b"data") -> bytes:
    body = b"--XB\r\n" + part_head + b"\r\n\r\n" + content + b"\r\n--XB--\r\n"
    return (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Content-Type: multipart/form-data; boundary=XB\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


@pytest.mark.parametrize(
    "part_head",
    [
        b'Content-Disposition: form-data; name="file"; filename="a\x00b.txt"',
        b'Content-Disposition: form-data; name="file"; filename="' + b"n" * 10_000 + b'.txt"',
        b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\nno colon here',
    ],
)
def test_malformed_part_headers_are_malformed_multipart(live: Live, part_head: bytes) -> None:
    before = live.stored()
    answer = exchange(live.port, _form(part_head))
    assert answer.status == 400, answer.raw[:400]
    assert answer.problem["code"] in ("malformed_multipart", "invalid_file_name")
    assert b"nnnnnnnn" not in answer.raw
    assert live.stored() == before


def test_part_headers_that_never_end_are_malformed_multipart(live: Live) -> None:
    body = b'--XB\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n'
    request = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Content-Type: multipart/form-data; boundary=XB\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    answer = exchange(live.port, request)
    assert answer.status == 400, answer.raw[:400]
    assert answer.problem["code"] == "malformed_multipart"


def test_an_unterminated_quote_in_a_file_name_is_refused(live: Live) -> None:
    before = live.stored()
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b'Content-Disposition: attachment; filename="unterminated.txt\r\nContent-Length: 2\r\n'
    )
    _assert_refused(exchange(live.port, _request(head, b"hi")), 400, "invalid_file_name")
    assert live.stored() == before


@pytest.mark.parametrize("split", [True, False], ids=["two headers", "two members"])
def test_every_sha256_member_of_content_digest_is_checked(live: Live, split: bool) -> None:
    before = live.stored()
    body = b"digest me"
    good = b"sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()) + b":"
    bad = b"sha-256=:" + base64.b64encode(hashlib.sha256(b"other").digest()) + b":"
    if split:
        digests = b"Content-Digest: " + good + b"\r\nContent-Digest: " + bad + b"\r\n"
    else:
        digests = b"Content-Digest: " + good + b", " + bad + b"\r\n"
    head = b"POST /v1/files HTTP/1.1\r\nHost: x\r\n" + AUTH + digests + b"Content-Length: 9\r\n"
    _assert_refused(exchange(live.port, _request(head, body)), 400, "invalid_digest")
    assert live.stored() == before
