"""Typed application keys: what ``create_app`` wires and handlers read."""

from __future__ import annotations

import asyncio

from aiohttp import web

from fileshare.auth.base import Authentication
from fileshare.auth.issuer import TokenIssuer
from fileshare.auth.policy import Policy
from fileshare.auth.registry import Registry
from fileshare.auth.signing import PublishedKeys
from fileshare.config import Settings
from fileshare.direct import DirectUploads
from fileshare.events import EventDispatcher
from fileshare.health import InFlight
from fileshare.index.audit import AuditStore
from fileshare.index.identity import IdentityStore
from fileshare.index.quarantine import QuarantineStore
from fileshare.links import LinkService
from fileshare.metrics import Metrics
from fileshare.quarantine import QuarantineAdmin
from fileshare.service import FileService
from fileshare.webhooks.registry import Webhooks

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", FileService)
#: Direct-to-bucket uploads (presigned URLs) and their ingestion.
DIRECT = web.AppKey("direct", DirectUploads)
#: Storage events: what turns them into ingestions.
EVENTS = web.AppKey("events", EventDispatcher)
#: Partner links; absent when no links bucket is configured (or the store cannot sign).
LINKS = web.AppKey("links", LinkService)
AUTHENTICATION = web.AppKey("authentication", Authentication)
POLICY = web.AppKey("policy", Policy)
AUDIT = web.AppKey("audit", AuditStore)
IDENTITY = web.AppKey("identity", IdentityStore)
REGISTRY = web.AppKey("registry", Registry)
#: The quarantine's administration; absent without FILESHARE_QUARANTINE_BUCKET.
QUARANTINE = web.AppKey("quarantine", QuarantineAdmin)
QUARANTINE_STORE = web.AppKey("quarantine_store", QuarantineStore)
#: Webhook endpoints and their deliveries.
WEBHOOKS = web.AppKey("webhooks", Webhooks)
#: fileshare's own token endpoint, and the keys it publishes (and verifies its tokens by).
TOKEN_ISSUER = web.AppKey("token_issuer", TokenIssuer)
TOKEN_KEYS = web.AppKey("token_keys", PublishedKeys)
METRICS = web.AppKey("metrics", Metrics)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
#: Set on SIGTERM: the instance is draining.
DRAINING = web.AppKey("draining", asyncio.Event)
