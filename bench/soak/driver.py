"""The load: ``clients`` concurrent workers, each picking a random operation until the time is
up — fresh uploads, duplicates, EICAR alone and buried, uploads cut mid-body, deletes, reads —
and writing every outcome into the ``Ledger``. Samplers watch the server meanwhile (RSS,
the memory budget in use, /healthz)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from bench.procs import rss_bytes
from bench.soak.bodies import (
    Body,
    BodyPayload,
    eicar_alone,
    eicar_buried,
    pick_size,
    size_class,
)
from bench.soak.ledger import Ledger, Record, State

#: 503 codes a client is told to retry after ``Retry-After``: the budget or the scan slots
#: are spent (what the soak provokes on purpose), and a content a concurrent DELETE removed
#: while this upload deduplicated onto it (the soak's deletes race its duplicates).
RETRYABLE = frozenset({"overloaded", "content_changed"})
#: A Retry-After above this is not waited for in full (the server says 5 s).
MAX_RETRY_WAIT = 30.0

#: Relative weights of the operations a worker picks from.
OPERATIONS: Mapping[str, float] = {
    "fresh": 50,
    "fresh_digest": 10,
    "dup_new_name": 5,
    "dup_same_name": 4,
    "dup_other_owner": 5,
    "dup_digest": 4,
    "dup_deleted": 2,
    "eicar_alone": 2,
    "eicar_buried": 3,
    "dup_infected": 1,
    "abort": 5,
    "delete": 6,
    "read": 3,
}
#: Share of uploads sent with ``Expect: 100-continue``.
EXPECT_100_SHARE = 0.1


@dataclass(frozen=True)
class Plan:
    clients: int = 50
    duration: float = 600.0
    max_size: int = 64 * 1024 * 1024
    seed: int = 1
    #: principal -> API key; every principal owns its files.
    owners: Mapping[str, str] = field(default_factory=dict)
    #: Retries of a 503 go on this long after the end of the load, then are given up.
    retry_grace: float = 60.0
    #: One request may take this long before it counts as hung (a loss).
    op_timeout: float = 180.0
    rss_interval: float = 0.5
    metrics_interval: float = 2.0


@dataclass
class Answer:
    status: int
    body: bytes
    retry_after: str | None
    seconds: float
    payload: BodyPayload

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def code(self) -> str | None:
        doc = self.json()
        return doc.get("code") if isinstance(doc, dict) else None


class Api:
    """fileshare over HTTP, as each owner."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, keys: Mapping[str, str]):
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.keys = dict(keys)
        url = URL(self.base_url)
        self.host, self.port = url.host or "127.0.0.1", url.port or 80

    def auth(self, owner: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[owner]}"}

    async def post(
        self, owner: str, body: Body, name: str, *, digest: str | None, expect100: bool
    ) -> Answer:
        headers = self.auth(owner)
        if digest is not None:
            raw = base64.b64encode(bytes.fromhex(digest)).decode()
            headers["Content-Digest"] = f"sha-256=:{raw}:"
        payload = BodyPayload(body)
        started = time.perf_counter()
        async with self.http.post(
            f"{self.base_url}/v1/files",
            params={"name": name},
            data=payload,
            headers=headers,
            expect100=expect100,
        ) as resp:
            raw_body = await resp.read()
            return Answer(
                resp.status,
                raw_body,
                resp.headers.get("Retry-After"),
                time.perf_counter() - started,
                payload,
            )

    async def delete(self, owner: str, file_id: str) -> tuple[int, bytes, str | None]:
        async with self.http.delete(
            f"{self.base_url}/v1/files/{file_id}", headers=self.auth(owner)
        ) as resp:
            return resp.status, await resp.read(), resp.headers.get("Retry-After")

    async def metadata_status(self, owner: str, file_id: str) -> int:
        async with self.http.get(
            f"{self.base_url}/v1/files/{file_id}/metadata", headers=self.auth(owner)
        ) as resp:
            await resp.read()
            return resp.status

    async def download(self, owner: str, file_id: str) -> tuple[int, str, int]:
        """(status, sha256 hex, size) of the body as it streams in (never held whole)."""
        h = hashlib.sha256()
        size = 0
        async with self.http.get(
            f"{self.base_url}/v1/files/{file_id}", headers=self.auth(owner)
        ) as resp:
            async for chunk in resp.content.iter_chunked(256 * 1024):
                h.update(chunk)
                size += len(chunk)
            return resp.status, h.hexdigest(), size

    async def metrics(self) -> dict[str, float]:
        async with self.http.get(f"{self.base_url}/metrics") as resp:
            text = await resp.text()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    found[name] = float(value)
        return found

    async def aborted_post(
        self, owner: str, body: Body, name: str, cut: int, *, reset: bool
    ) -> int:
        """A raw POST that declares the whole body, sends ``cut`` bytes of it and goes away:
        a FIN (``close``) or, with ``reset``, an RST (``SO_LINGER`` 0). Returns the bytes
        the socket took."""
        _reader, writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST /v1/files?name={quote(name)} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.keys[owner]}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {body.size}\r\n\r\n"
        )
        sent = 0
        try:
            writer.write(head.encode())
            for chunk in body.chunks():
                if sent >= cut:
                    break
                piece = chunk[: cut - sent]
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
        except OSError:
            pass  # the server closed first (a refusal): gone all the same
        finally:
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                writer.transport.abort()
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        return sent


@dataclass
class Samples:
    """What the samplers saw: (seconds since start, value)."""

    rss: list[tuple[float, int]] = field(default_factory=list)
    budget_in_use: list[tuple[float, float]] = field(default_factory=list)
    inflight: list[tuple[float, float]] = field(default_factory=list)
    healthz_seconds: list[float] = field(default_factory=list)
    healthz_failures: int = 0
    server_died_at: float | None = None


class Driver:
    def __init__(
        self,
        plan: Plan,
        api: Api,
        ledger: Ledger,
        *,
        server_pid: int,
        server_running: Callable[[], bool],
    ) -> None:
        self.plan = plan
        self.api = api
        self.ledger = ledger
        self.server_pid = server_pid
        self.server_running = server_running
        self.samples = Samples()
        self.owners = sorted(plan.owners)
        self._rng = random.Random(plan.seed)
        self._serial = 0
        self._started = 0.0
        self._stop_at = 0.0
        self._give_up_at = 0.0
        self.ops_started: Counter[str] = Counter()
        self.ops_seconds = 0.0

    # -- identities -----------------------------------------------------------------------

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    def _seed(self) -> int:
        return self.plan.seed * 1_000_000_000 + self._next()

    def _name(self, what: str) -> str:
        return f"soak-{self._next():08d}-{what}.bin"

    # -- the run --------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """A few uploads one at a time before the baseline is read (recorded as any other):
        the first write into a fresh bucket and the first multipart upload cost the store
        more, and the server's first requests import and allocate what it keeps."""
        rng = random.Random(self.plan.seed - 1)
        owner = self.owners[0]
        for size in (1024, 300 * 1024, min(9 * 1024 * 1024, self.plan.max_size)):
            await self._upload(rng, owner, Body(self._seed(), size), self._name("warm"))

    async def run(self) -> float:
        """The load for ``plan.duration`` seconds; returns the wall seconds it took (until the
        last operation finished)."""
        self._started = time.monotonic()
        self._stop_at = self._started + self.plan.duration
        self._give_up_at = self._stop_at + self.plan.retry_grace
        samplers = [
            asyncio.create_task(self._sample_rss()),
            asyncio.create_task(self._sample_metrics()),
            asyncio.create_task(self._progress()),
        ]
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(self.plan.clients):
                    tg.create_task(self._worker(i))
        finally:
            for task in samplers:
                task.cancel()
            await asyncio.wait(samplers)
        return time.monotonic() - self._started

    async def _worker(self, index: int) -> None:
        rng = random.Random(self.plan.seed * 7919 + index)
        names, weights = zip(*OPERATIONS.items(), strict=True)
        while time.monotonic() < self._stop_at and self.server_running():
            op = rng.choices(names, weights=weights)[0]
            self.ops_started[op] += 1
            # Every request is bounded on its own (``op_timeout``, and the session's read
            # timeout): an operation retrying 503s for long is not hung.
            await self._operation(rng, op)

    async def _operation(self, rng: random.Random, op: str) -> None:
        ledger, owner = self.ledger, rng.choice(self.owners)
        if op == "fresh" or op == "fresh_digest":
            body = Body(self._seed(), pick_size(rng, self.plan.max_size))
            await self._upload(rng, owner, body, self._name(op), digest=op == "fresh_digest")
        elif op in ("dup_new_name", "dup_other_owner", "dup_digest", "dup_deleted"):
            source = (
                rng.choice(ledger.deleted_bodies)
                if op == "dup_deleted" and ledger.deleted_bodies
                else ledger.pick_clean(rng)
            )
            if source is None:
                await self._operation(rng, "fresh")
                return
            body, _, source_owner = source
            if op == "dup_new_name":
                owner = source_owner
            elif op == "dup_other_owner":
                # Someone else's bytes: the same content, a record of this owner's own.
                owner = rng.choice([o for o in self.owners if o != source_owner] or self.owners)
            await self._upload(rng, owner, body, self._name(op), digest=op == "dup_digest")
        elif op == "dup_same_name":
            record = ledger.pin(rng)
            if record is None:
                await self._operation(rng, "fresh")
                return
            await self._upload(rng, record.owner, record.body, record.name, same_as=record)
        elif op == "eicar_alone":
            await self._upload(rng, owner, eicar_alone(self._seed()), self._name(op))
        elif op == "eicar_buried":
            body = eicar_buried(rng, self._seed(), max(self.plan.max_size, 1024))
            await self._upload(rng, owner, body, self._name(op))
        elif op == "dup_infected":
            if not ledger.infected:
                await self._operation(rng, "eicar_buried")
                return
            body = rng.choice(list(ledger.infected.values()))
            await self._upload(rng, owner, body, self._name(op))
        elif op == "abort":
            await self._abort(rng, owner)
        elif op == "delete":
            await self._delete(rng)
        elif op == "read":
            await self._read(rng)
        else:
            raise AssertionError(op)

    # -- uploads --------------------------------------------------------------------------

    async def _upload(
        self,
        rng: random.Random,
        owner: str,
        body: Body,
        name: str,
        *,
        digest: bool = False,
        same_as: Record | None = None,
    ) -> None:
        ledger = self.ledger
        sha = await asyncio.to_thread(lambda: body.sha256) if digest else None
        expect100 = rng.random() < EXPECT_100_SHARE
        what = f"{name} ({body.size} B{', EICAR' if body.infected else ''}) as {owner}"
        while True:
            try:
                async with asyncio.timeout(self.plan.op_timeout):
                    answer = await self.api.post(owner, body, name, digest=sha, expect100=expect100)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                ledger.loss("exception", f"POST {what}: {type(exc).__name__}: {exc}")
                return
            ledger.bytes_sent += answer.payload.sent
            if answer.status == 503 and answer.code in RETRYABLE:
                ledger.count(f"503_{answer.code}")
                if answer.retry_after is None:
                    ledger.loss("503 without Retry-After", what)
                    return
                if time.monotonic() > self._give_up_at:
                    ledger.count("retry_given_up_at_end")
                    return
                await asyncio.sleep(min(float(answer.retry_after), MAX_RETRY_WAIT))
                continue
            break
        if answer.payload.sent != body.size:
            ledger.loss("short send", f"{what}: sent {answer.payload.sent} of {body.size}")
            return
        sent_sha = answer.payload.sha256
        if body.infected:
            self._infected_answer(answer, body, sent_sha, what)
        else:
            self._clean_answer(answer, owner, body, name, sent_sha, what, same_as)

    def _infected_answer(self, answer: Answer, body: Body, sha: str, what: str) -> None:
        ledger = self.ledger
        if answer.status == 422 and answer.code == "infected":
            ledger.count("refused_infected")
            ledger.infected[sha] = body
            ledger.latency("infected", answer.seconds)
        elif answer.status in (200, 201):
            ledger.infected[sha] = body  # the end checks it is absent: it will not be
            ledger.loss("INFECTED ACKNOWLEDGED", f"{what}: {answer.status} {answer.body[:200]!r}")
        else:
            self._unexpected(answer, what)

    def _clean_answer(
        self,
        answer: Answer,
        owner: str,
        body: Body,
        name: str,
        sha: str,
        what: str,
        same_as: Record | None,
    ) -> None:
        ledger = self.ledger
        if answer.status not in (200, 201):
            if answer.status == 422 and answer.code == "infected":
                ledger.loss("clean body refused as infected", what)
            else:
                self._unexpected(answer, what)
            return
        doc = answer.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            ledger.loss("bad answer", f"{what}: {answer.status} {answer.body[:200]!r}")
            return
        if doc.get("sha256") != sha or doc.get("size") != body.size:
            ledger.loss(
                "acknowledged other bytes",
                f"{what}: sent sha256 {sha}, answer {doc.get('sha256')} size {doc.get('size')}",
            )
            return
        ledger.latency(f"ack {size_class(body.size)}", answer.seconds)
        if same_as is not None:
            # The same owner, bytes, name and type again: that record, not a new one.
            if answer.status != 200 or doc["id"] != same_as.id:
                ledger.loss(
                    "retried upload not idempotent",
                    f"{what}: {answer.status} id {doc['id']}, expected 200 id {same_as.id}",
                )
                if (owner, doc["id"]) not in ledger.records:
                    ledger.acknowledged(owner, doc["id"], name, body, sha)
                return
            same_as.acks += 1
            ledger.count("ok_200_same_record")
            ledger.bytes_acknowledged += body.size
            return
        if answer.status != 201:
            # Every other upload has a name of its own: a new record.
            ledger.loss("200 for a new name", f"{what}: id {doc['id']}")
        if (owner, doc["id"]) in ledger.records:
            ledger.loss("id reused", f"{what}: id {doc['id']} already acknowledged")
            return
        ledger.count("ok_201_created")
        ledger.acknowledged(owner, doc["id"], name, body, sha)

    def _unexpected(self, answer: Answer, what: str) -> None:
        kind = f"status {answer.status}" + (f" {answer.code}" if answer.code else "")
        self.ledger.loss(kind, f"{what}: {answer.body[:300]!r}")

    # -- aborts, deletes, reads -----------------------------------------------------------

    async def _abort(self, rng: random.Random, owner: str) -> None:
        size = max(2, pick_size(rng, self.plan.max_size))
        body = Body(self._seed(), size)
        cut = rng.randrange(0, size)
        reset = rng.random() < 0.5
        name = self._name("aborted")
        self.ledger.aborted.add((owner, name))
        try:
            async with asyncio.timeout(self.plan.op_timeout):
                sent = await self.api.aborted_post(owner, body, name, cut, reset=reset)
        except (OSError, TimeoutError) as exc:
            self.ledger.loss("exception", f"aborted POST {name}: {type(exc).__name__}: {exc}")
            return
        self.ledger.bytes_sent += sent
        self.ledger.count("aborted_reset" if reset else "aborted_close")

    async def _delete(self, rng: random.Random) -> None:
        ledger = self.ledger
        record = ledger.take_for_delete(rng)
        if record is None:
            return
        what = f"DELETE {record.id} ({record.name}) as {record.owner}"
        while True:
            try:
                async with asyncio.timeout(self.plan.op_timeout):
                    status, raw, retry_after = await self.api.delete(record.owner, record.id)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                # Unknown whether it went: the end expects neither.
                ledger.loss("exception", f"{what}: {type(exc).__name__}: {exc}")
                record.state = State.LIVE
                return
            if status == 503 and retry_after is not None and time.monotonic() < self._give_up_at:
                ledger.count("503_on_delete")
                await asyncio.sleep(min(float(retry_after), MAX_RETRY_WAIT))
                continue
            break
        if status != 204:
            ledger.loss(f"delete answered {status}", f"{what}: {raw[:200]!r}")
            record.state = State.LIVE
            return
        ledger.deleted(record)
        ledger.count("deleted")
        try:
            gone = await self.api.metadata_status(record.owner, record.id)
        except (aiohttp.ClientError, OSError) as exc:
            ledger.loss("exception", f"GET metadata after {what}: {exc!r}")
            return
        if gone != 404:
            ledger.loss("deleted file still answers", f"{what}: GET metadata {gone}")

    async def _read(self, rng: random.Random) -> None:
        record = self.ledger.take_for_read(rng)
        if record is None:
            return
        try:
            async with asyncio.timeout(self.plan.op_timeout):
                status, sha, size = await self.api.download(record.owner, record.id)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.ledger.loss("exception", f"GET {record.id}: {type(exc).__name__}: {exc}")
            return
        finally:
            record.readers -= 1
        if status != 200 or sha != record.sha256 or size != record.body.size:
            self.ledger.loss(
                "read back wrong", f"GET {record.id}: {status}, {size} B, sha256 {sha}"
            )
        else:
            self.ledger.count("read_ok")

    # -- samplers -------------------------------------------------------------------------

    async def _progress(self) -> None:
        """A line on stderr every tenth of the run (at most every minute)."""
        every = min(60.0, max(5.0, self.plan.duration / 10))
        while True:
            await asyncio.sleep(every)
            c, rss = self.ledger.counts, self.samples.rss
            print(
                f"[soak] {time.monotonic() - self._started:4.0f} s: "
                f"{c['ok_201_created'] + c['ok_200_same_record']} acknowledged, "
                f"{c['refused_infected']} infected, {c['aborted_close'] + c['aborted_reset']} "
                f"aborted, {c['deleted']} deleted, "
                f"{c['503_overloaded'] + c['503_content_changed']} retried 503s, "
                f"{sum(self.ledger.losses.values())} losses; RSS "
                f"{rss[-1][1] / 2**20 if rss else 0:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )

    async def _sample_rss(self) -> None:
        while True:
            try:
                self.samples.rss.append(
                    (time.monotonic() - self._started, rss_bytes(self.server_pid))
                )
            except OSError:
                if self.samples.server_died_at is None:
                    self.samples.server_died_at = time.monotonic() - self._started
            await asyncio.sleep(self.plan.rss_interval)

    async def _sample_metrics(self) -> None:
        while True:
            await asyncio.sleep(self.plan.metrics_interval)
            at = time.monotonic() - self._started
            try:
                started = time.perf_counter()
                async with self.api.http.get(f"{self.api.base_url}/healthz") as resp:
                    await resp.read()
                    ok = resp.status == 200
                self.samples.healthz_seconds.append(time.perf_counter() - started)
                if not ok:
                    self.samples.healthz_failures += 1
                metrics = await self.api.metrics()
            except (aiohttp.ClientError, OSError):
                self.samples.healthz_failures += 1
                continue
            self.samples.budget_in_use.append(
                (at, metrics.get("fileshare_memory_budget_in_use_bytes", float("nan")))
            )
            self.samples.inflight.append((at, metrics.get("fileshare_uploads_in_flight", 0.0)))
