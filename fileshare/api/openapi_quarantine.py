"""The OpenAPI description of ``/v1/admin/quarantine``."""

from __future__ import annotations

from fileshare.api import params
from fileshare.api.openapi import _LOCATION, Schema, _errors, _json, _query, _ref
from fileshare.quarantine import REASON_MAX, REASON_PATTERN, STATUSES

_STAMP: Schema = {"type": "string", "format": "date-time"}
_ID: Schema = {
    "name": "item_id",
    "in": "path",
    "required": True,
    "description": "The quarantined item (`quarantineId` of the refused upload's problem)",
    "schema": {"type": "string"},
}


def quarantine_schemas() -> dict[str, Schema]:
    item: Schema = {
        "type": "object",
        "required": [
            "id",
            "owner",
            "contentType",
            "size",
            "sha256",
            "state",
            "status",
            "created",
        ],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "owner": {
                "type": "string",
                "description": "Whose upload it was (a rescan's: the oldest record's owner)",
            },
            "fileId": {
                "type": "string",
                "description": "The id the upload asked for (a rescan's: the oldest record's)",
            },
            "name": {"type": "string"},
            "contentType": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "state": {
                "type": "string",
                "enum": ["infected", "unscannable", "clean"],
                "description": "The latest verdict (`clean` only once released)",
            },
            "signature": {"type": "string", "description": "What clamd found"},
            "scanner": {"type": "string", "description": "The verdict's clamd version"},
            "scannedAt": _STAMP,
            "status": {
                "type": "string",
                "enum": ["held", "released", "deleted", "gone"],
                "description": "`held`: the bytes are in the quarantine bucket",
            },
            "created": _STAMP,
            "createdBy": {"type": "string"},
            "released": _STAMP,
            "releasedBy": {"type": "string"},
            "releasedFileId": {"type": "string"},
            "deleted": _STAMP,
            "deletedBy": {"type": "string"},
        },
    }
    return {
        "QuarantineItem": item,
        "QuarantineList": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": _ref("QuarantineItem")},
                "nextOffsetKey": {
                    "type": "string",
                    "description": "Where the next page starts (as offsetKey); absent on the last",
                },
            },
        },
    }


def quarantine_paths() -> dict[str, Schema]:
    page = _query(
        "pageSize",
        "How many items, newest first",
        {"type": "integer", "minimum": params.PAGE_SIZE_MIN, "maximum": params.PAGE_SIZE_MAX},
    )
    reason = _query(
        "reason",
        "Why the bytes are taken (audited with who took them)",
        {"type": "string", "minLength": 1, "maxLength": REASON_MAX, "pattern": REASON_PATTERN},
        required=True,
    )
    return {
        "/v1/admin/quarantine": {
            "get": {
                "tags": ["admin"],
                "summary": "What the scanner refused and fileshare kept, newest first",
                "parameters": [
                    page,
                    _query(
                        "offsetKey",
                        "`nextOffsetKey` of the previous page, as it came",
                        {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                    ),
                    _query(
                        "status",
                        "Only the items held (their bytes still in quarantine), released or "
                        "deleted",
                        {"type": "string", "enum": list(STATUSES)},
                    ),
                ],
                "responses": {"200": _json("Items", _ref("QuarantineList")), **_errors("404")},
            },
        },
        "/v1/admin/quarantine/{item_id}": {
            "parameters": [_ID],
            "get": {
                "tags": ["admin"],
                "summary": "One quarantined item: its upload's facts and its verdict",
                "responses": {"200": _json("Item", _ref("QuarantineItem")), **_errors("404")},
            },
            "delete": {
                "tags": ["admin"],
                "summary": "Remove its bytes; the record stays, marked deleted",
                "responses": {"204": {"description": "Deleted"}, **_errors("404", "409")},
            },
        },
        "/v1/admin/quarantine/{item_id}/release": {
            "parameters": [_ID],
            "post": {
                "tags": ["admin"],
                "summary": "Rescan now; if clean, promote it as the owner's file",
                "description": "Still infected or unscannable: `409 quarantine_still_refused` "
                "with the new verdict, which is recorded. The owner's record under the item's id "
                "that still names these bytes (an item a rescan kept) is served again as it "
                "is, and answered. There is no forced promotion: see `/content`.",
                "responses": {
                    "201": _json("The owner's file", _ref("File"), headers=_LOCATION),
                    **_errors("404", "409", "412", "413", "415", "422"),
                },
            },
        },
        "/v1/admin/quarantine/{item_id}/content": {
            "parameters": [_ID],
            "get": {
                "tags": ["admin"],
                "summary": "The forced release: the quarantined bytes, to this administrator",
                "description": "Streamed as an attachment, audited (who, and the reason) before "
                "the first byte; nothing is promoted and the item stays in quarantine.",
                "parameters": [reason],
                "responses": {
                    "200": {
                        "description": "The quarantined bytes",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    **_errors("404", "409"),
                },
            },
        },
    }
