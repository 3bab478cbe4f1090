"""Webhook endpoints as clients manage them: registration (SSRF-checked, the secret shown
once), listing, removal, the deliveries of each, and a dead message sent again.

An endpoint belongs to the registered client that created it; an admin may see and act on
every endpoint. Somebody else's endpoint is "not found", never "forbidden".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from fileshare import errors
from fileshare.audit import Action, Actor
from fileshare.auth.principal import Principal, Role
from fileshare.boundary import index_call
from fileshare.index.outbox import STATES, Delivery, Outbox
from fileshare.index.webhooks import Endpoint, WebhookStore
from fileshare.webhooks import signing
from fileshare.webhooks.messages import MessageType
from fileshare.webhooks.targets import Targets


def _unregistered() -> errors.Forbidden:
    return errors.Forbidden(
        "webhooks belong to registered clients (POST /v1/admin/clients); this credential's "
        "client is not one"
    )


@dataclass(frozen=True)
class NewEndpoint:
    endpoint: Endpoint
    #: Shown once, at creation.
    secret: str


class Webhooks:
    def __init__(
        self,
        store: WebhookStore,
        outbox: Outbox,
        targets: Targets,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.targets = targets
        self.clock = clock

    async def register(
        self, actor: Actor, principal: Principal, url: str, events: object
    ) -> NewEndpoint:
        wanted = _events(events)
        if not principal.registered:
            raise _unregistered()
        if (problem := await self.targets.check(url)) is not None:
            raise errors.WebhookTargetRefused(f"url {problem}")
        endpoint = Endpoint(
            id=f"wh_{uuid.uuid4().hex}",
            client_id=principal.client,
            url=url,
            secret=signing.new_secret(),
            events=wanted,
            created=self.clock(),
        )
        event = actor.event(
            Action.WEBHOOK_CREATE,
            detail={"client_id": principal.client, "webhook_id": endpoint.id},
        )
        try:
            await index_call(self.store.create(endpoint, event))
        except LookupError:  # revoked since it authenticated
            raise _unregistered() from None
        return NewEndpoint(endpoint, endpoint.secret)

    async def endpoints(self, principal: Principal) -> list[Endpoint]:
        if not principal.registered:
            # ``client`` of an external token is its issuer's word (``azp``): it may name
            # a registered client's id without being that client.
            return []
        return await index_call(self.store.endpoints(principal.client))

    async def all_endpoints(self) -> list[Endpoint]:
        return await index_call(self.store.endpoints(None))

    async def endpoint(self, principal: Principal, endpoint_id: str) -> Endpoint:
        found = await index_call(self.store.endpoint(endpoint_id))
        mine = principal.registered and found is not None and found.client_id == principal.client
        if found is None or not (mine or principal.role is Role.ADMIN):
            raise errors.NotFound("no such webhook")
        return found

    async def delete(self, actor: Actor, principal: Principal, endpoint_id: str) -> None:
        found = await self.endpoint(principal, endpoint_id)
        event = actor.event(
            Action.WEBHOOK_DELETE,
            detail={"client_id": found.client_id, "webhook_id": found.id},
        )
        if not await index_call(self.store.delete(found.id, self.clock(), event)):
            raise errors.NotFound("no such webhook")

    async def deliveries(
        self, principal: Principal, endpoint_id: str | None, state: str | None, limit: int
    ) -> list[Delivery]:
        """One endpoint's (None: every endpoint's, for an admin), newest first."""
        if state is not None and state not in STATES:
            raise errors.InvalidParameter(f"state must be one of {', '.join(STATES)}")
        if endpoint_id is not None:
            endpoint_id = (await self.endpoint(principal, endpoint_id)).id
        return await index_call(
            self.outbox.deliveries(endpoint_id=endpoint_id, state=state, limit=limit)
        )

    async def retry(
        self, actor: Actor, principal: Principal, endpoint_id: str, message_id: str
    ) -> None:
        """Send a dead message again; ``Conflict`` unless it is dead."""
        found = await self.endpoint(principal, endpoint_id)
        message = await index_call(self.outbox.delivery(message_id))
        # Looked up through its endpoint, so a message id alone reveals nothing.
        if message is None or message.endpoint_id != found.id:
            raise errors.NotFound("no such delivery")
        event = actor.event(
            Action.WEBHOOK_RETRY,
            detail={"client_id": found.client_id, "webhook_id": found.id, "message_id": message.id},
        )
        if not await index_call(self.store.retry(message_id, self.clock(), event)):
            raise errors.Conflict("only a dead delivery is sent again; this one is not dead")


def _events(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    known = {t.value for t in MessageType}
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v in known for v in value)
    ):
        raise errors.ValidationFailed(
            f"events is a non-empty list of {', '.join(sorted(known))} (omit it for all)"
        )
    return tuple(sorted(set(value)))
