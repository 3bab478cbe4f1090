"""Typed application keys: what ``create_app`` wires and handlers read."""

from __future__ import annotations

import asyncio

from aiohttp import web

from fileshare.api.auth import ApiKeyAuthenticator
from fileshare.config import Settings
from fileshare.health import InFlight
from fileshare.metrics import Metrics
from fileshare.service import FileService

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", FileService)
AUTHENTICATOR = web.AppKey("authenticator", ApiKeyAuthenticator)
METRICS = web.AppKey("metrics", Metrics)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
#: Set on SIGTERM: the instance is draining.
DRAINING = web.AppKey("draining", asyncio.Event)
