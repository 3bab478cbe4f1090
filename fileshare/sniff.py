"""Are the bytes what their ``Content-Type`` says? Checked on the first bytes of a body,
before any of it is stored or scanned (issue 13).

Three checks, each a refusal with a code of its own (``FILESHARE_TYPE_CHECK=enforce``) or a
warning in the log (``report``):

* ``type_not_allowed``: the declared type is not on the deployment's allow-list
  (``FILESHARE_ALLOWED_TYPES``; empty: every type), checked before a byte is read;
* ``type_mismatch``: an executable (PE, ELF, Mach-O) declared as anything but an executable
  or ``application/octet-stream``; or a type that always starts with a signature (PDF, the
  common images, ZIP, gzip, DICOM...) whose bytes do not carry it (puremagic identifies
  most; PDF and TIFF are checked here, as loosely as their readers are);
* ``dicom_polyglot``: DICOM's 128-byte preamble is free for the application, so a file can be
  a valid DICOM *and* a Windows executable at once (CVE-2019-11687); a preamble that starts
  with an executable header is refused whatever the declared type.

A check that cannot decide (a text format, a type without a signature) lets the bytes
through: it never refuses what it does not know. The bytes are still scanned.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import puremagic

from fileshare import errors

TypeCheck = Literal["enforce", "report", "off"]

#: How many first bytes the checks need (puremagic reads signatures in the first few KiB).
HEAD_SIZE = 8192

_DICOM = "application/dicom"
_DICOM_PREAMBLE = 128
_GENERIC = frozenset({"application/octet-stream", "binary/octet-stream"})
_EXECUTABLE_TYPES = frozenset(
    {
        "application/vnd.microsoft.portable-executable",
        "application/x-msdownload",
        "application/x-dosexec",
        "application/x-executable",
        "application/x-elf",
        "application/x-mach-binary",
        "application/x-sharedlib",
    }
)
#: Executable headers, by the first bytes (a DOS "MZ" header alone is only two letters:
#: see ``_executable``).
_EXECUTABLE_MAGIC = (
    (b"\x7fELF", "an ELF executable"),
    (b"\xfe\xed\xfa\xce", "a Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
)
#: Types whose files always start with a signature puremagic knows, and the names it may
#: give them (aliases, and container formats it reports as one of their members).
_SIGNED: dict[str, frozenset[str]] = {
    "image/png": frozenset({"image/png"}),
    "image/jpeg": frozenset({"image/jpeg", "image/jpg", "image/pjpeg"}),
    "image/gif": frozenset({"image/gif"}),
    "image/bmp": frozenset({"image/bmp", "image/x-bmp", "image/x-ms-bmp"}),
    "image/webp": frozenset({"image/webp"}),
    "application/gzip": frozenset({"application/gzip", "application/x-gzip"}),
    "application/zip": frozenset(
        {
            "application/zip",
            "application/x-zip-compressed",
            # puremagic names a bare zip after the first OOXML or other zip-based format
            # whose signature it shares.
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            "application/vnd.ms-excel.sheet.binary.macroenabled.12",
            "application/java-archive",
            "application/epub+zip",
        }
    ),
}
#: Types whose signature readers accept more loosely than puremagic's database knows:
#: a PDF header anywhere in the first KiB (what Acrobat accepts: a BOM, blank lines or junk
#: before ``%PDF``), TIFF in both byte orders including BigTIFF (whole-slide images).
_OWN_CHECKS: dict[str, Callable[[bytes], bool]] = {
    "application/pdf": lambda head: b"%PDF" in head[:1024],
    "image/tiff": lambda head: head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"),
}
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-pdf": "application/pdf",
    "application/x-gzip": "application/gzip",
    "application/x-zip-compressed": "application/zip",
    "image/x-ms-bmp": "image/bmp",
}


#: A ``type/subtype`` or ``type/*`` allow-list entry, lower case (as ``media_type`` leaves
#: it): ``FILESHARE_ALLOWED_TYPES`` and a client's ``allowedTypes``.
MEDIA_PATTERN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)")


def type_allowed(declared: str, patterns: Iterable[str]) -> bool:
    """``declared`` (as ``media_type`` leaves it) matches an entry of ``patterns``."""
    return any(fnmatch.fnmatchcase(declared, pattern) for pattern in patterns)


def media_type(content_type: str) -> str:
    """``type/subtype``, lower case, without parameters, aliases resolved."""
    bare = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


@dataclass(frozen=True)
class TypePolicy:
    mode: TypeCheck = "enforce"
    #: Media types or ``type/*`` patterns; empty: every type.
    allowed: frozenset[str] = frozenset()

    def check_declared(self, content_type: str) -> errors.FileshareError | None:
        """The allow-list, on the declared type alone (before the body is read). A setting
        of its own: ``mode`` does not turn it off."""
        if not self.allowed:
            return None
        declared = media_type(content_type)
        if type_allowed(declared, self.allowed):
            return None
        return errors.TypeNotAllowed(f"{declared} is not among the types this service accepts")

    def check_head(self, head: bytes, content_type: str) -> errors.FileshareError | None:
        """The first bytes (up to ``HEAD_SIZE``; all of them for a shorter body) against
        the declared type."""
        if self.mode == "off":
            return None
        declared = media_type(content_type)
        dicm = head[_DICOM_PREAMBLE : _DICOM_PREAMBLE + 4] == b"DICM"
        # In a DICOM preamble even a bare DOS header counts: the PE header it points to
        # may lie anywhere after the DICOM header, beyond these first bytes.
        executable = _executable(head, dos_header_suffices=dicm)
        if executable is not None and dicm:
            return errors.DicomPolyglot(
                f"a DICOM file whose preamble is {executable}: refused (CVE-2019-11687)"
            )
        if declared == _DICOM:
            if not dicm:
                return _mismatch(declared, "no DICOM preamble and 'DICM' prefix at byte 128")
            return None
        if executable is not None:
            if declared in _GENERIC or declared in _EXECUTABLE_TYPES:
                return None
            return _mismatch(declared, executable)
        own = _OWN_CHECKS.get(declared)
        if own is not None:
            return None if own(head) else _mismatch(declared, "bytes without its signature")
        names = _SIGNED.get(declared)
        if names is not None and not names & _identified(head):
            return _mismatch(declared, "bytes without its signature")
        return None


def _mismatch(declared: str, found: str) -> errors.TypeMismatch:
    return errors.TypeMismatch(f"declared {declared}, but the content is {found}")


def _executable(head: bytes, *, dos_header_suffices: bool) -> str | None:
    if head.startswith(b"MZ"):
        # A PE file: "MZ", and at 0x3c the offset of its "PE\0\0" header.
        if dos_header_suffices:
            return "a Windows executable (PE)"
        if len(head) >= 0x40:
            at = int.from_bytes(head[0x3C:0x40], "little")
            if head[at : at + 4] == b"PE\0\0":
                return "a Windows executable (PE)"
        return None
    for magic, what in _EXECUTABLE_MAGIC:
        if head.startswith(magic):
            return what
    # A universal (fat) Mach-O counts its architectures next; a Java class file, which
    # starts alike, has its version there (45 and up).
    fat = head[:4] in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")
    if fat and 0 < int.from_bytes(head[4:8], "big") < 30:
        return "a Mach-O executable"
    return None


def _identified(head: bytes) -> frozenset[str]:
    """Every media type puremagic finds a signature of (empty when it finds none)."""
    if not head:
        return frozenset()
    try:
        found: Iterable[puremagic.PureMagicWithConfidence] = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return frozenset()
    return frozenset(media_type(m.mime_type) for m in found if m.mime_type) | frozenset(
        m.mime_type.lower() for m in found if m.mime_type
    )
