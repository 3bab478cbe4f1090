"""The hostile-input suite (issue 14): raw-socket requests against a live ``fileshare serve``
across names, dispositions, multipart, lengths and codings, ranges, ids, headers, HTTP
versions and methods, tokens and JSON bodies.

Each case asserts: a 4xx problem+json answer with the expected stable code, nothing of the
request echoed (every case carries a marker, most carry the API key), no 5xx. After all of
them: nothing was stored, the server is healthy, every log line is JSON, and neither the
key nor any marker reached the log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import ALICE_KEY
from tests.e2e.hostile import Live, exchange, start_live

KEY = ALICE_KEY.encode()
AUTH = b"Authorization: Bearer " + KEY + b"\r\n"
MARK = b"ZQXMARK"


@dataclass(frozen=True)
class Case:
    id: str
    request: bytes
    #: Acceptable (status, code) answers.
    expect: frozenset[tuple[int, str]]


CASES: list[Case] = []


def case(id_: str, request: bytes, *expect: tuple[int, str]) -> None:
    CASES.append(Case(id_, request, frozenset(expect)))


MALFORMED = (400, "malformed_request")
UNAUTH = (401, "unauthenticated")
NOT_FOUND = (404, "not_found")
METHOD = (405, "method_not_allowed")
TOO_LARGE = (413, "payload_too_large")
BAD_NAME = (400, "invalid_file_name")
BAD_ID = (400, "invalid_file_id")
BAD_TAG = (400, "invalid_tag")
BAD_PARAM = (400, "invalid_parameter")
BAD_DIGEST = (400, "invalid_digest")
BAD_FORM = (400, "malformed_multipart")
BAD_JSON = (400, "invalid_json")
ENCODING = (415, "unsupported_content_encoding")
MEDIA = (415, "unsupported_media_type")
HEADERS = (431, "headers_too_large")
LINE = (414, "request_line_too_long")


def req(line: bytes, *headers: bytes, body: bytes = b"", length: bool = True) -> bytes:
    head = line + b"\r\nHost: fileshare.test\r\n" + b"".join(h + b"\r\n" for h in headers)
    if length and body:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


POST = b"POST /v1/files HTTP/1.1"
BEARER = AUTH.rstrip(b"\r\n")

# --- header syntax, on three routes -----------------------------------------------------------

ROUTES = {
    "list": (b"GET /v1/files HTTP/1.1", b""),
    "upload": (POST, b"body"),
    "health": (b"GET /healthz HTTP/1.1", b""),
}
BAD_HEADERS = {
    "nul": BEARER + b"\x00" + MARK,
    "cr": b"X-A: a\r" + MARK,
    "obs-fold": b"X-A: a\r\n\t" + MARK,
    "no-colon": b"Bearer " + KEY + MARK,
    "space-before-colon": b"X-A" + MARK + b" : v",
    "bad-name-char": b"X(" + MARK + b"): v",
    "empty-name": b": " + MARK,
    "non-ascii-name": b"X-\xff" + MARK + b": v",
    "long-value": b"X-Long: " + MARK + b"v" * 9000,
    "long-name": b"X-" + MARK + b"n" * 9000 + b": v",
}
for route, (line, body) in ROUTES.items():
    for name, header in BAD_HEADERS.items():
        big = name.startswith("long")
        case(f"header-{name}-{route}", req(line, header, body=body), HEADERS if big else MALFORMED)
    many = tuple(b"X-H%d: %s" % (n, MARK) for n in range(120))
    case(f"header-too-many-{route}", req(line, *many, body=body), HEADERS)

# --- lengths and transfer codings -------------------------------------------------------------

for n, value in enumerate([b"-1", b"abc", b"1.5", b"+5", b"0x10", b"5, 6", b"1e3", b"", b" "]):
    case(
        f"content-length-{n}",
        req(POST, BEARER, b"Content-Length: " + value, MARK, length=False) + b"hello",
        MALFORMED,
    )
case(
    "content-length-twice",
    req(POST, BEARER, b"Content-Length: 5", b"Content-Length: 6", length=False) + b"hello",
    MALFORMED,
)
case(
    "content-length-overflow",
    req(POST, BEARER, b"Content-Length: 99999999999999999999999", length=False),
    MALFORMED,
    TOO_LARGE,
)
case(
    "content-length-over-limit",
    req(POST, BEARER, b"Content-Length: %d" % (64 << 20), length=False),
    TOO_LARGE,
)
case(
    "content-length-over-limit-put",
    req(b"PUT /v1/files/over HTTP/1.1", BEARER, b"Content-Length: %d" % (64 << 20), length=False),
    TOO_LARGE,
)
case(
    "length-and-chunked",
    req(POST, BEARER, b"Content-Length: 5", b"Transfer-Encoding: chunked", length=False)
    + b"5\r\nhello\r\n0\r\n\r\n",
    MALFORMED,
)
CHUNKED = b"Transfer-Encoding: chunked"
for n, framing in enumerate(
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5 \x00\r\nhello\r\n0\r\n\r\n",
    ]
):
    case(f"chunk-framing-{n}", req(POST, BEARER, CHUNKED, length=False) + framing, MALFORMED)
for n, coding in enumerate(
    [b"gzip, chunked", b"deflate, chunked", b"chunked, gzip", b"x-" + MARK + b", chunked"]
):
    case(
        f"transfer-coding-{n}",
        req(POST, BEARER, b"Transfer-Encoding: " + coding, length=False) + b"0\r\n\r\n",
        (400, "unsupported_transfer_coding"),
        MALFORMED,
    )

# --- content codings --------------------------------------------------------------------------

for coding in [b"gzip", b"br", b"zstd", b"deflate", b"compress", b"gzip, gzip", b"x-" + MARK]:
    case(
        f"content-coding-{coding[:10].decode(errors='replace')}",
        req(POST, BEARER, b"Content-Encoding: " + coding, body=b"\x1f\x8b" + MARK),
        ENCODING,
    )
    case(
        f"content-coding-unauthenticated-{coding[:10].decode(errors='replace')}",
        req(POST, b"Content-Encoding: " + coding, body=b"\x1f\x8b" + MARK),
        UNAUTH,
    )

# --- methods and versions ---------------------------------------------------------------------

for n, method in enumerate(
    [b"FR\x00B", b"G ET", b"GET\x7f", b"\xffGET", b"[GET]", b"M" * 200 + MARK, b"get("]
):
    case(f"method-{n}", req(method + b" /v1/files HTTP/1.1", BEARER), MALFORMED)
for n, (line, expect) in enumerate(
    [
        (b"TRACE /v1/files HTTP/1.1", METHOD),
        (b"DELETE /healthz HTTP/1.1", METHOD),
        (b"PATCH /v1/files HTTP/1.1", METHOD),
        (b"BREW /v1/files HTTP/1.1", MALFORMED),  # a method the parser does not know
        (b"PROPFIND /v1/files HTTP/1.1", METHOD),
    ]
):
    case(f"method-unrouted-{n}", req(line, BEARER), expect)
for n, version in enumerate(
    [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9", b"HTTP/1", b"HTTX/1.1", b"http/1.1", b"HTTP/1.1x", b""]
):
    # The parser refuses some versions itself; the others reach the edge's own check.
    case(
        f"version-{n}",
        req(b"GET /v1/files" + (b" " + version if version else b""), BEARER),
        (400, "unsupported_http_version"),
        MALFORMED,
    )
case(
    "http2-preface",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    MALFORMED,
    (400, "unsupported_http_version"),
)
case("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARK, MALFORMED)

# --- request targets and file ids -------------------------------------------------------------

for n, (target, expect) in enumerate(
    [
        (b"*", (NOT_FOUND, MALFORMED)),
        (b"//" + MARK, (NOT_FOUND,)),
        (b"http://evil.example/" + MARK, (NOT_FOUND, MALFORMED)),
        (b"/v1/files/%00" + MARK, (BAD_ID, NOT_FOUND)),
        (b"/v1/files/%zz" + MARK, (BAD_ID, NOT_FOUND)),
        (b"/v1/files/../../etc/passwd", (NOT_FOUND, BAD_ID)),
        (b"/v1/files/\xff" + MARK, (BAD_ID, NOT_FOUND, MALFORMED)),
        # A read of an id that cannot exist is simply not found (no oracle either way).
        (b"/v1/files/" + b"i" * 300 + MARK, (BAD_ID, NOT_FOUND)),
        (b"/v1/files/%C3%A9" + MARK, (BAD_ID, NOT_FOUND)),
        (b"/v1/files/a%2Fb" + MARK, (BAD_ID, NOT_FOUND)),
        (b"/v1/files/-" + MARK, (BAD_ID, NOT_FOUND)),
        (b"/v1/files/." + MARK, (BAD_ID, NOT_FOUND)),
        (b"/v1/files/a b", (MALFORMED, BAD_ID, NOT_FOUND)),
        (b"/v1/files?pageSize=-1&" + MARK + b"=1", (BAD_PARAM,)),
        (b"/v1/files?pageSize=abc" + MARK, (BAD_PARAM,)),
        (b"/v1/files?offsetKey=" + MARK + b"%00", (BAD_PARAM,)),
        (b"/v1/files?unknown" + MARK + b"=1", (BAD_PARAM,)),
        (b"/v1/files?pageSize=" + b"9" * 40, (BAD_PARAM,)),
        (b"/v1/search/files?tag=" + b"t" * 300 + MARK, (BAD_TAG, BAD_PARAM)),
        (b"/v1/search/files?createdFrom=yesterday" + MARK, (BAD_PARAM,)),
        (b"/v1/" + MARK, (NOT_FOUND,)),
        (b"/v1/files/x/tags/" + b"%00" + MARK, (BAD_TAG, NOT_FOUND, METHOD)),
    ]
):
    case(f"target-{n}", req(b"GET " + target + b" HTTP/1.1", BEARER), *expect)

for n, bad_id in enumerate(
    [b"%00" + MARK, b"-lead" + MARK, b"i" * 300, b"%C3%A9" + MARK, b"a%20b" + MARK, b".hidden"]
):
    case(f"put-id-{n}", req(b"PUT /v1/files/" + bad_id + b" HTTP/1.1", BEARER, body=b"x"), BAD_ID)
    case(
        f"delete-id-{n}",
        req(b"DELETE /v1/files/" + bad_id + b" HTTP/1.1", BEARER),
        BAD_ID,
        NOT_FOUND,
    )

# --- names: ?name= and Content-Disposition ----------------------------------------------------

NAMES = [
    b"..%2F" + MARK,
    b"a%2Fb" + MARK,
    b"a%5Cb" + MARK,
    b"a%00" + MARK,
    b"%01" + MARK,
    b"%E2%80%AE" + MARK,
    b"%FF" + MARK,
    b"n" * 300 + MARK,
    b".",
    b"..",
    b"%0A" + MARK,
    b"%7F" + MARK,
]
for n, name in enumerate(NAMES):
    case(
        f"name-query-{n}",
        req(b"POST /v1/files?name=" + name + b" HTTP/1.1", BEARER, body=b"x"),
        BAD_NAME,
        BAD_PARAM,
    )
    case(
        f"name-disposition-{n}",
        req(POST, BEARER, b"Content-Disposition: attachment; filename*=UTF-8''" + name, body=b"x"),
        BAD_NAME,
    )
for n, disposition in enumerate(
    [
        b'attachment; filename="unterminated' + MARK,
        b"attachment; filename*=latin1''" + MARK,
        b"attachment; filename*=UTF-8'" + MARK,
        b'attachment; filename="a/b' + MARK + b'"',
        b'attachment; filename="' + b"d" * 300 + MARK + b'"',
        b'attachment; filename="\\\\' + MARK + b'\\"',
    ]
):
    case(
        f"disposition-{n}",
        req(POST, BEARER, b"Content-Disposition: " + disposition, body=b"x"),
        BAD_NAME,
    )


# --- multipart --------------------------------------------------------------------------------


def form(body: bytes, boundary: bytes = b"XB") -> bytes:
    return req(POST, BEARER, b"Content-Type: multipart/form-data; boundary=" + boundary, body=body)


PART = b'Content-Disposition: form-data; name="file"; filename="f.txt"'
for n, body in enumerate(
    [
        b"--XB\r\n" + PART[:-1] + b"\x00" + MARK + b'"\r\n\r\nx\r\n--XB--\r\n',
        b"--XB\r\n" + PART[:-7] + b"n" * 10_000 + MARK + b'"\r\n\r\nx\r\n--XB--\r\n',
        b"--XB\r\n" + PART + b"\r\nno colon " + MARK + b"\r\n\r\nx\r\n--XB--\r\n",
        b"--XB\r\n" + PART + b"\r\n" + MARK,
        b"--XB\r\n"
        + PART
        + b"\r\n\r\nfirst\r\n--XB\r\n"
        + PART
        + b"\r\n\r\n"
        + MARK
        + b"\r\n--XB--\r\n",
        b'--XB\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
        + b"f" * 70_000
        + MARK
        + b"\r\n--XB--\r\n",
        b'--XB\r\nContent-Disposition: form-data; name="note"\r\n\r\nonly a field '
        + MARK
        + b"\r\n--XB--\r\n",
        b"--OTHER\r\n" + PART + b"\r\n\r\n" + MARK + b"\r\n--OTHER--\r\n",
        b"--XB\r\n"
        + b'Content-Disposition: form-data; name="file"; filename="../../'
        + MARK
        + b'"'
        + b"\r\n\r\nx\r\n--XB--\r\n",
        b"--XB\r\nContent-Type: multipart/mixed; boundary=IN\r\n"
        + b'Content-Disposition: form-data; name="file"\r\n\r\n--IN\r\n\r\n'
        + MARK
        + b"\r\n--IN--\r\n--XB--\r\n",
    ]
):
    case(f"multipart-{n}", form(body), BAD_FORM, BAD_NAME)
case(
    "multipart-unterminated-disposition",
    form(
        b'--XB\r\nContent-Disposition: form-data; name="file"; filename="'
        + MARK
        + b"\r\n\r\nx\r\n--XB--\r\n"
    ),
    BAD_FORM,
    BAD_NAME,
)
for route in (b"POST /nope", b"POST /healthz", b"DELETE /v1/files"):
    case(
        f"expect-elsewhere-{route.decode()}",
        req(route + b" HTTP/1.1", BEARER, b"Expect: x-" + MARK, body=b"x"),
        (417, "expectation_failed"),
    )
case(
    "multipart-no-boundary",
    req(POST, BEARER, b"Content-Type: multipart/form-data", body=MARK),
    BAD_FORM,
)
case(
    "multipart-long-boundary",
    form(b"--" + b"B" * 100 + b"\r\n" + MARK, boundary=b"B" * 100),
    BAD_FORM,
)
case(
    "multipart-empty",
    req(
        POST,
        BEARER,
        b"Content-Type: multipart/form-data; boundary=XB",
        b"Content-Length: 0",
        length=False,
    ),
    BAD_FORM,
)

# --- media types, expectations, digests -------------------------------------------------------

for n, media in enumerate(
    [b"text", b"/", b"a/b/c", b"text/" + MARK + b"\x01", b"application/x-www-form-urlencoded"]
):
    case(
        f"media-type-{n}",
        req(POST, BEARER, b"Content-Type: " + media, body=b"x" + MARK),
        MEDIA,
        MALFORMED,  # a control character: the parser's refusal
    )
for n, expect in enumerate([b"200-ok", b"100-continue, " + MARK, b"nothing", b"\x01"]):
    case(
        f"expect-{n}",
        req(POST, BEARER, b"Expect: " + expect, body=b"x"),
        (417, "expectation_failed"),
        MALFORMED,
    )
GOOD = base64.b64encode(bytes(32))
for n, digest in enumerate(
    [
        b"sha-256=" + MARK,
        b"sha-256=:" + base64.b64encode(bytes(31)) + b":",
        b"sha-256=:not*base64" + MARK + b":",
        b"sha-256=:" + GOOD + b":, sha-256=:" + base64.b64encode(b"\x01" * 32) + b":",
        b"sha-256=:" + GOOD + b":",  # well formed, but not the body's digest
    ]
):
    expect = (400, "digest_mismatch") if n == 4 else BAD_DIGEST
    case(f"digest-{n}", req(POST, BEARER, b"Content-Digest: " + digest, body=b"x" + MARK), expect)

# --- credentials ------------------------------------------------------------------------------

NONE_JWT = (
    base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    + b"."
    + base64.urlsafe_b64encode(b'{"sub":"' + MARK + b'","scope":"admin"}').rstrip(b"=")
    + b"."
)
for n, authorization in enumerate(
    [
        b"Bearer",
        b"Bearer ",
        b"Bearer " + KEY[:-1] + b"X",
        b"Bearer " + KEY + MARK,
        b"Basic " + base64.b64encode(b"alice:" + KEY),
        b"Bearer a.b." + MARK,
        b"Bearer " + NONE_JWT,
        b"Token " + KEY,
        b"Bearer " + MARK * 100,
        b"Bearer \xff" + MARK,
    ]
):
    for route, line in (
        ("list", b"GET /v1/files HTTP/1.1"),
        ("admin", b"GET /v1/admin/clients HTTP/1.1"),
    ):
        case(f"credentials-{n}-{route}", req(line, b"Authorization: " + authorization), UNAUTH)
case("credentials-none-upload", req(POST, body=b"x" + MARK), UNAUTH)
case(
    "credentials-participant-on-admin",
    req(b"GET /v1/admin/clients HTTP/1.1", BEARER),
    (403, "forbidden"),
)
case(
    "credentials-participant-on-audit",
    req(b"GET /v1/audit?subject=" + MARK + b" HTTP/1.1", BEARER),
    (403, "forbidden"),
)

# --- JSON bodies ------------------------------------------------------------------------------

JSON_TYPE = b"Content-Type: application/json"
for n, (body, expect) in enumerate(
    [
        (b"{" + MARK, (BAD_JSON,)),
        (b"[" * 100_000, (BAD_JSON, TOO_LARGE)),
        (b'{"a": "' + b"x" * 70_000 + MARK + b'"}', (TOO_LARGE,)),
        (b"\xff\xfe" + MARK, (BAD_JSON,)),
        (b'{"name": "' + MARK + b'"', (BAD_JSON,)),
        (b"", (BAD_JSON,)),
    ]
):
    case(f"json-tag-{n}", req(b"POST /v1/tags HTTP/1.1", BEARER, JSON_TYPE, body=body), *expect)
case(
    "json-tag-wrong-type",
    req(b"POST /v1/tags HTTP/1.1", BEARER, b"Content-Type: text/plain", body=b"{}"),
    MEDIA,
)
for n, tag in enumerate(
    [b"%00" + MARK, b"a%2Fb" + MARK, b"t" * 300, b"%20" + MARK, b"%E2%80%AE" + MARK]
):
    case(f"tag-path-{n}", req(b"DELETE /v1/tags/" + tag + b" HTTP/1.1", BEARER), BAD_TAG, NOT_FOUND)

# --- ranges (on a file the module uploads first) ----------------------------------------------

RANGES = [b"bytes=99999-", b"bytes=5000-6000", b"bytes=-0"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, clamd: Any) -> Iterator[Live]:
    yield from start_live(tmp_path_factory.mktemp("hostile"), clamd.address)


@pytest.fixture(scope="module")
def baseline(live: Live) -> dict[str, Any]:
    """One stored file (for the range cases), and what the buckets hold with it."""
    answer = exchange(live.port, req(POST, BEARER, body=b"the only stored file"))
    assert answer.status == 201, answer.raw[:300]
    stored = live.stored()
    assert any(key.startswith("permanent/sha256/") for key in stored)  # the check can fail
    return {"id": json.loads(answer.body)["id"], "stored": stored}


def test_there_are_at_least_200_cases() -> None:
    assert len(CASES) + len(RANGES) >= 200
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("hostile", CASES, ids=[c.id for c in CASES])
def test_hostile_request_is_a_clear_refusal(live: Live, baseline: Any, hostile: Case) -> None:
    answer = exchange(live.port, hostile.request, timeout=15)
    _assert_clear(answer, hostile.expect)


@pytest.mark.parametrize("value", RANGES)
def test_an_unsatisfiable_range_is_416(live: Live, baseline: Any, value: bytes) -> None:
    line = b"GET /v1/files/" + baseline["id"].encode() + b" HTTP/1.1"
    answer = exchange(live.port, req(line, BEARER, b"Range: " + value))
    _assert_clear(answer, frozenset({(416, "range_not_satisfiable")}))


def _assert_clear(answer: Any, expect: frozenset[tuple[int, str]]) -> None:
    assert 400 <= answer.status < 500, answer.raw[:600]
    problem = answer.problem
    assert (answer.status, problem["code"]) in expect, (answer.status, problem["code"])
    assert problem["status"] == answer.status
    assert MARK.lower() not in answer.raw.lower()
    assert KEY not in answer.raw


def test_after_the_suite_nothing_is_stored_the_server_is_healthy_and_the_log_is_clean(
    live: Live, baseline: Any
) -> None:
    # (Runs last in this module: pytest keeps definition order.)
    assert live.stored() == baseline["stored"]
    assert live.healthy("/readyz")
    text = live.log.read_text()
    for line in text.splitlines():
        json.loads(line)
    assert ALICE_KEY not in text
    assert MARK.decode().lower() not in text.lower()
