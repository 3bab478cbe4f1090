"""Typed keys for what middlewares attach to a request."""

from __future__ import annotations

from aiohttp import web

from fileshare.auth.principal import Principal

REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
