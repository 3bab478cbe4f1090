"""Files clamd cannot scan through, made on the fly (no tool to install, nothing to ship):
an encrypted zip, an encrypted PDF, an archive nested deeper than ``MaxRecursion``, one
holding more than ``MaxFiles`` members or more than ``MaxScanSize`` bytes.

The "encrypted" ones are encrypted as far as a scanner can tell, which is all these tests
need: the zip's members carry the general-purpose "encrypted" flag (clamd cannot read them
without a password), and the PDF has a standard security handler whose user password is not
the empty one (clamd cannot derive the key, so it cannot look inside a stream)."""

from __future__ import annotations

import io
import os
import struct
import zipfile


def encrypted_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("report.txt", os.urandom(2048))
    data = bytearray(buf.getvalue())
    # Set bit 0 ("encrypted") of the flags in the local header and the central directory.
    local = data.index(b"PK\x03\x04")
    flags = struct.unpack_from("<H", data, local + 6)[0]
    struct.pack_into("<H", data, local + 6, flags | 1)
    central = data.index(b"PK\x01\x02")
    flags = struct.unpack_from("<H", data, central + 8)[0]
    struct.pack_into("<H", data, central + 8, flags | 1)
    return bytes(data)


def encrypted_pdf() -> bytes:
    """A one-page PDF behind the standard security handler (RC4, revision 2) with random
    owner and user keys: no empty user password opens it."""
    o_key = os.urandom(32).hex().upper()
    u_key = os.urandom(32).hex().upper()
    doc_id = os.urandom(16).hex().upper()
    content = os.urandom(256)  # "encrypted" page content
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Filter /Standard /V 1 /R 2 /O <"
        + o_key.encode()
        + b"> /U <"
        + u_key.encode()
        + b"> /P -44 >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 5 0 R /ID [<%s> <%s>] >>\n" % (
        len(objects) + 1,
        doc_id.encode(),
        doc_id.encode(),
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def nested_zip(depth: int) -> bytes:
    data = os.urandom(1024)
    name = "inner.bin"
    for level in range(depth):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            z.writestr(name, data)
        data, name = buf.getvalue(), f"level{level}.zip"
    return data


def zip_of(members: int, member_size: int) -> bytes:
    """``members`` members of ``member_size`` compressible bytes each (small on the wire)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(members):
            z.writestr(f"part{i}.txt", ((b"%d " % i) * member_size)[:member_size])
    return buf.getvalue()
