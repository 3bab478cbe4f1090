"""Signed webhooks (issue 13) through the whole service: a registered client's callback URL
hears of every outcome of the files it may read, signed per Standard Webhooks, from the
outbox — at least once, and once per id when the receiver answers; a receiver that is
down is retried until it is back, one that keeps failing makes a dead letter an admin sees
and can send again; callback URLs that would reach private addresses are refused.

The receiver is a real HTTP server on loopback (allowed by FILESHARE_WEBHOOK_PRIVATE_HOSTS,
as a receiver inside the cluster would be); the signatures are checked with the Standard
Webhooks reference library and with a plain HMAC."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook, WebhookVerificationError

from fileshare.app import RESCANNER
from fileshare.audit import Action
from fileshare.config import ClamdAddress
from fileshare.index.outbox import Due
from fileshare.webhooks import signing
from fileshare.webhooks.deliver import Deliverer
from fileshare.webhooks.targets import Targets
from tests.e2e.conftest import ALICE, ALICE_KEY, BOB_KEY, Env
from tests.e2e.test_access import ROOT, ROOT_KEY, grant, register, status
from tests.e2e.test_rescan import SIGNATURE, _learn, _marker, growing_clamd
from tests.e2e.test_upload import EICAR
from tests.servers import Clamd

__all__ = ["growing_clamd"]  # a fixture, used by name

DEADLINE = 30.0


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """A webhook receiver on 127.0.0.1: records what it gets and answers ``status``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.status = 200
        self.got: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.got.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> list[str]:
        return [h["webhook-id"] for h, _ in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver(_free_port())
    yield made
    await made.stop()


@pytest.fixture
async def env(make_env: Any) -> Env:
    keys = {"alice": ALICE_KEY, "bob": BOB_KEY, "root": ROOT_KEY}
    made: Env = await make_env(
        api_keys=keys,
        admins=frozenset({"root"}),
        webhook_private_hosts=frozenset({"127.0.0.1"}),
        webhook_backoff=0.1,
    )
    return made


async def until(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Poll ``check`` (sync or async) until it answers something true, under a deadline."""
    end = time.monotonic() + deadline
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def hook(env: Env, headers: dict[str, str], url: str, **extra: Any) -> dict[str, Any]:
    made: dict[str, Any] = await status(
        await env.client.post("/v1/webhooks", json={"url": url, **extra}, headers=headers), 201
    )
    assert made["secret"].startswith("whsec_")
    return made


async def deliveries(env: Env, headers: dict[str, str], webhook_id: str, **query: str) -> Any:
    answer = await status(
        await env.client.get(
            f"/v1/webhooks/{webhook_id}/deliveries", params=query, headers=headers
        ),
        200,
    )
    return answer["items"]


async def upload(env: Env, headers: dict[str, str], data: bytes, name: str = "report.txt") -> Any:
    return await env.client.post("/v1/files", data=data, headers=headers, params={"name": name})


def verified(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The message, once both the reference library and a plain HMAC accept it."""
    message: dict[str, Any] = Webhook(secret).verify(body, headers)
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    return message


async def test_every_outcome_reaches_a_receiver_that_was_down_once_per_id_and_signed(
    env: Env, receiver: Receiver
) -> None:
    clinic = await register(env, "clinic", "participant")
    made = await hook(env, clinic, receiver.url)
    # The receiver is down: nothing listens on its port yet.
    clean = await status(await upload(env, clinic, b"a clean report"), 201)
    # The same bytes again: stored already, no scan, and as clean.
    again = await status(await upload(env, clinic, b"a clean report", "copy.txt"), 201)
    refused = await upload(env, clinic, EICAR)
    assert refused.status == 422
    await status(await env.client.delete(f"/v1/files/{clean['id']}", headers=clinic), 204)

    def failed_once(items: list[dict[str, Any]]) -> bool:
        return len(items) == 4 and all(
            d["attempts"] >= 1 and d["state"] == "pending" for d in items
        )

    waiting = await until(
        "four failed attempts",
        lambda: _matching(deliveries(env, clinic, made["id"]), failed_once),
    )
    assert all(d["lastError"].startswith("no connection") for d in waiting)
    assert receiver.got == []

    await receiver.start()
    await until("every message delivered", lambda: len(set(receiver.ids())) == 4)
    settled = await until(
        "every delivery settled",
        lambda: _matching(
            deliveries(env, clinic, made["id"]),
            lambda items: all(d["state"] == "delivered" for d in items),
        ),
    )
    # Once per id: a 2xx ended each message; nothing was sent twice.
    assert sorted(receiver.ids()) == sorted(d["id"] for d in settled)
    assert len(receiver.ids()) == 4
    messages = [verified(made["secret"], h, body) for h, body in receiver.got]
    by_type = {m["type"]: m for m in messages}
    assert set(by_type) == {"file.clean", "file.infected", "file.deleted"}
    cleans = [m["data"] for m in messages if m["type"] == "file.clean"]
    assert sorted(d["fileId"] for d in cleans) == sorted([clean["id"], again["id"]])
    assert {d["state"] for d in cleans} == {"clean"}
    assert by_type["file.deleted"]["data"]["fileId"] == clean["id"]
    infected = by_type["file.infected"]["data"]
    assert infected["state"] == "infected"
    assert "EICAR" in infected["signature"]
    assert all(m["data"]["owner"] == "clinic" for m in messages)
    # Each message names the audit row of what it reports.
    rows = await status(
        await env.client.get("/v1/audit", params={"pageSize": "100"}, headers=ROOT), 200
    )
    verdicts = {r["seq"]: r for r in rows["items"]}
    for m in messages:
        assert m["data"]["auditSeq"] in verdicts

    # A signature that does not match is detected: another body, another secret, old time.
    headers, body = receiver.got[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(made["secret"]).verify(body.replace(b"clinic", b"clinix"), headers)
    other = (await hook(env, clinic, receiver.url))["secret"]
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(WebhookVerificationError):
        Webhook(made["secret"]).verify(body, stale)


async def _matching(
    listing: Any, accept: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = await listing
    return items if accept(items) else None


async def test_a_receiver_that_keeps_failing_makes_a_dead_letter_an_admin_sends_again(
    make_env: Any, receiver: Receiver
) -> None:
    env: Env = await make_env(
        api_keys={"alice": ALICE_KEY, "root": ROOT_KEY},
        admins=frozenset({"root"}),
        webhook_private_hosts=frozenset({"127.0.0.0/8"}),
        webhook_backoff=0.1,
        webhook_attempts=2,
    )
    receiver.status = 500
    await receiver.start()
    clinic = await register(env, "clinic", "participant")
    made = await hook(env, clinic, receiver.url, events=["file.clean"])
    await status(await upload(env, clinic, b"report one"), 201)
    letters = await until("the dead letter in the admin API", lambda: _dead_letters(env))
    assert len(letters) == 1
    letter = letters[0]
    assert letter["webhookId"] == made["id"]
    assert letter["attempts"] == 2
    assert letter["lastStatus"] == 500
    assert letter["payload"]["type"] == "file.clean"
    assert len(receiver.got) == 2  # both attempts, the same id
    assert set(receiver.ids()) == {letter["id"]}
    metrics = await (await env.client.get("/metrics")).text()
    assert _sample(metrics, "fileshare_webhook_attempts_total", outcome="dead") == 1
    assert _sample(metrics, "fileshare_webhook_attempts_total", outcome="retry") == 1

    # Nobody else can send it again, or learn that it exists.
    stranger = await register(env, "stranger", "participant")
    retry = f"/v1/webhooks/{made['id']}/deliveries/{letter['id']}/retry"
    await status(await env.client.post(retry, headers=stranger), 404)
    receiver.status = 204
    await status(await env.client.post(retry, headers=clinic), 202)
    await until(
        "the letter delivered",
        lambda: _matching(
            deliveries(env, clinic, made["id"]),
            lambda items: [d["state"] for d in items] == ["delivered"],
        ),
    )
    assert receiver.ids() == [letter["id"]] * 3
    # Only a dead letter is sent again.
    await status(await env.client.post(retry, headers=clinic), 409)
    trail = await status(
        await env.client.get("/v1/audit", params={"action": "webhook.retry"}, headers=ROOT), 200
    )
    assert [r["client"] for r in trail["items"]] == ["clinic"]


async def _dead_letters(env: Env) -> list[dict[str, Any]] | None:
    answer = await status(
        await env.client.get(
            "/v1/admin/webhooks/deliveries", params={"state": "dead"}, headers=ROOT
        ),
        200,
    )
    items: list[dict[str, Any]] = answer["items"]
    return items or None


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2/hook",  # loopback (only 127.0.0.1 is allowed here)
        "https://169.254.169.254/latest/meta-data/",  # the cloud's metadata service
        "https://10.0.0.7/hook",
        "https://192.168.1.1/hook",
        "https://100.64.0.1/hook",  # shared address space (CGNAT)
        "https://[::1]/hook",
        "https://[fe80::1]/hook",
        "https://[fd00::1]/hook",
        "https://[::ffff:10.0.0.1]/hook",  # IPv4-mapped
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",
        "http://8.8.8.8/hook",  # plain http beyond loopback
        "https://203.0.113.9/hook",  # documentation addresses
        "https://user:pw@files.example.com/hook",
        "ftp://files.example.com/hook",
        "hook",
    ],
)
async def test_callback_urls_that_would_reach_private_targets_are_refused(
    env: Env, url: str
) -> None:
    clinic = await register(env, "clinic", "participant")
    problem = await status(
        await env.client.post("/v1/webhooks", json={"url": url}, headers=clinic), 422
    )
    assert problem["code"] == "webhook_target_refused"
    listed = await status(await env.client.get("/v1/webhooks", headers=clinic), 200)
    assert listed["items"] == []


async def test_webhooks_belong_to_registered_clients_and_hear_only_what_they_may_read(
    env: Env, receiver: Receiver
) -> None:
    await receiver.start()
    # A bootstrap key's principal is no registered client: nothing to hang a webhook on.
    problem = await status(
        await env.client.post("/v1/webhooks", json={"url": receiver.url}, headers=ALICE), 403
    )
    assert problem["code"] == "forbidden"
    clinic = await register(env, "clinic", "participant")
    other = await register(env, "other", "participant")
    reader = await register(env, "reader", "researcher")
    await grant(env, "reader", "clinic", "read")
    mine = await hook(env, clinic, receiver.url)
    theirs = await hook(env, other, receiver.url.replace("/hook", "/hook?for=other"))
    granted = await hook(env, reader, receiver.url.replace("/hook", "/hook?for=reader"))
    # Another client's webhook is not found, whatever the route.
    for path in (f"/v1/webhooks/{mine['id']}", f"/v1/webhooks/{mine['id']}/deliveries"):
        await status(await env.client.get(path, headers=other), 404)
    await status(await env.client.delete(f"/v1/webhooks/{mine['id']}", headers=other), 404)

    made = await status(await upload(env, clinic, b"the clinic's report"), 201)
    await until("two messages", lambda: len(receiver.got) == 2)
    for_whom = {m["data"]["fileId"] for m in (json.loads(b) for _, b in receiver.got)}
    assert for_whom == {made["id"]}
    assert await deliveries(env, other, theirs["id"]) == []
    assert [d["type"] for d in await deliveries(env, reader, granted["id"])] == ["file.clean"]
    listed = await status(await env.client.get("/v1/admin/webhooks", headers=ROOT), 200)
    assert {w["clientId"] for w in listed["items"]} == {"clinic", "other", "reader"}
    assert all("secret" not in w for w in listed["items"])

    # Removed: its waiting messages go with it; the trail has both changes.
    await status(await env.client.delete(f"/v1/webhooks/{mine['id']}", headers=clinic), 204)
    await status(await env.client.get(f"/v1/webhooks/{mine['id']}", headers=clinic), 404)
    trail = await status(
        await env.client.get("/v1/audit", params={"pageSize": "100"}, headers=ROOT), 200
    )
    actions = [r["action"] for r in trail["items"]]
    assert actions.count(Action.WEBHOOK_CREATE.value) == 3
    assert actions.count(Action.WEBHOOK_DELETE.value) == 1


async def test_a_rescan_that_finds_a_served_file_infected_tells_its_readers(
    make_env: Any, growing_clamd: Clamd, receiver: Receiver
) -> None:
    env: Env = await make_env(
        api_keys={"root": ROOT_KEY},
        admins=frozenset({"root"}),
        clamd=ClamdAddress(host=growing_clamd.host, port=growing_clamd.port),
        webhook_private_hosts=frozenset({"127.0.0.1"}),
        webhook_backoff=0.1,
    )
    await receiver.start()
    clinic = await register(env, "clinic", "participant")
    made = await hook(env, clinic, receiver.url, events=["file.rescanned"])
    marker = _marker()
    tainted = os.urandom(100_000) + marker
    kept = await status(await upload(env, clinic, tainted), 201)
    fine = await status(await upload(env, clinic, os.urandom(10_000)), 201)

    await _learn(growing_clamd, env, marker)
    report = await env.client.app[RESCANNER].run(scanned_before=datetime.now(UTC))
    assert report.infected == [hashlib.sha256(tainted).hexdigest()]
    await until("the rescan's message", lambda: receiver.got)
    ((headers, body),) = receiver.got
    message = verified(made["secret"], headers, body)
    assert message["type"] == "file.rescanned"
    assert message["data"]["fileId"] == kept["id"]
    assert message["data"]["state"] == "infected"
    assert message["data"]["signature"] == f"{SIGNATURE}.UNOFFICIAL"
    assert message["data"]["trigger"] == "rescan"
    # The clean rescan of the other file changed nothing anybody sees: no message.
    items = await deliveries(env, clinic, made["id"])
    assert [d["payload"]["data"]["fileId"] for d in items] == [kept["id"]]
    assert fine["id"] != kept["id"]


async def test_each_attempt_checks_its_target_again_and_connects_only_where_allowed(
    receiver: Receiver,
) -> None:
    """The rules at delivery, not registration's: a callback that was allowed (loopback,
    listed) and is no longer — an operator narrowed FILESHARE_WEBHOOK_PRIVATE_HOSTS, or a
    name now resolves inside — is not reached, by literal or by name."""
    await receiver.start()
    now = datetime.now(UTC)

    def message(url: str) -> Due:
        return Due("msg_1", "wh_1", url, signing.new_secret(), "file.clean", "{}", 0, now, False)

    allowed = Targets.of(["127.0.0.1"], frozenset())
    narrowed = Targets.of([], frozenset())
    by_name = receiver.url.replace("127.0.0.1", "localhost")
    for targets, url, error in (
        (allowed, receiver.url, None),
        (allowed, by_name, None),
        # The literal: refused before any connection.
        (narrowed, receiver.url, "the callback URL targets 127.0.0.1"),
        # The name: its loopback address dropped by the resolver, nothing left to connect to.
        (narrowed, by_name, "no connection"),
    ):
        worker = Deliverer(
            outbox=None,  # type: ignore[arg-type] (only _post runs: nothing is leased)
            targets=targets,
            attempts=1,
            backoff=1.0,
            timeout=5.0,
            metrics=None,
            clock=lambda: datetime.now(UTC),
        )
        async with worker:
            attempt = await worker._post(message(url))
        assert attempt.delivered is (error is None), (url, attempt)
        assert (attempt.error or "").startswith(error or ""), attempt
    assert len(receiver.got) == 2


async def test_bad_webhook_requests_get_problems_and_register_nothing(
    env: Env, receiver: Receiver
) -> None:
    clinic = await register(env, "clinic", "participant")
    c = env.client
    for body, code in (
        ({"url": receiver.url, "events": "file.clean"}, "validation_failed"),
        ({"url": receiver.url, "events": []}, "validation_failed"),
        ({"url": receiver.url, "events": ["file.exploded"]}, "validation_failed"),
        ({"url": receiver.url, "secret": "mine"}, "validation_failed"),
        ({"url": 42}, "validation_failed"),
        ({}, "validation_failed"),
    ):
        problem = await status(await c.post("/v1/webhooks", json=body, headers=clinic), 422)
        assert problem["code"] == code, (body, problem)
    problem = await status(
        await c.post(
            "/v1/webhooks",
            data=b"{not json",
            headers={**clinic, "Content-Type": "application/json"},
        ),
        400,
    )
    assert problem["code"] == "invalid_json"
    assert (await status(await c.get("/v1/webhooks", headers=clinic), 200))["items"] == []

    made = await hook(env, clinic, receiver.url)
    path = f"/v1/webhooks/{made['id']}/deliveries"
    for query in (
        {"state": "bogus"},
        {"pageSize": "0"},
        {"other": "1"},
        {"state": ["dead", "pending"]},
    ):
        problem = await status(await c.get(path, params=query, headers=clinic), 400)
        assert problem["code"] == "invalid_parameter", (query, problem)
    missing = f"/v1/webhooks/{made['id']}/deliveries/msg_{'0' * 32}/retry"
    assert (await status(await c.post(missing, headers=clinic), 404))["code"] == "not_found"
