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


#: clamd's names for "I could not look", not "I found something": a limit hit
#: (``AlertExceedsMax``: size, recursion, file count, time) or content it cannot decrypt
#: (``AlertEncryptedArchive``, ``AlertEncryptedDoc``). Such bytes are not known to be clean
#: and not known to be malware: their own state, ``unscannable``.
UNSCANNABLE_PREFIXES = ("Heuristics.Limits.Exceeded", "Heuristics.Encrypted.")


@dataclass(frozen=True)
class Verdict:
    clean: bool
    #: The signature name when not clean (clamd's ``<name> FOUND``).
    signature: str | None = None

    @property
    def unscannable(self) -> bool:
        """clamd answered FOUND only because it could not scan the bytes through."""
        return (
            not self.clean
            and self.signature is not None
            and self.signature.startswith(UNSCANNABLE_PREFIXES)
        )


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
