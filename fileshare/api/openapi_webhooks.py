"""The OpenAPI description of ``/v1/webhooks`` and ``/v1/admin/webhooks``, and of the
messages fileshare posts to callback URLs (OpenAPI 3.1's top-level ``webhooks``)."""

from __future__ import annotations

from fileshare.api import params
from fileshare.api.openapi import (
    _LOCATION,
    JSON,
    Schema,
    _errors,
    _json,
    _problem,
    _query,
    _ref,
)
from fileshare.index.outbox import STATES
from fileshare.webhooks.messages import MessageType
from fileshare.webhooks.targets import URL_MAX

_STAMP: Schema = {"type": "string", "format": "date-time"}
_NO_STORE: Schema = {
    "Cache-Control": {
        "description": "`no-store`: the answer holds a secret",
        "required": True,
        "schema": {"type": "string", "const": "no-store"},
    }
}
_TYPES = [t.value for t in MessageType]


def _path(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _items(ref: str) -> Schema:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref(ref)}},
    }


def webhook_schemas() -> dict[str, Schema]:
    message = {
        "type": "object",
        "description": "What is posted to a callback URL (the Standard Webhooks envelope)",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"type": "string", "enum": _TYPES},
            "timestamp": _STAMP,
            "data": {
                "type": "object",
                "required": ["owner", "auditSeq"],
                "properties": {
                    "owner": {"type": "string", "description": "Whose file"},
                    "fileId": {"type": "string"},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "state": {
                        "type": "string",
                        "description": "clean, infected, unscannable, failed, deleted; a direct "
                        "upload's rejected or expired",
                    },
                    "signature": {"type": "string", "description": "What clamd found"},
                    "scanner": {"type": "string", "description": "The verdict's clamd version"},
                    "trigger": {"type": "string", "description": "What made the verdict"},
                    "code": {"type": "string", "description": "The error code it ended with"},
                    "uploadId": {"type": "string"},
                    "auditSeq": {
                        "type": "integer",
                        "description": "The audit row of the change (`GET /v1/audit`)",
                    },
                },
            },
        },
    }
    return {
        "Webhook": {
            "type": "object",
            "required": ["id", "clientId", "url", "created"],
            "properties": {
                "id": {"type": "string"},
                "clientId": {"type": "string"},
                "url": {"type": "string", "format": "uri"},
                "events": {"type": "array", "items": {"type": "string", "enum": _TYPES}},
                "created": _STAMP,
                "secret": {
                    "type": "string",
                    "pattern": "^whsec_[A-Za-z0-9+/=]+$",
                    "description": "Only when created; shown once. Verify each message with it "
                    "(any Standard Webhooks library)",
                },
            },
        },
        "WebhookList": _items("Webhook"),
        "NewWebhook": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "url": {
                    "type": "string",
                    "maxLength": URL_MAX,
                    "description": "https; a public address unless the deployment allows "
                    "the host (FILESHARE_WEBHOOK_PRIVATE_HOSTS)",
                },
                "events": {
                    "type": ["array", "null"],
                    "minItems": 1,
                    "items": {"type": "string", "enum": _TYPES},
                    "description": "The message types wanted (null or absent: all)",
                },
            },
        },
        "WebhookMessage": message,
        "WebhookDelivery": {
            "type": "object",
            "required": ["id", "webhookId", "type", "state", "attempts", "created", "payload"],
            "properties": {
                "id": {"type": "string", "description": "The message's `webhook-id`"},
                "webhookId": {"type": "string"},
                "type": {"type": "string", "enum": _TYPES},
                "state": {"type": "string", "enum": list(STATES)},
                "attempts": {"type": "integer", "minimum": 0},
                "created": _STAMP,
                "nextAttempt": _STAMP,
                "delivered": _STAMP,
                "lastStatus": {"type": "integer"},
                "lastError": {"type": "string"},
                "payload": _ref("WebhookMessage"),
            },
        },
        "WebhookDeliveryList": _items("WebhookDelivery"),
    }


def webhook_paths() -> dict[str, Schema]:
    tag = ["webhooks"]
    webhook = _path("webhook_id", "The webhook's id")
    missing = _problem("No such webhook (or another client's)")
    listing = [
        _query("state", "Only deliveries in this state", {"type": "string", "enum": list(STATES)}),
        _query(
            "pageSize",
            "At most this many, newest first",
            {
                "type": "integer",
                "minimum": params.PAGE_SIZE_MIN,
                "maximum": params.PAGE_SIZE_MAX,
                "default": params.PAGE_SIZE_DEFAULT,
            },
        ),
    ]
    deliveries = _json("Deliveries, newest first", _ref("WebhookDeliveryList"))
    return {
        "/v1/webhooks": {
            "get": {
                "tags": tag,
                "summary": "Your client's webhooks",
                "responses": {"200": _json("Webhooks", _ref("WebhookList")), **_errors()},
            },
            "post": {
                "tags": tag,
                "summary": "Register a callback URL for every outcome of the files you may read "
                "(its signing secret is shown once)",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("NewWebhook")}},
                },
                "responses": {
                    "201": _json("Registered", _ref("Webhook"), headers=_LOCATION | _NO_STORE),
                    **_errors("413", "415"),
                    "409": _problem("The client has as many webhooks as it may (10)"),
                    "422": _problem(
                        "The callback URL is refused (`webhook_target_refused`: not https, "
                        "or a private target), or the body has the wrong shape"
                    ),
                },
            },
        },
        "/v1/webhooks/{webhook_id}": {
            "parameters": [webhook],
            "get": {
                "tags": tag,
                "summary": "A webhook",
                "responses": {
                    "200": _json("The webhook", _ref("Webhook")),
                    **_errors(),
                    "404": missing,
                },
            },
            "delete": {
                "tags": tag,
                "summary": "Remove a webhook, and every message still waiting for it",
                "responses": {"204": {"description": "Removed"}, **_errors(), "404": missing},
            },
        },
        "/v1/webhooks/{webhook_id}/deliveries": {
            "parameters": [webhook],
            "get": {
                "tags": tag,
                "summary": "What was (and is to be) sent to a webhook",
                "parameters": listing,
                "responses": {"200": deliveries, **_errors(), "404": missing},
            },
        },
        "/v1/webhooks/{webhook_id}/deliveries/{message_id}/retry": {
            "parameters": [webhook, _path("message_id", "The message's `webhook-id`")],
            "post": {
                "tags": tag,
                "summary": "Send a dead message again, from its first attempt",
                "responses": {
                    "202": {"description": "It is pending again"},
                    **_errors(),
                    "404": _problem("No such webhook or delivery"),
                    "409": _problem("The delivery is not dead"),
                },
            },
        },
        "/v1/admin/webhooks": {
            "get": {
                "tags": ["admin"],
                "summary": "Every client's webhooks",
                "responses": {"200": _json("Webhooks", _ref("WebhookList")), **_errors()},
            },
        },
        "/v1/admin/webhooks/deliveries": {
            "get": {
                "tags": ["admin"],
                "summary": "Deliveries to every webhook (`?state=dead`: the dead letters)",
                "parameters": listing,
                "responses": {"200": deliveries, **_errors()},
            },
        },
    }


def webhook_messages() -> dict[str, Schema]:
    """OpenAPI 3.1 ``webhooks``: what a receiver gets."""
    signed = [
        {
            "name": "webhook-id",
            "in": "header",
            "required": True,
            "description": "The message's id: the same on every retry (deduplicate on it)",
            "schema": {"type": "string"},
        },
        {
            "name": "webhook-timestamp",
            "in": "header",
            "required": True,
            "description": "Seconds since the epoch when this attempt was signed",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        {
            "name": "webhook-signature",
            "in": "header",
            "required": True,
            "description": "`v1,<base64 HMAC-SHA256 of id.timestamp.body>` keyed by the "
            "webhook's secret (Standard Webhooks)",
            "schema": {"type": "string"},
        },
    ]
    return {
        "fileOutcome": {
            "post": {
                "summary": "An outcome of a file you may read",
                "description": "Delivered at least once; a 2xx answer ends it, anything else "
                "is retried with backoff until FILESHARE_WEBHOOK_ATTEMPTS, then the message "
                "is dead (listed by the deliveries routes).",
                "parameters": signed,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("WebhookMessage")}},
                },
                "responses": {"2XX": {"description": "Received"}},
            }
        }
    }
