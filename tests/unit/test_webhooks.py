"""Webhooks' pure parts: which audit rows are messages, the signature (against the Standard
Webhooks reference verifier and a plain HMAC), the retry schedule, and the SSRF rules —
including the resolver that drops private addresses, on this machine's real resolver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from fileshare.audit import Action, AuditEvent, Result
from fileshare.webhooks import messages, signing
from fileshare.webhooks.deliver import MAX_DELAY, retry_delay
from fileshare.webhooks.messages import MessageType
from fileshare.webhooks.targets import GuardedResolver, Targets, public

NOW = datetime(2026, 12, 3, 12, 0, 0, 250_000, tzinfo=UTC)


def event(action: Action, result: Result = Result.SUCCESS, **detail: object) -> AuditEvent:
    return AuditEvent(
        action=action, result=result, owner="clinic", file_id="f1", sha256="a" * 64, detail=detail
    )


@pytest.mark.parametrize(
    ("made", "kind"),
    [
        # A clean upload is told by the record it made (a deduplicated one has no verdict).
        (event(Action.SCAN_VERDICT, state="clean"), None),
        (event(Action.FILE_UPLOAD), MessageType.CLEAN),
        (event(Action.FILE_REPLACE), MessageType.CLEAN),
        (event(Action.SCAN_VERDICT, Result.DENIED, state="infected"), MessageType.INFECTED),
        (event(Action.SCAN_VERDICT, Result.DENIED, state="unscannable"), MessageType.UNSCANNABLE),
        (
            event(Action.SCAN_VERDICT, Result.DENIED, state="infected", trigger="rescan"),
            MessageType.RESCANNED,
        ),
        # A clean rescan changes nothing anybody sees.
        (event(Action.SCAN_VERDICT, state="clean", trigger="rescan"), None),
        # ... unless it makes a content left failed servable again.
        (
            event(Action.SCAN_VERDICT, state="clean", trigger="rescan", previous_state="failed"),
            MessageType.RESCANNED,
        ),
        (event(Action.UPLOAD_FINISH, Result.FAILED, state="failed"), MessageType.FAILED),
        (event(Action.UPLOAD_FINISH, Result.DENIED, state="rejected"), MessageType.UPLOAD_REJECTED),
        (event(Action.UPLOAD_FINISH, Result.DENIED, state="expired"), MessageType.UPLOAD_EXPIRED),
        (event(Action.FILE_UPLOAD, Result.FAILED, code="scanner_unavailable"), MessageType.FAILED),
        # A refused request (a 4xx) made nothing to report; a success is the verdict's row.
        (event(Action.FILE_UPLOAD, Result.DENIED, code="infected"), None),
        (event(Action.FILE_DELETE), MessageType.DELETED),
        (event(Action.FILE_DELETE, Result.DENIED), None),
        (event(Action.FILE_DOWNLOAD), None),
        # Nobody's files: a partner link's verdict, an admin's work.
        (AuditEvent(action=Action.SCAN_VERDICT, detail={"state": "infected"}), None),
        (AuditEvent(action=Action.CLIENT_CREATE), None),
    ],
)
def test_which_audit_rows_are_messages(made: AuditEvent, kind: MessageType | None) -> None:
    assert messages.message_type(made) is kind


def test_a_message_carries_ids_and_states_never_names_or_metadata() -> None:
    row = event(
        Action.SCAN_VERDICT,
        Result.DENIED,
        state="infected",
        scanner="ClamAV 1.4.6",
        signature="Eicar-Signature",
        name="secret.pdf",
    )
    body = json.loads(messages.body(MessageType.INFECTED, row, 42, NOW))
    assert body == {
        "type": "file.infected",
        "timestamp": "2026-12-03T12:00:00.250Z",
        "data": {
            "owner": "clinic",
            "fileId": "f1",
            "sha256": "a" * 64,
            "state": "infected",
            "signature": "Eicar-Signature",
            "scanner": "ClamAV 1.4.6",
            "auditSeq": 42,
        },
    }


def test_the_signature_is_standard_webhooks_and_a_changed_byte_breaks_it() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == signing.SECRET_BYTES
    assert signing.new_secret() != secret
    body = '{"type":"file.clean"}'
    headers = signing.headers(secret, "msg_1", NOW, body)
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"msg_1.{headers['webhook-timestamp']}.{body}".encode()
    mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{mac}"
    now = dict(signing.headers(secret, "msg_1", datetime.now(UTC), body))
    assert Webhook(secret).verify(body, now) == {"type": "file.clean"}
    for changed in (
        (body.replace("clean", "clear"), now),
        (body, {**now, "webhook-id": "msg_2"}),
        (body, headers),  # signed at NOW: too old for a receiver
    ):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(*changed)


def test_retries_wait_longer_each_time_up_to_ten_hours_spread_by_a_fifth() -> None:
    waits = [retry_delay(n, 5.0, 0.5) for n in range(1, 9)]
    assert waits[:5] == [5.0, 30.0, 180.0, 1080.0, 6480.0]
    assert waits[5:] == [MAX_DELAY] * 3
    assert retry_delay(1, 5.0, 0.0) == pytest.approx(4.0)
    assert retry_delay(1, 5.0, 0.999999) == pytest.approx(6.0)


NONE = Targets.of([], frozenset())


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://127.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/",
        "https://172.16.0.1/",
        "https://192.168.0.1/",
        "https://100.64.0.1/",
        "https://0.0.0.0/",
        "https://255.255.255.255/",
        "https://224.0.0.251/",
        "https://198.18.0.1/",  # benchmarking
        "https://[::1]/",
        "https://[::]/",
        "https://[fe80::1]/",
        "https://[fc00::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:169.254.169.254]/",
        "https://[ff02::1]/",
        # IPv6 standing for IPv4 through a gateway: NAT64, 6to4, Teredo, compatible forms.
        "https://[64:ff9b::a00:1]/",
        "https://[64:ff9b:1::a00:1]/",
        "https://[2002:7f00:1::]/",
        "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
        "https://[::127.0.0.1]/",
        "https://[::ffff:0:7f00:1]/",
        # What aiohttp would connect to is not what the text says (yarl maps these).
        "https://\uff11\uff12\uff17.0.0.1/",
        "https://b\u00fccher.example/",
        "http://8.8.8.8/",  # plain http beyond loopback
        "https://u:p@example.com/",
        "https://example.com/#frag",
        "https://example.com:99999/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "//example.com/",
        "https://" + "a" * 2100 + ".com/",
    ],
)
def test_urls_that_could_reach_inside_are_refused(url: str) -> None:
    assert NONE.url_problem(url) is not None


def test_public_addresses_and_listed_private_ones_are_allowed() -> None:
    assert NONE.url_problem("https://8.8.8.8/hook") is None
    assert NONE.url_problem("https://[2606:4700:4700::1111]/hook") is None
    assert NONE.url_problem("https://receiver.example.com/hook?x=1") is None
    inside = Targets.of(["10.0.0.0/8", "Hooks.Cluster.Local", "127.0.0.1"], frozenset())
    assert inside.url_problem("https://10.9.8.7/hook") is None
    assert inside.url_problem("https://11.0.0.1/hook") is None
    assert inside.url_problem("https://172.16.0.1/hook") is not None
    # Loopback may go without TLS (as for every other dependency), once it is allowed.
    assert inside.url_problem("http://127.0.0.1:8080/hook") is None
    assert inside.url_problem("http://10.9.8.7/hook") is not None  # plain http
    listed = Targets.of(["10.9.8.7"], frozenset({"10.9.8.7"}))
    assert listed.url_problem("http://10.9.8.7/hook") is None


async def test_a_name_is_checked_by_what_it_resolves_to_at_registration() -> None:
    assert await NONE.check("https://localhost/hook") is not None
    nowhere = await NONE.check("https://does-not-exist.invalid/hook")
    assert nowhere is not None
    # This machine's own name resolves inside (/etc/hosts: loopback or the pod's private
    # address). One answer for both: which it is would map the cluster's private names.
    host = socket.gethostname()
    addresses = {ipaddress.ip_address(i[4][0]) for i in socket.getaddrinfo(host, 443)}
    assert not any(public(a) for a in addresses), addresses
    assert await NONE.check(f"https://{host}/hook") == nowhere
    allowed = Targets.of(["127.0.0.1", "::1"], frozenset())
    assert await allowed.check("https://localhost/hook") is None


async def test_the_resolver_never_hands_aiohttp_an_address_it_may_not_reach() -> None:
    refusing = GuardedResolver(NONE)
    try:
        with pytest.raises(OSError, match="may not reach"):
            await refusing.resolve("localhost", 443)
    finally:
        await refusing.close()
    allowing = GuardedResolver(Targets.of(["127.0.0.0/8"], frozenset()))
    try:
        found = await allowing.resolve("localhost", 443)
        assert found
        assert {r["host"] for r in found} == {"127.0.0.1"}
    finally:
        await allowing.close()
