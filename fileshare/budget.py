"""A global memory budget for uploads in flight.

Each upload reserves its worst case (``Settings.per_upload_memory``) before it reads a
byte. When the budget is spent, new uploads wait a little (back-pressure) and are then
refused with 503 rather than letting the process grow until it is OOM-killed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fileshare.errors import Overloaded


class MemoryBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.in_use = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, amount: int, *, wait: float) -> AsyncIterator[None]:
        if amount > self.total:
            raise ValueError("a single reservation exceeds the whole budget")
        async with self._changed:
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait_for(lambda: self.in_use + amount <= self.total)
            except TimeoutError:
                raise Overloaded("the upload memory budget is spent; retry later") from None
            self.in_use += amount
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= amount
                self._changed.notify_all()
