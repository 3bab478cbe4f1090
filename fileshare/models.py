"""Domain records: content (a blob, identified by sha256) and files (what clients see)."""

from __future__ import annotations

import base64
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType


class ScanState(enum.StrEnum):
    """Where a content stands with the virus scanner. Only ``clean`` is ever served."""

    PENDING = "pending"
    CLEAN = "clean"
    INFECTED = "infected"
    UNSCANNABLE = "unscannable"
    FAILED = "failed"


class UploadState(enum.StrEnum):
    """Where an upload that went straight to the store stands (``POST /v1/uploads``): the
    scan states, and two of its own. ``rejected``: the object is not what the intent
    declared (size, type or checksum); ``expired``: no bytes came before the URL expired.
    Only ``clean`` made a file."""

    PENDING = "pending"
    CLEAN = "clean"
    INFECTED = "infected"
    UNSCANNABLE = "unscannable"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


def legacy_key(sha256_hex: str) -> str:
    """Where releases before the index owned the content put a blob: purely by hash."""
    return f"sha256/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}"


def new_object_key(sha256_hex: str) -> str:
    """A fresh permanent key for one promotion of this content.

    Still grouped by hash, but never reused: a physical DELETE removes the object under
    the key the index recorded, while an upload of the same bytes that started after the
    index forgot that key writes a key of its own. A slow delete can therefore never
    remove an object a newer record points at (see ``index.sql`` for the whole protocol).
    """
    return f"{legacy_key(sha256_hex)}.{uuid.uuid4().hex[:16]}"


#: Where single-write promotion puts objects (``new_upload_key``).
UPLOAD_KEY_PREFIX = "objects/"


def new_upload_key() -> str:
    """A fresh permanent key for an upload streamed under it before its hash is known
    (``FILESHARE_PROMOTION=single-write``). Never reused, like ``new_object_key``."""
    return f"{UPLOAD_KEY_PREFIX}{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ScanRecord:
    """What the scanner said about some bytes, and with which signatures."""

    state: ScanState
    #: The signature name when infected (clamd's ``<name> FOUND``).
    signature: str | None = None
    #: The scanner's version string (``ClamAV 1.4.6/27000/<date>``), when known.
    scanner: str | None = None
    scanned_at: datetime | None = None


@dataclass(frozen=True)
class Content:
    """Some bytes, as hashing saw them; once stored, where they are and what was found."""

    sha256: str  # hex
    sha1: bytes  # raw digest (FHIR wants it base64)
    size: int
    #: The object in the permanent bucket; None until (unless) it is promoted.
    key: str | None = None
    scan: ScanRecord = field(default_factory=lambda: ScanRecord(ScanState.PENDING))

    @property
    def sha1_b64(self) -> str:
        return base64.b64encode(self.sha1).decode("ascii")

    @property
    def state(self) -> ScanState:
        return self.scan.state

    @property
    def present(self) -> bool:
        """Clean and stored: the only content ever served."""
        return self.state is ScanState.CLEAN and self.key is not None


@dataclass(frozen=True)
class FileRecord:
    """What a client uploaded: one owner's name, type, tags and metadata for a content.

    Two owners uploading the same bytes get two records sharing one content.
    """

    owner: str
    id: str
    name: str | None
    content_type: str
    content: Content
    created: datetime
    updated: datetime
    metadata: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    tags: tuple[str, ...] = ()
    #: The subject that created the record (seed 002); None for the first releases'.
    created_by: str | None = None

    @property
    def etag(self) -> str:
        """The ETag of the file's bytes (a replace changes it; a metadata patch does not)."""
        return f'"{self.content.sha256}"'
