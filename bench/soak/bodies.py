"""What the soak uploads: bodies made on the fly from a seed (never held whole), their sizes,
and the aiohttp payload that streams one with a ``Content-Length`` while hashing it."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from tests.servers import EICAR

KiB = 1024
MiB = 1024 * KiB
#: The piece a body is generated and sent in: what the driver holds per upload in flight.
CHUNK = 256 * KiB
OCTET_STREAM = "application/octet-stream"

#: (weight, smallest, largest) in bytes: most uploads are small, a few are large. Sizes are
#: log-uniform inside a band, so every band covers its whole range.
SIZE_BANDS: tuple[tuple[float, int, int], ...] = (
    (3, 0, 0),
    (40, 1, 64 * KiB),
    (42, 64 * KiB, 1 * MiB),
    (11, 1 * MiB, 8 * MiB),
    (3, 8 * MiB, 32 * MiB),
    (1, 32 * MiB, 64 * MiB),
)


def size_class(size: int) -> str:
    """The band a size is reported in."""
    if size <= 64 * KiB:
        return "<=64KiB"
    if size <= MiB:
        return "<=1MiB"
    if size <= 8 * MiB:
        return "<=8MiB"
    return ">8MiB"


def pick_size(rng: random.Random, max_size: int) -> int:
    """A size from ``SIZE_BANDS``, bands cut at ``max_size`` (those above it dropped)."""
    bands = [(w, lo, min(hi, max_size)) for w, lo, hi in SIZE_BANDS if lo <= max_size]
    _, lo, hi = rng.choices(bands, weights=[w for w, _, _ in bands])[0]
    if hi <= lo:
        return lo
    low = math.log(max(lo, 1))
    return max(lo, min(hi, round(math.exp(rng.uniform(low, math.log(hi))))))


@dataclass(frozen=True)
class Body:
    """``size`` bytes from ``random.Random(seed)``, generated ``CHUNK`` by ``CHUNK`` (the same
    bytes every time: a duplicate is the same spec sent again). ``eicar_at``: the EICAR test
    string overwrites the bytes from that offset on (a body of exactly EICAR is infected
    alone, one with random bytes around it is EICAR buried in a larger body)."""

    seed: int
    size: int
    eicar_at: int | None = None

    def __post_init__(self) -> None:
        if self.eicar_at is not None and not 0 <= self.eicar_at <= self.size - len(EICAR):
            raise ValueError(f"EICAR at {self.eicar_at} does not fit in {self.size} bytes")

    @property
    def infected(self) -> bool:
        return self.eicar_at is not None

    def chunks(self) -> Iterator[bytes]:
        rng = random.Random(self.seed)
        offset = 0
        while offset < self.size:
            n = min(CHUNK, self.size - offset)
            chunk = rng.randbytes(n)
            if self.eicar_at is not None and self._overlaps(offset, n):
                chunk = self._splice(chunk, offset)
            yield chunk
            offset += n

    def _overlaps(self, offset: int, n: int) -> bool:
        assert self.eicar_at is not None
        return self.eicar_at < offset + n and offset < self.eicar_at + len(EICAR)

    def _splice(self, chunk: bytes, offset: int) -> bytes:
        assert self.eicar_at is not None
        out = bytearray(chunk)
        for i, byte in enumerate(EICAR):
            at = self.eicar_at + i - offset
            if 0 <= at < len(out):
                out[at] = byte
        return bytes(out)

    @cached_property
    def sha256(self) -> str:
        """Hex sha-256 of the whole body (generated once more to compute it)."""
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        return h.hexdigest()


def eicar_alone(seed: int) -> Body:
    return Body(seed, len(EICAR), 0)


def eicar_buried(rng: random.Random, seed: int, max_size: int) -> Body:
    """EICAR at a random offset inside 1 KiB..min(4 MiB, max_size) of random bytes."""
    size = max(
        len(EICAR) + 1,
        min(max_size, round(math.exp(rng.uniform(math.log(KiB), math.log(4 * MiB))))),
    )
    return Body(seed, size, rng.randrange(0, size - len(EICAR) + 1))


class BodyPayload(Payload):
    """Streams a ``Body`` with its ``Content-Length``, hashing what it sends: memory per
    upload is one ``CHUNK``, whatever the size. ``sent`` and ``sha256`` say what went out."""

    def __init__(self, body: Body, content_type: str = OCTET_STREAM) -> None:
        super().__init__(body, content_type=content_type)
        self.body = body
        self._size = body.size
        self.sent = 0
        self._hash = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a soak body is streamed, never decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        limit = self.body.size if content_length is None else content_length
        self.sent, self._hash = 0, hashlib.sha256()  # what this attempt sends
        for chunk in self.body.chunks():
            if self.sent >= limit:
                break
            piece = chunk[: limit - self.sent]
            self._hash.update(piece)
            await writer.write(piece)
            self.sent += len(piece)
