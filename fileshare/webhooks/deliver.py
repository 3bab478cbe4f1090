"""The webhook worker: posts the outbox's messages, at least once each.

Every replica runs one. It leases due messages (``index.outbox``), posts each with its
signature headers, and settles it: a 2xx answer delivers it; anything else — another
status, a redirect (never followed), a refused target, a timeout, no connection — is
tried again after a growing delay (``FILESHARE_WEBHOOK_BACKOFF`` times 6ⁿ, at most 10 hours,
±20 % so that a receiver back from an outage is not hit by every message at once), until
``FILESHARE_WEBHOOK_ATTEMPTS`` attempts made it dead. A replica that dies mid-attempt
leaves its lease to expire and the message is sent again: receivers deduplicate on
``webhook-id``, which never changes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import datetime, timedelta

import aiohttp
import structlog

from fileshare.index.outbox import Attempt, Due, Outbox
from fileshare.metrics import Metrics
from fileshare.webhooks import signing
from fileshare.webhooks.targets import GuardedResolver, Targets

log = structlog.get_logger(__name__)

#: Attempts in flight at once, per replica, and messages leased per round.
CONCURRENCY = 8
BATCH = CONCURRENCY * 4
#: How often the outbox is looked at when nothing was due.
POLL_SECONDS = 1.0
#: The longest wait between two attempts.
MAX_DELAY = 10 * 3600.0
#: Delivered messages are kept this long (the deliveries API shows them), then forgotten.
KEEP_DELIVERED = timedelta(days=7)
PRUNE_EVERY = 3600.0
#: How much of an answer is read (and dropped): receivers should answer at once.
ANSWER_LIMIT = 64 * 1024
USER_AGENT = "fileshare-webhooks/1"


def retry_delay(attempts: int, backoff: float, jitter: float) -> float:
    """Seconds before the next attempt, after ``attempts`` failed ones (1, 2, ...);
    ``jitter`` in [0, 1) spreads it by ±20 %."""
    base = min(backoff * 6.0 ** (attempts - 1), MAX_DELAY)
    return base * (0.8 + 0.4 * jitter)


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        targets: Targets,
        *,
        attempts: int,
        backoff: float,
        timeout: float,
        metrics: Metrics | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.outbox = outbox
        self.targets = targets
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.metrics = metrics
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._pruned = 0.0

    async def __aenter__(self) -> Deliverer:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.targets), limit=CONCURRENCY)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            trust_env=False,  # no proxy from the environment: it would resolve for us
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def run_once(self) -> int:
        """Make one attempt at every message due now; how many were attempted."""
        now = self.clock()
        # Long enough for the last of the batch, which waits for the ones before it: a
        # lease that ran out mid-round would let another replica send it at the same time.
        lease = timedelta(seconds=self.timeout * (BATCH // CONCURRENCY + 1) + 30)
        due = await self.outbox.lease(now, now + lease, BATCH)
        unsettled = {m.id: m for m in due}
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(message: Due) -> None:
            async with slots:
                await self._attempt(message)
            unsettled.pop(message.id, None)

        try:
            await asyncio.gather(*(one(m) for m in due))
        finally:
            if unsettled:  # stopping mid-round: give them back rather than hold them
                await asyncio.shield(self._release(list(unsettled.values())))
        return len(due)

    async def _release(self, held: list[Due]) -> None:
        try:
            await self.outbox.release(held)
        except Exception as exc:  # their leases run out instead
            log.warning("webhook.not_released", error=type(exc).__name__)

    async def forever(self) -> None:
        """Attempt what is due, wait while nothing is, and count the outbox for the
        metrics; an index that is down costs a round, not the worker."""
        loop = asyncio.get_running_loop()
        while True:
            attempted = 0
            try:
                attempted = await self.run_once()
                if self.metrics is not None:
                    for state, n in (await self.outbox.counts()).items():
                        self.metrics.webhook_outbox.labels(state).set(n)
                if loop.time() - self._pruned > PRUNE_EVERY:
                    self._pruned = loop.time()
                    await self.outbox.prune(self.clock() - KEEP_DELIVERED)
            except Exception as exc:
                log.warning("webhook.round_failed", error=type(exc).__name__)
            if not attempted:
                await asyncio.sleep(POLL_SECONDS)

    async def _attempt(self, message: Due) -> None:
        bound = log.bind(message_id=message.id, webhook_id=message.endpoint_id)
        if message.revoked:
            attempt = Attempt(False, error="its client was revoked")
        else:
            attempt = await self._post(message)
        if not attempt.delivered and not message.revoked:
            made = message.attempts + 1
            if made < self.attempts:
                delay = retry_delay(made, self.backoff, random.random())  # noqa: S311
                attempt = Attempt(
                    False,
                    attempt.status,
                    attempt.error,
                    self.clock() + timedelta(seconds=delay),
                )
        outcome = "delivered" if attempt.delivered else "retry" if attempt.retry_at else "dead"
        try:
            if not await self.outbox.settle(message, attempt, self.clock()):
                bound.warning("webhook.lease_lost")  # another replica's attempt counts
                return
        except Exception as exc:  # the lease runs out and the message is sent again
            bound.warning("webhook.not_settled", error=type(exc).__name__)
            return
        if self.metrics is not None:
            self.metrics.webhooks.labels(outcome).inc()
        if outcome == "dead":
            bound.error("webhook.dead", status=attempt.status, error=attempt.error)
        elif outcome == "retry":
            bound.info("webhook.attempt_failed", status=attempt.status, error=attempt.error)

    async def _post(self, message: Due) -> Attempt:
        assert self._session is not None, "use the Deliverer as an async context manager"
        problem = self.targets.url_problem(message.url)
        if problem is not None:  # the rules changed since it was registered
            return Attempt(False, error=f"the callback URL {problem}")
        headers = signing.headers(message.secret, message.id, self.clock(), message.body)
        headers["Content-Type"] = "application/json"
        try:
            async with self._session.post(
                message.url,
                data=message.body.encode(),
                headers=headers,
                allow_redirects=False,
            ) as answer:
                await answer.content.read(ANSWER_LIMIT)
                status = answer.status
        except TimeoutError:
            return Attempt(False, error="no answer in time")
        except (aiohttp.ClientError, OSError) as exc:
            # The class only: a message can repeat the URL, which may carry a token.
            return Attempt(False, error=f"no connection ({type(exc).__name__})")
        except Exception as exc:  # anything else fails this attempt, not the round
            log.error("webhook.attempt_crashed", message_id=message.id, exc_info=True)
            return Attempt(False, error=f"not sent ({type(exc).__name__})")
        if 200 <= status < 300:
            return Attempt(True, status=status)
        return Attempt(False, status=status, error=f"answered {status}")
