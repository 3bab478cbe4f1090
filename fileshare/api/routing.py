"""The matched route of a request, for labels, logs and answers that must not echo paths."""

from __future__ import annotations

from aiohttp import web


def route_template(request: web.BaseRequest) -> str | None:
    """The matched route's template (``/v1/files/{file_id}``), None when nothing matched
    (or before routing: a request the parser refused)."""
    match_info = getattr(request, "match_info", None)
    if match_info is None or match_info.route.resource is None:
        return None
    return str(match_info.route.resource.canonical)
