"""The actor of a request: its principal, the owner it acts for (``?owner=``, settled by
the policy), where it came from and its request id."""

from __future__ import annotations

import structlog
from aiohttp import web

from fileshare import errors
from fileshare.api import params
from fileshare.api.context import PRINCIPAL, REQUEST_ID
from fileshare.api.keys import AUDIT, POLICY
from fileshare.audit import Action, Actor, Result

log = structlog.get_logger(__name__)


async def actor(request: web.Request, *, write: bool) -> Actor:
    """Raises ``InvalidParameter`` for a malformed ``owner``, ``NotFound`` for an owner the
    principal may not reach (its existence is not confirmed), ``Forbidden`` for a write
    under a read-only grant."""
    principal = request[PRINCIPAL]
    requested = params.owner(request.query)
    try:
        owner = await request.app[POLICY].owner_for(principal, requested, write=write)
    except (errors.NotFound, errors.Forbidden) as exc:
        refused = Actor(principal, requested, source=request.remote, request_id=request[REQUEST_ID])
        event = refused.event(
            Action.ACCESS_DENY,
            Result.DENIED,
            detail={"status": exc.status, "method": request.method, "write": write},
        )
        try:
            await request.app[AUDIT].record(event)
        except Exception as failure:  # the refusal stands either way
            log.warning("audit.write_failed", action=str(event.action), error=str(failure))
        raise
    return Actor(principal, owner, source=request.remote, request_id=request[REQUEST_ID])


def unscoped(request: web.Request) -> Actor:
    """The actor of a request about no owner's files (clients, keys, grants, webhooks)."""
    return Actor(request[PRINCIPAL], None, source=request.remote, request_id=request[REQUEST_ID])
