"""The scanner contract. Every failure is a rejection: the pipeline fails closed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ScanError(Exception):
    """The scanner could not give a verdict (down, timeout, protocol error, ``ERROR``
    reply, unknown reply). Never treated as clean."""


class ScanSizeExceeded(ScanError):
    """The scanner refused the stream as too long (clamd's StreamMaxLength)."""


class ScannerBusy(ScanError):
    """Every scan slot stayed taken for too long: shed load rather than queue forever."""


@dataclass(frozen=True)
class Verdict:
    clean: bool
    #: The signature name when infected (clamd's ``<name> FOUND``).
    signature: str | None = None


class ScanSession(Protocol):
    """One stream being scanned."""

    async def feed(self, chunk: bytes) -> None:
        """Send ``chunk``; applies back-pressure. Raises ``ScanError`` as soon as the
        scanner has answered early (size limit) or gone away."""

    async def verdict(self) -> Verdict:
        """End the stream and wait for the verdict. Raises ``ScanError`` on any failure."""

    async def cancel(self) -> None:
        """Drop the stream without a verdict (clamd discards an unterminated stream
        unscanned). Idempotent, never raises."""


class Scanner(Protocol):
    async def open(self) -> ScanSession:
        """Start a scan. Waits for a free slot (bounded concurrency); raises
        ``ScanError`` if the scanner cannot be reached."""

    async def ping(self) -> None:
        """Raise ``ScanError`` unless the scanner answers."""

    async def version(self) -> str:
        """The scanner's version string (engine/database/date)."""

    async def provenance(self) -> str | None:
        """The version string verdicts are being made with (cached briefly), or None
        when the scanner cannot tell; recorded beside every verdict."""
