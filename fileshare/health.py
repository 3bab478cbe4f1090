"""Liveness and readiness.

Readiness asks clamd, storage and the index. One slow or failed answer does not flip it:
a dependency that has answered before counts as down only after ``failure_threshold``
consecutive failures, so a single hiccup does not pull every pod out of the Service at
once; one that never answered counts as down at once. Draining (SIGTERM) makes it not
ready immediately.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[None]]


@dataclass
class Readiness:
    checks: Mapping[str, Check]
    timeout: float = 2.0
    failure_threshold: int = 3
    #: Set on SIGTERM (shared with the middleware that refuses new requests).
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    _failures: dict[str, int] = field(default_factory=dict)
    #: Checks that have answered at least once: before that, no benefit of the doubt.
    _seen_ok: set[str] = field(default_factory=set)
    #: Facts reported beside the checks (encryption at rest, plaintext connections).
    protection: dict[str, object] = field(default_factory=dict)

    async def _run(self, name: str, check: Check) -> tuple[str, str | None]:
        try:
            async with asyncio.timeout(self.timeout):
                await check()
        except Exception as exc:  # any failure of a dependency is "not ok"
            self._failures[name] = self._failures.get(name, 0) + 1
            log.warning(
                "readiness.check_failed",
                check=name,
                error=type(exc).__name__,
                consecutive=self._failures[name],
            )
            return name, type(exc).__name__
        self._failures[name] = 0
        self._seen_ok.add(name)
        return name, None

    async def evaluate(self) -> tuple[bool, dict[str, str]]:
        results = await asyncio.gather(*(self._run(n, c) for n, c in self.checks.items()))
        report: dict[str, str] = {}
        ready = not self.draining.is_set()
        for name, error in results:
            if error is None:
                report[name] = "ok"
            elif name not in self._seen_ok or self._failures[name] >= self.failure_threshold:
                report[name] = f"failing: {error}"
                ready = False
            else:
                report[name] = f"degraded: {error}"
        if self.draining.is_set():
            report["server"] = "draining"
        return ready, report


class InFlight:
    """Counts requests being handled, so a drain knows when it is done, and holds their
    tasks, so that what is left at the end of the grace period can be cancelled."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()
        if (task := asyncio.current_task()) is not None:
            self._tasks.add(task)

    def leave(self) -> None:
        self.count -= 1
        if (task := asyncio.current_task()) is not None:
            self._tasks.discard(task)
        if self.count == 0:
            self._idle.set()

    async def cancel(self, limit: float) -> None:
        """Cancel the requests still being handled and wait, at most ``limit`` seconds,
        for them to end (an upload's cleanup runs, shielded, and the app's shutdown waits
        for it)."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=limit)

    async def wait_idle(self, limit: float) -> bool:
        try:
            async with asyncio.timeout(limit):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
