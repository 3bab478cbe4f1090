"""The API contract: an OpenAPI 3.1 document of every route, served at ``/openapi.json``.

Built here from the same constants the handlers use (page sizes, id and tag rules, the
error codes of ``fileshare.errors``), so that the description cannot drift from them; a
test checks that every route of the app is in it and every operation in it is routed.
"""

from __future__ import annotations

from typing import Any

from fileshare import errors
from fileshare.api import params
from fileshare.index.tables import FILE_ID_MAX, TAG_MAX

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
    """Every stable ``code`` the service answers with."""
    found: set[str] = {"method_not_allowed", "http_error"}
    pending: list[type[errors.FileshareError]] = [errors.FileshareError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(found)


_ERRORS = {
    "400": _problem("A bad request: see `code` and `detail`"),
    "401": _problem("Missing or invalid credentials"),
    "404": _problem("No such file (or another owner's: never 403)"),
    "503": _problem("A dependency failed (scanner, storage, index); retry after Retry-After"),
}
_LOCATION = {"Location": {"schema": {"type": "string", "format": "uri"}}}
_ETAG = {"ETag": {"schema": {"type": "string"}, "description": "The quoted sha256"}}


def _errors(*statuses: str) -> dict[str, Schema]:
    base = {k: _ERRORS[k] for k in ("400", "401", "503")}
    extra = {
        "404": _ERRORS["404"],
        "409": _problem("The file's content is not available (or a concurrent change)"),
        "412": _problem("If-Match / If-None-Match did not hold"),
        "413": _problem("Over the size limit"),
        "415": _problem("Unsupported media type or content encoding"),
        "416": _problem("Range not satisfiable"),
        "422": _problem("Infected, or a JSON body of the wrong shape"),
    }
    return base | {s: extra[s] for s in statuses}


def _query(name: str, description: str, schema: Schema, **extra: Any) -> Schema:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


_LIST_PARAMETERS = [
    _query("offsetKey", "`nextOffsetKey` of the previous page", {"type": "string"}),
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
    _query("name", "Exactly this name", {"type": "string"}),
    _query("contentType", "`type/subtype`, or `type/*`", {"type": "string"}),
    _query("from", "Created at or after (RFC 3339 or a date)", {"type": "string"}),
    _query("to", "Created before (RFC 3339 or a date)", {"type": "string"}),
]
_SEARCH_PARAMETERS = [
    *_LIST_PARAMETERS,
    _query(
        "tag",
        "Carries this tag, exactly (repeat for all of several)",
        {"type": "array", "items": {"type": "string"}, "maxItems": params.MAX_TAGS_PER_QUERY},
        style="form",
        explode=True,
    ),
    _query(
        "tagLike",
        "Carries a tag matching this (`%`: any run; case-insensitive)",
        {"type": "string"},
    ),
    _query("present", "Only files whose content is clean and stored (or not)", {"type": "boolean"}),
]
_FILE_ID = {
    "name": "fileId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": params.FILE_ID.pattern, "maxLength": FILE_ID_MAX},
}
_TAG = {
    "name": "tag",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": TAG_MAX},
}
_UPLOAD_BODY = {
    "required": True,
    "description": (
        "The file as the raw body (name from `?name=` or Content-Disposition), or "
        "multipart/form-data with exactly one file part. Streamed, never read whole."
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
                "tags": {"type": "array", "items": {"type": "string"}},
                "metadata": {"type": "object"},
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
                "name": {"type": ["string", "null"]},
                "metadata": {"type": ["object", "null"]},
                "tags": {"type": ["array", "null"], "items": {"type": "string"}},
            },
        },
        "Tag": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": TAG_MAX}, "created": stamp},
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


def _paths() -> dict[str, Schema]:
    file = _json("The file's record", _ref("File"), headers=_ETAG)
    public: list[dict[str, list[str]]] = []
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "security": public,
                "responses": {"200": {"description": "Alive"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness (clamd, storage, index)",
                "security": public,
                "responses": {
                    "200": {"description": "Ready"},
                    "503": {"description": "Not ready, or draining"},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": public,
                "responses": {"200": {"description": "Prometheus text format"}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": public,
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
        "/v1/files": {
            "post": {
                "summary": "Upload a file (the server chooses the id)",
                "requestBody": _UPLOAD_BODY,
                "responses": {
                    "201": _json("A new record", _ref("File"), headers=_LOCATION | _ETAG),
                    "200": _json("Your retried identical upload", _ref("File"), headers=_LOCATION),
                    **_errors("413", "415", "422"),
                },
            },
            "get": {
                "summary": "Your files, oldest first",
                "parameters": _LIST_PARAMETERS,
                "responses": {"200": _json("A page", _ref("FilePage")), **_errors()},
            },
        },
        "/v1/search/files": {
            "get": {
                "summary": "Search your files by tag, name, type, time, presence",
                "parameters": _SEARCH_PARAMETERS,
                "responses": {"200": _json("A page", _ref("FilePage")), **_errors()},
            }
        },
        "/v1/files/{fileId}": {
            "parameters": [_FILE_ID],
            "put": {
                "summary": "Create or replace the file under your id",
                "requestBody": _UPLOAD_BODY,
                "responses": {
                    "201": _json("Created", _ref("File"), headers=_LOCATION | _ETAG),
                    "200": _json("Replaced", _ref("File"), headers=_LOCATION | _ETAG),
                    **_errors("412", "413", "415", "422"),
                },
            },
            "get": {
                "summary": "Download (Range, If-None-Match, If-Range)",
                "responses": {
                    "200": {
                        "description": "The bytes",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "206": {"description": "A byte range"},
                    "304": {"description": "Not modified"},
                    **_errors("404", "409", "416"),
                },
            },
            "head": {
                "summary": "Headers of a download",
                "responses": {"200": {"description": "Headers only"}, **_errors("404", "409")},
            },
            "patch": {
                "summary": "Merge patch of name, metadata and tags",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/merge-patch+json": {"schema": _ref("FilePatch")},
                        JSON: {"schema": _ref("FilePatch")},
                    },
                },
                "responses": {"200": file, **_errors("404", "413", "415", "422")},
            },
            "delete": {
                "summary": "Delete physically (the bytes once no record uses them)",
                "responses": {"204": {"description": "Deleted"}, **_errors("404")},
            },
        },
        "/v1/files/{fileId}/metadata": {
            "parameters": [_FILE_ID],
            "get": {"summary": "The record", "responses": {"200": file, **_errors("404")}},
        },
        "/v1/files/{fileId}/tags/{tag}": {
            "parameters": [_FILE_ID, _TAG],
            "put": {
                "summary": "Put a tag on the file",
                "responses": {"200": file, **_errors("404", "422")},
            },
            "delete": {
                "summary": "Take a tag off the file",
                "responses": {"200": file, **_errors("404")},
            },
        },
        "/v1/tags": {
            "post": {
                "summary": "Add a tag to your vocabulary",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json("Added", _ref("Tag"), headers=_LOCATION),
                    "200": _json("Was there", _ref("Tag"), headers=_LOCATION),
                    **_errors("413", "415", "422"),
                },
            },
            "get": {
                "summary": "Your tags, by name",
                "parameters": _LIST_PARAMETERS[:2],
                "responses": {"200": _json("A page", _ref("TagPage")), **_errors()},
            },
        },
        "/v1/tags/{tag}": {
            "parameters": [_TAG],
            "delete": {
                "summary": "Remove a tag from your vocabulary and every file",
                "responses": {"204": {"description": "Removed"}, **_errors("404")},
            },
        },
    }


def document(base_url: str) -> dict[str, Any]:
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
            },
            "schemas": _schemas(),
        },
        "paths": _paths(),
    }
