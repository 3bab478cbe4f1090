"""The API contract: an OpenAPI 3.1 document of every route, served at ``/openapi.json``.

Built here from the same constants the handlers use (page sizes, id and tag rules, the
error codes of ``fileshare.errors``), so that the description cannot drift from them; a
test checks that every route of the app is in it and every operation in it is routed.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

from fileshare.api import docs, params
from fileshare.api.names import MAX_NAME_BYTES
from fileshare.api.problem_types import problem_types
from fileshare.audit import Action, Result
from fileshare.auth.issuer import GRANT_CLIENT_CREDENTIALS, JWT_BEARER, OAUTH_ERRORS
from fileshare.auth.principal import Role
from fileshare.auth.registry import CLIENT_ID, MAX_KEY_LIFETIME
from fileshare.index.tables import FILE_ID_MAX, TAG_MAX
from fileshare.service import MAX_TAGS_PER_FILE
from fileshare.upload_policy import MAX_TYPE_LENGTH, MAX_TYPES, TYPE_ENTRY

JSON = "application/json"
PROBLEM = "application/problem+json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> Schema:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


def _json(description: str, schema: Schema, **extra: Any) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def error_codes() -> list[str]:
    """Every stable ``code`` the service answers with (the error hierarchy's, and the two
    of the framework's own errors)."""
    return list(problem_types())


def _merge_patch(ref: str) -> Schema:
    """An RFC 7396 merge patch body, also taken as plain JSON."""
    return {
        "required": True,
        "content": {
            media: {"schema": _ref(ref)} for media in ("application/merge-patch+json", JSON)
        },
    }


def _header(description: str, schema: Schema | None = None) -> Schema:
    # Required: the e2e tests' validator then fails an answer that lacks one.
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


_ERRORS = {
    "400": _problem("A bad request: see `code` and `detail`"),
    "401": _problem("Missing or invalid credentials")
    | {"headers": {"WWW-Authenticate": _header("The scheme to use: Bearer")}},
    "403": _problem("The credentials lack the route's scope, or a grant is read-only"),
    "404": _problem("No such file (or another owner's: never 403)"),
    "503": _problem("A dependency failed (scanner, storage, index); retry after Retry-After")
    | {"headers": {"Retry-After": _header("Seconds", {"type": "integer", "minimum": 0})}},
}
_LOCATION = {"Location": _header("The record's URL", {"type": "string", "format": "uri"})}
_ETAG = {
    "ETag": _header(
        "The quoted sha256 of the content", {"type": "string", "pattern": '^"[0-9a-f]{64}"$'}
    )
}


def _errors(*statuses: str) -> dict[str, Schema]:
    base = {k: _ERRORS[k] for k in ("400", "401", "403", "503")}
    extra = {
        "404": _ERRORS["404"],
        "409": _problem(
            "The file's content is not available, or not scanned yet (a direct upload's), or "
            "a concurrent change"
        ),
        "412": _problem("If-Match / If-None-Match did not hold"),
        "413": _problem("Over the size limit"),
        "415": _problem("Unsupported media type or content encoding"),
        "416": _problem("Range not satisfiable")
        | {
            "headers": {
                "Content-Range": _header("`bytes */<size>`", {"pattern": r"^bytes \*/\d+$"})
            }
        },
        "422": _problem("Infected, or a JSON body of the wrong shape"),
    }
    return base | {s: extra[s] for s in statuses}


@functools.cache
def _format_characters() -> str:
    """The Basic Multilingual Plane's format characters (Unicode category Cf: bidi overrides,
    zero-width marks) as regex class ranges. The BMP only: ``\\uXXXX`` is understood by every
    regex dialect, and the few format characters beyond it are refused by the server all
    the same."""
    ranges: list[list[int]] = []
    for c in range(0x10000):
        if unicodedata.category(chr(c)) == "Cf":
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


def name_schema() -> Schema:
    """A file name as ``api.names.validate_name`` takes it (lone surrogates, which it refuses
    too, cannot be written in a pattern that every regex engine compiles)."""
    forbidden = "\\x00-\\x1f\\x7f-\\x9f/\\\\\\ufffd" + _format_characters()
    return {
        "type": "string",
        "description": (
            f"At most {MAX_NAME_BYTES} bytes of UTF-8; not blank, `.` or `..`; no `/`, `\\`, "
            "control or invisible formatting characters"
        ),
        "maxLength": MAX_NAME_BYTES,
        "pattern": rf"^(?!\s*$)(?!\.\.?$)[^{forbidden}]+$",
    }


def tag_schema() -> Schema:
    """A tag as ``api.params.tag`` takes it (before NFC normalisation). ``\\w`` is read as
    Unicode, as Python and Rust read it: letters and digits of any script."""
    return {
        "type": "string",
        "description": "Letters and digits of any script and `_ - . : @ +`, a letter or digit "
        "at least",
        "maxLength": TAG_MAX,
        # "One letter or digit" without a lookahead, which slows generators down twentyfold.
        "pattern": r"^[\w.:@+-]*[^\W_][\w.:@+-]*$",
    }


def _query(name: str, description: str, schema: Schema, **extra: Any) -> Schema:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


#: A time without an offset is UTC; a date is its midnight, UTC.
_TIME = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]}
_LIST_PARAMETERS = [
    _query(
        "offsetKey",
        "`nextOffsetKey` of the previous page, as it came (nothing else is one)",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    ),
    _query(
        "pageSize",
        "Files per page",
        {
            "type": "integer",
            "minimum": params.PAGE_SIZE_MIN,
            "maximum": params.PAGE_SIZE_MAX,
            "default": params.PAGE_SIZE_DEFAULT,
        },
    ),
    _query("name", "Exactly this name", name_schema()),
    _query(
        "contentType",
        "`type/subtype`, or `type/*`",
        {"type": "string", "pattern": f"^{params.MEDIA_FILTER.pattern}$"},
    ),
    _query("from", "Created at or after (RFC 3339 or a date)", _TIME),
    _query("to", "Created before (RFC 3339 or a date)", _TIME),
]
_SEARCH_PARAMETERS = [
    *_LIST_PARAMETERS,
    _query(
        "tag",
        "Carries this tag, exactly (repeat for all of several)",
        {"type": "array", "items": tag_schema(), "maxItems": params.MAX_TAGS_PER_QUERY},
        style="form",
        explode=True,
    ),
    _query(
        "tagLike",
        "Carries a tag matching this (`%`: any run; case-insensitive)",
        {"type": "string", "pattern": rf"^[\w.:@+%-]{{1,{TAG_MAX}}}$"},
    ),
    _query("present", "Only files whose content is clean and stored (or not)", {"type": "boolean"}),
]
_OWNER = _query(
    "owner",
    "Whose files: a participant a worker serves or a researcher is granted (default: your own)."
    " An owner you may not reach is 404, as if it had no files.",
    {"type": "string", "pattern": f"^{params.OWNER.pattern}$", "maxLength": 255},
)
_UPLOAD_NAME = _query("name", "The file's name (or send it in Content-Disposition)", name_schema())
_FILE_ID = {
    "name": "fileId",
    "in": "path",
    "required": True,
    # Anchored: a JSON Schema pattern matches anywhere in the string, unless told not to.
    "schema": {
        "type": "string",
        "pattern": f"^{params.FILE_ID.pattern}$",
        "maxLength": FILE_ID_MAX,
    },
}
_TAG = {
    "name": "tag",
    "in": "path",
    "required": True,
    "schema": tag_schema(),
}


def _header_parameter(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "header",
        "description": description,
        "schema": schema or {"type": "string"},
    }


_UPLOAD_PARAMETERS = [
    _UPLOAD_NAME,
    _header_parameter("Content-Disposition", "`attachment; filename*=UTF-8''…`: the file's name"),
    _header_parameter(
        "Content-Digest",
        "RFC 9530 `sha-256=:<base64>:`: a body that does not match is refused, and content "
        "already held is not stored or scanned again",
    ),
    _header_parameter("Repr-Digest", "As Content-Digest (the same thing for an unencoded body)"),
]
_PUT_PARAMETERS = [
    *_UPLOAD_PARAMETERS,
    _header_parameter("If-Match", "Replace only this version: the ETag last seen"),
    _header_parameter("If-None-Match", "Create only, never replace", {"const": "*"}),
]
_DOWNLOAD_PARAMETERS = [
    _query(
        "redirect",
        "`true`: answer 302 to a short-lived presigned GET of the object (where the store "
        "can sign one), `false`: stream it through fileshare; default: the deployment's "
        "FILESHARE_DOWNLOAD_REDIRECT",
        {"type": "string", "enum": ["true", "false"]},
    ),
    _header_parameter("Range", "One byte range, `bytes=first-last` (others: the whole file)"),
    _header_parameter("If-Range", "Honour Range only if the ETag still is this one"),
    _header_parameter("If-None-Match", "`304` if the ETag is one of these"),
]
_DOWNLOAD_HEADERS = _ETAG | {
    "Accept-Ranges": _header("`bytes`", {"const": "bytes"}),
    "Content-Disposition": _header("`attachment`, with the file's name when it has one"),
    "X-Content-Type-Options": _header("`nosniff`", {"const": "nosniff"}),
}
#: Raw bytes of any type: OpenAPI 3.1 describes them with no schema at all.
_BYTES: Schema = {"*/*": {}}
_RANGE = {"Content-Range": _header("`bytes first-last/size`", {"pattern": r"^bytes \d+-\d+/\d+$"})}


def _download(head: bool) -> Schema:
    content = {} if head else {"content": _BYTES}
    return {
        "200": {"description": "The bytes", "headers": _DOWNLOAD_HEADERS, **content},
        "206": {"description": "A byte range", "headers": _DOWNLOAD_HEADERS | _RANGE, **content},
        "302": {
            "description": "The bytes are at Location, a presigned GET valid for a few minutes",
            "headers": {"Location": _header("The presigned URL", {"type": "string"})},
        },
        "304": {"description": "Not modified", "headers": _ETAG},
        **_errors("404", "409", "416"),
    }


_UPLOAD_BODY = {
    # No body is a file of zero bytes, and is stored as one.
    "required": False,
    "description": (
        "The file as the raw body (name from `?name=` or Content-Disposition), or "
        "multipart/form-data with exactly one file part. Streamed, never read whole. Any "
        "media type but the form encoding application/x-www-form-urlencoded (415)."
    ),
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "*/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _schemas() -> dict[str, Schema]:
    stamp = {"type": "string", "format": "date-time"}
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string", "enum": error_codes()},
                "instance": {"type": "string"},
                "requestId": {"type": "string"},
                "signature": {"type": "string"},
                "quarantined": {
                    "type": "boolean",
                    "description": "The refused bytes were kept in quarantine for an "
                    "administrator (never served to anyone else)",
                },
                "quarantineId": {"type": "string"},
                "state": {"type": "string", "description": "A release's new verdict"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "checks", "protection"],
            "properties": {
                "status": {"enum": ["ready", "not ready"]},
                "checks": {
                    "type": "object",
                    "description": "Each dependency: `ok`, `failing: …` or `degraded: …`; "
                    "`server: draining` while shutting down",
                    "additionalProperties": {"type": "string"},
                },
                "protection": {
                    "type": "object",
                    "description": "How stored bytes and connections are protected",
                    "required": ["atRest", "verified", "plaintext"],
                    "additionalProperties": False,
                    "properties": {
                        "atRest": {
                            "type": "string",
                            "description": "The encryption asked for on every write "
                            "(`FILESHARE_STORAGE_ENCRYPTION`)",
                        },
                        "verified": {
                            "type": ["boolean", "null"],
                            "description": "Whether the start-up probe confirmed it (null before "
                            "it ran); what it found is in the start-up log and `check-config`",
                        },
                        "plaintext": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "enum": ["storage", "index", "clamd", "jwks"],
                            },
                            "description": "Dependencies reached without TLS outside loopback "
                            "(allowed by `FILESHARE_PLAINTEXT_HOSTS`)",
                        },
                    },
                },
            },
        },
        "Attachment": {
            "type": "object",
            "description": "A FHIR R4 Attachment; `url` only when the content is present",
            "required": ["contentType", "size", "hash", "creation"],
            "properties": {
                "contentType": {"type": "string"},
                "url": {"type": "string", "format": "uri"},
                "size": {"type": "integer"},
                "hash": {"type": "string", "description": "base64 of the SHA-1"},
                "title": {"type": "string"},
                "creation": stamp,
            },
        },
        "File": {
            "type": "object",
            "required": [
                "id",
                "name",
                "contentType",
                "size",
                "sha256",
                "created",
                "updated",
                "state",
                "present",
                "tags",
                "metadata",
                "attachment",
            ],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": ["string", "null"]},
                "contentType": {"type": "string"},
                "size": {"type": "integer"},
                "sha256": {"type": "string"},
                "created": stamp,
                "updated": stamp,
                "state": {
                    "type": "string",
                    "enum": ["pending", "clean", "infected", "unscannable", "failed"],
                },
                "present": {"type": "boolean"},
                "signature": {"type": "string"},
                "createdBy": {
                    "type": "string",
                    "description": "The subject that created the record (absent for records "
                    "of the first releases)",
                },
                "tags": {"type": "array", "items": {"type": "string"}},
                "metadata": {"type": "object", "additionalProperties": True},
                "url": {"type": "string", "format": "uri"},
                "attachment": _ref("Attachment"),
            },
        },
        "FilePage": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": _ref("File")},
                "nextOffsetKey": {"type": "string"},
            },
        },
        "FilePatch": {
            "type": "object",
            "description": "RFC 7396 merge patch",
            "additionalProperties": False,
            "properties": {
                "name": name_schema() | {"type": ["string", "null"]},
                "metadata": {"type": ["object", "null"], "additionalProperties": True},
                "tags": {
                    "type": ["array", "null"],
                    "items": tag_schema(),
                    "maxItems": MAX_TAGS_PER_FILE,
                },
            },
        },
        "Tag": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": tag_schema(), "created": stamp},
        },
        "TagPage": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": _ref("Tag")},
                "nextOffsetKey": {"type": "string"},
            },
        },
    }


def _doc_paths(public: list[dict[str, list[str]]]) -> dict[str, Schema]:
    """The pages for people (``api.docs``)."""
    page = {"content": {"text/html": {"schema": {"type": "string"}}}}
    missing = _problem("No such asset or problem type")
    return {
        docs.DOCS_PATH: {
            "get": {
                "summary": "This document, rendered by Swagger UI (served here, no CDN)",
                "security": public,
                "responses": {"200": {"description": "An HTML page", **page}},
            }
        },
        docs.STATIC_PATH + "{asset}": {
            "get": {
                "summary": "A static file of the docs page (Swagger UI's distribution)",
                "security": public,
                "parameters": [
                    {
                        "name": "asset",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": docs.ASSETS},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file (cached for a day, then revalidated)",
                        "content": {
                            t: {"schema": {"type": "string"}}
                            for t in ("text/javascript", "text/css", "image/png")
                        },
                    },
                    "304": {"description": "Not modified"},
                    "404": missing,
                },
            }
        },
        "/problems/{code}": {
            "get": {
                "summary": "What a problem `type` means: the page each problem's `type` URI is",
                "security": public,
                "parameters": [
                    {
                        "name": "code",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": error_codes()},
                    }
                ],
                "responses": {
                    "200": {"description": "An HTML page: title, status, explanation", **page},
                    "404": missing,
                },
            }
        },
    }


def _oauth_schemas() -> dict[str, Schema]:
    string = {"type": "string"}
    strings = {"type": "array", "items": string}
    return {
        "TokenRequest": {
            "type": "object",
            "description": "RFC 6749 §4.4 client credentials; authenticate with HTTP Basic "
            "(client_secret_basic), client_id + client_secret (client_secret_post) or "
            "client_assertion_type + client_assertion (private_key_jwt, RFC 7523): one only",
            "required": ["grant_type"],
            "properties": {
                "grant_type": {"const": GRANT_CLIENT_CREDENTIALS},
                "scope": {"type": "string", "description": "Space-separated; narrows the grant"},
                "client_id": string,
                "client_secret": string,
                "client_assertion_type": {"const": JWT_BEARER},
                "client_assertion": string,
            },
        },
        "TokenResponse": {
            "type": "object",
            "description": "RFC 6749 §5.1; the token is an ES256 JWT",
            "required": ["access_token", "token_type", "expires_in", "scope"],
            "properties": {
                "access_token": string,
                "token_type": {"const": "Bearer"},
                "expires_in": {"type": "integer", "minimum": 1},
                "scope": string,
            },
        },
        "OAuthError": {
            "type": "object",
            "description": "RFC 6749 §5.2",
            "required": ["error", "error_description"],
            "properties": {
                "error": {"enum": list(OAUTH_ERRORS)},
                "error_description": string,
            },
        },
        "JwkSet": {
            "type": "object",
            "description": "RFC 7517: the public keys fileshare's tokens are signed with",
            "required": ["keys"],
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["kty", "kid", "alg", "use", "crv", "x", "y"],
                        "properties": {
                            "kty": {"const": "EC"},
                            "crv": {"const": "P-256"},
                            "kid": string,
                            "alg": {"const": "ES256"},
                            "use": {"const": "sig"},
                            "x": string,
                            "y": string,
                        },
                    },
                }
            },
        },
        "AuthorizationServerMetadata": {
            "type": "object",
            "description": "RFC 8414 §2",
            "required": [
                "issuer",
                "token_endpoint",
                "jwks_uri",
                "grant_types_supported",
                "response_types_supported",
                "token_endpoint_auth_methods_supported",
                "token_endpoint_auth_signing_alg_values_supported",
                "scopes_supported",
            ],
            "properties": {
                "issuer": {"type": "string", "format": "uri"},
                "token_endpoint": {"type": "string", "format": "uri"},
                "jwks_uri": {"type": "string", "format": "uri"},
                "grant_types_supported": strings,
                "response_types_supported": {**strings, "maxItems": 0},
                "token_endpoint_auth_methods_supported": strings,
                "token_endpoint_auth_signing_alg_values_supported": strings,
                "scopes_supported": strings,
                "service_documentation": {"type": "string", "format": "uri"},
            },
        },
    }


def _oauth_paths() -> dict[str, Schema]:
    """fileshare's own token endpoint (``api.oauth``): RFC 6749 JSON, not problem+json,
    except for a failing dependency (503)."""
    public: list[dict[str, list[str]]] = []
    no_store = {
        "Cache-Control": _header("`no-store`", {"const": "no-store"}),
        "Pragma": _header("`no-cache`", {"const": "no-cache"}),
    }
    oauth_error = _ref("OAuthError")
    return {
        "/oauth/token": {
            "post": {
                "summary": "A token for a client (client credentials grant)",
                "security": [{"clientBasic": []}, {}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": _ref("TokenRequest")}
                    },
                },
                "responses": {
                    "200": _json("The token", _ref("TokenResponse"), headers=no_store),
                    "400": _json(
                        "invalid_request, unsupported_grant_type, invalid_scope, "
                        "unauthorized_client",
                        oauth_error,
                        headers=no_store,
                    ),
                    "401": _json(
                        "invalid_client: the client could not be authenticated",
                        oauth_error,
                        headers=no_store
                        | {"WWW-Authenticate": _header('`Basic realm="fileshare"`')},
                    ),
                    "503": _ERRORS["503"],
                },
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "The keys fileshare's tokens are signed with (JWK Set)",
                "security": public,
                "responses": {
                    "200": _json("The published keys", _ref("JwkSet")),
                    "503": _ERRORS["503"],
                },
            }
        },
        "/.well-known/oauth-authorization-server": {
            "get": {
                "summary": "Authorization server metadata (RFC 8414)",
                "security": public,
                "responses": {"200": _json("The metadata", _ref("AuthorizationServerMetadata"))},
            }
        },
    }


def _paths() -> dict[str, Schema]:
    file = _json("The file's record", _ref("File"), headers=_ETAG)
    public: list[dict[str, list[str]]] = []
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "security": public,
                "responses": {"200": _json("Alive", _ref("Health"))},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness (clamd, storage, index)",
                "security": public,
                "responses": {
                    "200": _json("Ready", _ref("Readiness")),
                    "503": _json("Not ready, or draining", _ref("Readiness")),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": public,
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": public,
                "responses": {
                    "200": _json("OpenAPI 3.1", {"type": "object", "additionalProperties": True})
                },
            }
        },
        **_doc_paths(public),
        "/v1/files": {
            "parameters": [_OWNER],
            "post": {
                "summary": "Upload a file (the server chooses the id)",
                "parameters": _UPLOAD_PARAMETERS,
                "requestBody": _UPLOAD_BODY,
                "responses": {
                    "201": _json("A new record", _ref("File"), headers=_LOCATION | _ETAG),
                    "200": _json(
                        "Your retried identical upload", _ref("File"), headers=_LOCATION | _ETAG
                    ),
                    **_errors("404", "413", "415", "422"),
                },
            },
            "get": {
                "summary": "Your files, oldest first",
                "parameters": _LIST_PARAMETERS,
                "responses": {"200": _json("A page", _ref("FilePage")), **_errors("404")},
            },
        },
        "/v1/search/files": {
            "parameters": [_OWNER],
            "get": {
                "summary": "Search your files by tag, name, type, time, presence",
                "parameters": _SEARCH_PARAMETERS,
                "responses": {"200": _json("A page", _ref("FilePage")), **_errors("404")},
            },
        },
        "/v1/files/{fileId}": {
            "parameters": [_FILE_ID, _OWNER],
            "put": {
                "summary": "Create or replace the file under your id",
                "parameters": _PUT_PARAMETERS,
                "requestBody": _UPLOAD_BODY,
                "responses": {
                    "201": _json("Created", _ref("File"), headers=_LOCATION | _ETAG),
                    "200": _json("Replaced", _ref("File"), headers=_LOCATION | _ETAG),
                    **_errors("404", "412", "413", "415", "422"),
                },
            },
            "get": {
                "summary": "Download (Range, If-None-Match, If-Range)",
                "parameters": _DOWNLOAD_PARAMETERS,
                "responses": _download(head=False),
            },
            "head": {
                "summary": "Headers of a download",
                "parameters": _DOWNLOAD_PARAMETERS,
                "responses": _download(head=True),
            },
            "patch": {
                "summary": "Merge patch of name, metadata and tags",
                "requestBody": _merge_patch("FilePatch"),
                "responses": {"200": file, **_errors("404", "409", "413", "415", "422")},
            },
            "delete": {
                "summary": "Delete physically (the bytes once no record uses them)",
                "responses": {"204": {"description": "Deleted"}, **_errors("404")},
            },
        },
        "/v1/files/{fileId}/metadata": {
            "parameters": [_FILE_ID, _OWNER],
            "get": {"summary": "The record", "responses": {"200": file, **_errors("404", "409")}},
        },
        "/v1/files/{fileId}/tags/{tag}": {
            "parameters": [_FILE_ID, _TAG, _OWNER],
            "put": {
                "summary": "Put a tag on the file",
                "responses": {"200": file, **_errors("404", "409", "422")},
            },
            "delete": {
                "summary": "Take a tag off the file",
                "responses": {"200": file, **_errors("404", "409")},
            },
        },
        "/v1/tags": {
            "parameters": [_OWNER],
            "post": {
                "summary": "Add a tag to your vocabulary",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": tag_schema()},
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json("Added", _ref("Tag"), headers=_LOCATION),
                    "200": _json("Was there", _ref("Tag"), headers=_LOCATION),
                    **_errors("404", "413", "415", "422"),
                },
            },
            "get": {
                "summary": "Your tags, by name",
                "parameters": _LIST_PARAMETERS[:2],
                "responses": {"200": _json("A page", _ref("TagPage")), **_errors("404")},
            },
        },
        "/v1/tags/{tag}": {
            "parameters": [_TAG, _OWNER],
            "delete": {
                "summary": "Remove a tag from your vocabulary and every file",
                "responses": {"204": {"description": "Removed"}, **_errors("404")},
            },
        },
    }


#: A client id, grantee or owner as the registry takes it (``auth.registry.CLIENT_ID``).
_CLIENT_ID: Schema = {"type": "string", "pattern": f"^{CLIENT_ID.pattern}$"}


def _admin_schemas() -> dict[str, Schema]:
    stamp = {"type": "string", "format": "date-time"}
    client = {
        "type": "object",
        "required": [
            "id",
            "role",
            "scopes",
            "owner",
            "created",
            "hasSecret",
            "hasJwks",
            "active",
            "allowedTypes",
            "unscannable",
        ],
        "properties": {
            "id": {"type": "string"},
            "role": {"type": "string", "enum": [r.value for r in Role]},
            "scopes": {"type": "string", "description": "Space-separated"},
            "owner": {"type": "string", "description": "The namespace of its own files"},
            "created": stamp,
            "revoked": stamp,
            "hasSecret": {"type": "boolean"},
            "hasJwks": {"type": "boolean"},
            "active": {"type": "boolean"},
            "allowedTypes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "What it may upload, beside FILESHARE_ALLOWED_TYPES; empty: "
                "whatever the deployment accepts",
            },
            "unscannable": {
                "type": ["string", "null"],
                "enum": ["reject", "quarantine", None],
                "description": "What its unscannable uploads become; null: the deployment's "
                "FILESHARE_UNSCANNABLE",
            },
            "clientSecret": {"type": "string", "description": "Only when created; shown once"},
        },
    }
    policy: dict[str, Schema] = {
        "allowedTypes": {
            "type": ["array", "null"],
            "maxItems": MAX_TYPES,
            "items": {"type": "string", "maxLength": MAX_TYPE_LENGTH, "pattern": f"^{TYPE_ENTRY}$"},
            "description": "Media types or type/* patterns the client may upload, checked "
            "after FILESHARE_ALLOWED_TYPES (a type must pass both); null or []: whatever the "
            "deployment accepts. Refused: 415 type_not_allowed",
        },
        "unscannable": {
            "type": ["string", "null"],
            "enum": ["reject", "quarantine", None],
            "description": "What its unscannable uploads become, refused either way: reject "
            "(thrown away) or quarantine (kept for the administrators; needs a quarantine "
            "bucket); null: the deployment's FILESHARE_UNSCANNABLE",
        },
    }
    key = {
        "type": "object",
        "required": ["id", "clientId", "created", "active"],
        "properties": {
            "id": {"type": "string"},
            "clientId": {"type": "string"},
            "created": stamp,
            "expires": stamp,
            "revoked": stamp,
            "active": {"type": "boolean"},
            "key": {"type": "string", "description": "Only when created; shown once"},
        },
    }
    grant = {
        "type": "object",
        "required": ["grantee", "owner", "access", "created", "createdBy"],
        "properties": {
            "grantee": {"type": "string"},
            "owner": {"type": "string"},
            "access": {"type": "string", "enum": ["read", "write"]},
            "created": stamp,
            "createdBy": {"type": "string"},
        },
    }

    def items(ref: str) -> Schema:
        return {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": _ref(ref)}},
        }

    return {
        "Client": client,
        "ClientList": items("Client"),
        "NewClient": {
            "type": "object",
            "required": ["id", "role"],
            "additionalProperties": False,
            "properties": {
                "id": _CLIENT_ID,
                "role": {"type": "string", "enum": [r.value for r in Role]},
                # null, as absent: the default
                "scopes": {"type": ["string", "null"], "description": "Default: all of the role's"},
                "owner": _CLIENT_ID
                | {"type": ["string", "null"], "description": "Default: the id"},
                "secret": {"type": "boolean", "description": "Generate a client secret"},
                "jwks": {
                    "type": ["object", "null"],
                    "description": "Public keys for private_key_jwt: a JWK Set of EC or RSA keys",
                    "required": ["keys"],
                    "properties": {
                        "keys": {"type": "array", "minItems": 1, "items": {"type": "object"}}
                    },
                },
            }
            | policy,
        },
        "ClientPolicy": {
            "type": "object",
            "additionalProperties": False,
            "description": "A JSON merge patch: a member given replaces it, null clears it",
            "properties": policy,
        },
        "ApiKey": key,
        "ApiKeyList": items("ApiKey"),
        "NewApiKey": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "expiresIn": {
                    "type": ["integer", "null"],
                    "description": "Seconds (null or absent: the key does not expire)",
                    "minimum": 1,
                    "maximum": int(MAX_KEY_LIFETIME.total_seconds()),
                }
            },
        },
        "Grant": grant,
        "GrantList": items("Grant"),
        "GrantAccess": {
            "type": "object",
            "required": ["access"],
            "additionalProperties": False,
            "properties": {"access": {"type": "string", "enum": ["read", "write"]}},
        },
    }


def _admin_paths() -> dict[str, Schema]:
    def path_param(name: str, schema: Schema | None = None) -> Schema:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "schema": schema or {"type": "string"},
        }

    ident = _CLIENT_ID

    def body(ref: str, required: bool = True) -> Schema:
        return {"required": required, "content": {JSON: {"schema": _ref(ref)}}}

    missing = _problem("No such client, key or grant")
    gone = {"204": {"description": "Done"}, **_errors(), "404": missing}
    tag = ["admin"]
    return {
        "/v1/admin/clients": {
            "get": {
                "tags": tag,
                "summary": "Registered clients",
                "responses": {"200": _json("Clients", _ref("ClientList")), **_errors()},
            },
            "post": {
                "tags": tag,
                "summary": "Register a client (its secret, if asked for, is shown once)",
                "requestBody": body("NewClient"),
                "responses": {
                    "201": _json("Registered", _ref("Client"), headers=_LOCATION),
                    **_errors("409", "413", "415", "422"),
                },
            },
        },
        "/v1/admin/clients/{client_id}": {
            "parameters": [path_param("client_id", ident)],
            "get": {
                "tags": tag,
                "summary": "A client",
                "responses": {
                    "200": _json("The client", _ref("Client")),
                    **_errors(),
                    "404": missing,
                },
            },
            "patch": {
                "tags": tag,
                "summary": "Change what the client's uploads are held to (from its next request)",
                "requestBody": _merge_patch("ClientPolicy"),
                "responses": {
                    "200": _json("The client", _ref("Client")),
                    **_errors("409", "413", "415", "422"),
                    "404": missing,
                },
            },
            "delete": {
                "tags": tag,
                "summary": "Revoke a client and every key of it (at once, on every replica)",
                "responses": gone,
            },
        },
        "/v1/admin/clients/{client_id}/keys": {
            "parameters": [path_param("client_id", ident)],
            "get": {
                "tags": tag,
                "summary": "A client's API keys (never their secrets)",
                "responses": {
                    "200": _json("Keys", _ref("ApiKeyList")),
                    **_errors(),
                    "404": missing,
                },
            },
            "post": {
                "tags": tag,
                "summary": "Make an API key (`fsk_<id>_<secret>`, shown once)",
                "requestBody": body("NewApiKey"),
                "responses": {
                    "201": _json("The key", _ref("ApiKey")),
                    **_errors("413", "415", "422"),
                    "404": missing,
                },
            },
        },
        "/v1/admin/keys/{key_id}": {
            "parameters": [path_param("key_id")],
            "delete": {"tags": tag, "summary": "Revoke an API key", "responses": gone},
        },
        "/v1/admin/grants": {
            "get": {
                "tags": tag,
                "summary": "Grants, optionally of one grantee or owner",
                "parameters": [
                    _query("grantee", "Only this grantee's", {"type": "string"}),
                    _query("owner", "Only those for this owner", {"type": "string"}),
                ],
                "responses": {"200": _json("Grants", _ref("GrantList")), **_errors()},
            }
        },
        "/v1/admin/grants/{grantee}/{owner}": {
            "parameters": [path_param("grantee", ident), path_param("owner", ident)],
            "put": {
                "tags": tag,
                "summary": "Let a grantee read (or read and write) an owner's files",
                "requestBody": body("GrantAccess"),
                "responses": {
                    "200": _json("The grant", _ref("Grant")),
                    **_errors("413", "415", "422"),
                },
            },
            "delete": {"tags": tag, "summary": "Take a grant back", "responses": gone},
        },
    }


def _audit_schemas() -> dict[str, Schema]:
    text = {"type": ["string", "null"]}
    return {
        "AuditRecord": {
            "type": "object",
            "description": "One row of the audit trail: ids, never names, tags or metadata",
            "required": ["seq", "at", "action", "result", "detail", "prevHash", "hash"],
            "properties": {
                "seq": {"type": "integer", "minimum": 1, "description": "Its place in the chain"},
                "at": {"type": "string", "format": "date-time"},
                "action": {"type": "string", "enum": [a.value for a in Action]},
                "result": {"type": "string", "enum": [r.value for r in Result]},
                "subject": text,
                "client": text,
                "role": text,
                "source": {**text, "description": "The client's address"},
                "owner": text,
                "fileId": text,
                "sha256": text,
                "requestId": text,
                "detail": {"type": "object", "additionalProperties": True},
                "prevHash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "hash": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{64}$",
                    "description": "SHA-256 over the row and `prevHash` (`fileshare audit verify`)",
                },
            },
        },
        "AuditPage": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": _ref("AuditRecord")},
                "nextPageToken": {"type": "string"},
            },
        },
        "FhirAuditBundle": {
            "type": "object",
            "description": "A FHIR R4 Bundle (searchset) of AuditEvent resources",
            "required": ["resourceType", "type", "link", "entry"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "type": {"const": "searchset"},
                "timestamp": {"type": "string"},
                "link": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["relation", "url"],
                        "properties": {
                            "relation": {"enum": ["self", "next"]},
                            "url": {"type": "string", "format": "uri"},
                        },
                    },
                },
                "entry": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["fullUrl", "resource", "search"],
                        "properties": {
                            "fullUrl": {"type": "string"},
                            "resource": {
                                "type": "object",
                                "description": "An R4 AuditEvent",
                                "required": ["resourceType", "type", "recorded", "agent", "source"],
                                "properties": {"resourceType": {"const": "AuditEvent"}},
                                "additionalProperties": True,
                            },
                            "search": {"type": "object", "additionalProperties": True},
                        },
                    },
                },
            },
        },
    }


def _audit_paths() -> dict[str, Schema]:
    stamp = _TIME
    return {
        "/v1/audit": {
            "get": {
                "tags": ["audit"],
                "summary": "The audit trail, newest first (scope audit:read); as JSON, or as "
                "a FHIR R4 Bundle of AuditEvents (Accept: application/fhir+json or "
                "?_format=fhir). Every page read is itself audited (audit.read).",
                "parameters": [
                    _query("since", "At or after (RFC 3339 or a date)", stamp),
                    _query("until", "Before (RFC 3339 or a date)", stamp),
                    _query("subject", "Who acted", {"type": "string", "maxLength": 255}),
                    _query(
                        "owner",
                        "Whose files the rows concern",
                        {
                            "type": "string",
                            "pattern": f"^{params.OWNER.pattern}$",
                            "maxLength": 255,
                        },
                    ),
                    _query(
                        "fileId",
                        "Which file (with owner: one owner's file; alone: that id of any owner)",
                        {"type": "string", "pattern": f"^{params.FILE_ID.pattern}$"},
                    ),
                    _query("action", "What was done", {"enum": [a.value for a in Action]}),
                    _query(
                        "pageSize",
                        "Rows per page",
                        {
                            "type": "integer",
                            "minimum": params.PAGE_SIZE_MIN,
                            "maximum": params.PAGE_SIZE_MAX,
                            "default": params.PAGE_SIZE_DEFAULT,
                        },
                    ),
                    _query("pageToken", "`nextPageToken` of the previous page", {"type": "string"}),
                    _query(
                        "_format",
                        "`fhir` (or `application/fhir+json`) for a FHIR Bundle, `json` for JSON",
                        {"enum": ["fhir", "application/fhir+json", "json"]},
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "A page (`Vary: Accept`)",
                        "content": {
                            JSON: {"schema": _ref("AuditPage")},
                            "application/fhir+json": {"schema": _ref("FhirAuditBundle")},
                        },
                    },
                    **_errors(),
                },
            }
        }
    }


def document(base_url: str) -> dict[str, Any]:
    # Here, not at the top: that module builds on this one's helpers.
    from fileshare.api.openapi_quarantine import quarantine_paths, quarantine_schemas
    from fileshare.api.openapi_uploads import upload_paths, upload_schemas
    from fileshare.api.openapi_webhooks import webhook_messages, webhook_paths, webhook_schemas

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fileshare",
            "version": "1",
            "description": (
                "A streaming upload proxy with an antivirus pipeline: files are scanned "
                "with ClamAV before anyone can read them. Errors are RFC 9457 problem+json "
                "with a stable `code`."
            ),
        },
        "servers": [{"url": base_url}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "clientBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "client_secret_basic at the token endpoint (RFC 6749 "
                    "§2.3.1): id and secret, each form-urlencoded first",
                },
            },
            "schemas": _schemas()
            | upload_schemas()
            | _oauth_schemas()
            | _admin_schemas()
            | _audit_schemas()
            | webhook_schemas()
            | quarantine_schemas(),
        },
        "paths": _paths()
        | upload_paths()
        | _oauth_paths()
        | _admin_paths()
        | _audit_paths()
        | webhook_paths()
        | quarantine_paths(),
        "webhooks": webhook_messages(),
    }
