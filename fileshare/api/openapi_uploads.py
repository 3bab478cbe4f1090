"""The OpenAPI description of ``/v1/uploads`` (direct-to-bucket uploads), kept beside the
rest of the document (``openapi``) but in a module of its own."""

from __future__ import annotations

from fileshare.api.names import MEDIA_TYPE_PATTERN
from fileshare.api.openapi import (
    _LIST_PARAMETERS,
    _LOCATION,
    _OWNER,
    JSON,
    Schema,
    _errors,
    _json,
    _problem,
    _query,
    _ref,
    name_schema,
)
from fileshare.links import RESOURCE_ID
from fileshare.models import UploadState

_UPLOAD_ID: Schema = {
    "name": "uploadId",
    "in": "path",
    "required": True,
    "description": "The upload's id (`POST /v1/uploads` answers it)",
    "schema": {"type": "string"},
}
_SHA256: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def upload_schemas() -> dict[str, Schema]:
    stamp = {"type": "string", "format": "date-time"}
    uri = {"type": "string", "format": "uri"}
    schemas = _schemas(stamp, uri)
    upload = schemas["Upload"]
    # Spelled out, not an allOf: the answers are checked with no member left undescribed.
    request = {
        "method": {"const": "PUT"},
        "url": uri,
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "expires": stamp,
    }
    schemas["IssuedUpload"] = {
        "type": "object",
        "description": "`upload` (one PUT; on GCS, for an upload larger than one PUT "
        "takes, a resumable session's URI, which takes chunks with Content-Range), `form` (a "
        "browser form's POST, when asked for) or, on S3 for an upload larger than one PUT "
        "takes, `parts` (a PUT per part, in any order, each with exactly its `size` bytes)",
        "required": [*upload["required"], "complete"],
        "properties": {
            **upload["properties"],
            "upload": {
                "type": "object",
                "description": "Send the bytes with exactly this request",
                "required": list(request),
                "properties": request,
            },
            "parts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["number", "size", *request],
                    "properties": {
                        "number": {"type": "integer", "minimum": 1},
                        "size": {"type": "integer", "minimum": 0},
                        **request,
                    },
                },
            },
            "partSize": {"type": "integer", "description": "Every part's size but the last's"},
            "form": {
                "type": "object",
                "description": "POST `url` as multipart/form-data: `fields` first, as they "
                "are, then the file (exactly `size` bytes) as the last field, `file`",
                "required": ["method", "url", "fields", "expires"],
                "properties": {
                    "method": {"const": "POST"},
                    "url": uri,
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                    "expires": stamp,
                },
            },
            "complete": uri | {"description": "POST here once the PUT (every part) succeeded"},
        },
    }
    return schemas


def _schemas(stamp: Schema, uri: Schema) -> dict[str, Schema]:
    return {
        "UploadPage": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": _ref("Upload")},
                "nextOffsetKey": {"type": "string"},
            },
        },
        "LinkRequest": {
            "type": "object",
            "required": ["action", "resource_id", "resource_name"],
            "additionalProperties": False,
            "properties": {
                "action": {"type": "string", "enum": ["upload", "download"]},
                "resource_id": {
                    "type": "string",
                    "pattern": f"^{RESOURCE_ID.pattern}$",
                    "description": "The folder: a contractor legal entity's id",
                },
                "resource_name": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": "^(?=.*\\S)[^\\x00-\\x1f\\x7f-\\x9f]+$",
                    "description": "The file's name as it is: fileshare percent-encodes it "
                    "into the key (spaces, `/`, `%` and all)",
                },
            },
        },
        "Link": {
            "type": "object",
            "required": [
                "action",
                "resource_id",
                "resource_name",
                "key",
                "method",
                "url",
                "headers",
                "expires",
            ],
            "properties": {
                "action": {"type": "string", "enum": ["upload", "download"]},
                "resource_id": {"type": "string"},
                "resource_name": {"type": "string"},
                "key": {"type": "string", "description": "The object's key in the bucket"},
                "method": {"type": "string", "enum": ["PUT", "GET"]},
                "url": uri,
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "expires": stamp,
            },
        },
        "UploadIntent": {
            "type": "object",
            "required": ["contentType", "size"],
            "additionalProperties": False,
            "properties": {
                "name": {"anyOf": [name_schema(), {"type": "null"}]},
                "contentType": {
                    "type": "string",
                    "pattern": MEDIA_TYPE_PATTERN,
                    "description": "`type/subtype`",
                },
                "size": {"type": "integer", "minimum": 0, "description": "Exactly, in bytes"},
                "sha256": {
                    "anyOf": [_SHA256, {"type": "null"}],
                    "description": "Hex; signed into the URL when given, checked on ingestion",
                },
                "form": {
                    "type": "boolean",
                    "description": "`true`: a POST policy for a browser's HTML form "
                    "(`form` in the answer) instead of a PUT",
                },
            },
        },
        "Upload": {
            "type": "object",
            "required": [
                "id",
                "status",
                "fileId",
                "name",
                "contentType",
                "size",
                "state",
                "created",
                "expires",
            ],
            "properties": {
                "id": {"type": "string"},
                "status": uri | {"description": "This document's URL"},
                "fileId": {"type": "string", "description": "The id the file will have"},
                "name": {"type": ["string", "null"]},
                "contentType": {"type": "string"},
                "size": {"type": "integer"},
                "sha256": _SHA256,
                "state": {
                    "type": "string",
                    "enum": [s.value for s in UploadState],
                    "description": "`pending` until ingested; `clean` made the file; "
                    "`rejected`: size, type or checksum not the intent's; `expired`: "
                    "nothing was uploaded in time",
                },
                "code": {"type": "string", "description": "Why it was not clean"},
                "detail": {"type": "string"},
                "signature": {"type": "string", "description": "When infected"},
                "file": uri | {"description": "The file, once clean"},
                "created": stamp,
                "expires": stamp | {"description": "When the upload URL stops working"},
                "finished": stamp,
            },
        },
    }


def upload_paths() -> dict[str, Schema]:
    upload = _json("The upload", _ref("Upload"))
    return {
        "/v1/uploads": {
            "parameters": [_OWNER],
            "get": {
                "summary": "Your direct uploads, oldest first, with their states",
                "parameters": [
                    *_LIST_PARAMETERS[:2],
                    _query(
                        "state",
                        "Only uploads in this state",
                        {"type": "string", "enum": [s.value for s in UploadState]},
                    ),
                ],
                "responses": {"200": _json("A page", _ref("UploadPage")), **_errors("404")},
            },
            "post": {
                "summary": "Start a direct upload: a presigned PUT into the unscanned bucket",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("UploadIntent")}},
                },
                "responses": {
                    "201": _json("Issued", _ref("IssuedUpload"), headers=_LOCATION),
                    **_errors("404", "413", "415", "422"),
                    "501": _problem("This deployment's storage cannot sign URLs"),
                },
            },
        },
        "/v1/links": {
            "post": {
                "summary": "A partner link (seed 003): a presigned upload or download URL of "
                "`<resource_id>/<percent-encoded resource_name>` in the links bucket",
                "description": "Takes the application's API key (`X-API-Key`, 401) and a "
                "user's token (`Authorization: Bearer`, a JWT, 401) with `links:write` (or "
                "FILESHARE_LINKS_SCOPE, `private_contracts:write`; 403), checked in that "
                "order before the body (422). A download link is issued only for bytes "
                "scanned clean (on the first request, in it), and never while an upload "
                "link for the file is valid, nor an upload link while a download link is "
                "(409 `link_busy`).",
                "security": [{"bearer": [], "apiKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("LinkRequest")}},
                },
                "responses": {
                    "201": _json("Issued", _ref("Link")),
                    **_errors("404", "409", "413", "415", "422"),
                    "501": _problem("No links bucket is configured (or the store cannot sign)"),
                },
            },
        },
        "/v1/events/seaweedfs": {
            "post": {
                "summary": "SeaweedFS's filer webhook: storage events that start ingestions",
                "description": "For SeaweedFS's `notification.webhook` (the local stand-in for "
                "S3 event notifications): the bearer token is FILESHARE_EVENTS_TOKEN, not a "
                "client's credential; without one the route is off (401). An event only says "
                "which upload to look at: its ingestion runs after the answer.",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "description": "A filer event, as SeaweedFS sends it",
                                "properties": {
                                    "event_type": {"type": "string"},
                                    "key": {"type": "string"},
                                    "message": {"type": "object", "additionalProperties": True},
                                },
                                "additionalProperties": True,
                            }
                        }
                    },
                },
                "responses": {
                    "204": {"description": "Taken"},
                    **{k: v for k, v in _errors("413", "415").items() if k != "403"},
                },
            },
        },
        "/v1/uploads/{uploadId}": {
            "parameters": [_UPLOAD_ID, _OWNER],
            "get": {
                "summary": "Where a direct upload stands",
                "responses": {"200": upload, **_errors("404")},
            },
        },
        "/v1/uploads/{uploadId}/complete": {
            "parameters": [_UPLOAD_ID, _OWNER],
            "post": {
                "summary": "The bytes are uploaded: ingest (scan, promote) them now",
                "responses": {
                    "200": _json("The outcome (see `state`)", _ref("Upload")),
                    "202": _json("Another worker is ingesting it", _ref("Upload")),
                    **_errors("404", "409"),
                },
            },
        },
    }
