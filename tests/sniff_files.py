"""Heads of files of known types, made on the fly, for the Content-Type checks."""

from __future__ import annotations

import os
import struct

_PE_OFFSET = 0x80


def pe(size: int = 4096) -> bytes:
    """A DOS header whose e_lfanew points at a "PE\\0\\0" header (a Windows executable's
    start; not a runnable program, and nothing clamd's test database knows)."""
    head = bytearray(os.urandom(size))
    head[0:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, _PE_OFFSET)
    head[_PE_OFFSET : _PE_OFFSET + 4] = b"PE\0\0"
    return bytes(head)


def elf(size: int = 4096) -> bytes:
    return b"\x7fELF\x02\x01\x01\x00" + os.urandom(size - 8)


def pdf(size: int = 4096) -> bytes:
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + os.urandom(size - 15)


def png(size: int = 4096) -> bytes:
    ihdr = b"\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00\x90\x91h6"
    return b"\x89PNG\r\n\x1a\n" + ihdr + os.urandom(size - 8 - len(ihdr))


def dicom(size: int = 4096, preamble: bytes = bytes(128)) -> bytes:
    """A DICOM Part 10 file's start: the preamble, "DICM", then data elements."""
    return preamble + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + os.urandom(size - 140)


def dicom_polyglot(size: int = 4096) -> bytes:
    """CVE-2019-11687: the preamble is a DOS header, whose PE header lies further on."""
    preamble = bytearray(128)
    preamble[0:2] = b"MZ"
    struct.pack_into("<I", preamble, 0x3C, 0x400)
    return dicom(size, bytes(preamble))


def gzip_bytes(size: int = 4096) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + os.urandom(size - 10)
