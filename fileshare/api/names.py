"""File names and media types from clients: validated, never used as storage keys.

Names end up in ``Content-Disposition`` headers and FHIR ``Attachment.title``; they are
refused when they could confuse a file system or a header (path separators, ``..``,
control characters, NUL) or are not valid UTF-8.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote_to_bytes

from fileshare import errors

MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
#: ``type/subtype``, optionally with parameters (which are dropped).
MEDIA_TYPE_PATTERN = rf"^\s*{_TCHARS}/{_TCHARS}\s*(;.*)?$"
_MEDIA_TYPE = re.compile(rf"^{_TCHARS}/{_TCHARS}$")


def validate_name(name: str) -> str:
    if "\ufffd" in name or any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise errors.InvalidFileName("the file name is not valid UTF-8")
    name = unicodedata.normalize("NFC", name)
    if not name.strip():
        raise errors.InvalidFileName("the file name is empty")
    if _CONTROL.search(name):
        raise errors.InvalidFileName("the file name contains control characters")
    # Format characters (bidi overrides, zero-width marks) make "invoice\u202efdp.exe"
    # display as "invoiceexe.pdf".
    if any(unicodedata.category(c) == "Cf" for c in name):
        raise errors.InvalidFileName("the file name contains invisible formatting characters")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise errors.InvalidFileName("the file name must not contain a path")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise errors.InvalidFileName(f"the file name is longer than {MAX_NAME_BYTES} bytes")
    return name


def name_from_content_disposition(header: str) -> str | None:
    """The filename (RFC 6266 ``filename*`` preferred over ``filename``), or None."""
    params = _disposition_params(header)
    extended = params.get("filename*")
    if extended:
        charset, _, rest = extended.partition("'")
        _lang, _, encoded = rest.partition("'")
        if charset.lower() != "utf-8" or not encoded:
            raise errors.InvalidFileName("filename* must be UTF-8 encoded (RFC 5987)")
        try:
            return validate_name(unquote_to_bytes(encoded).decode("utf-8"))
        except UnicodeDecodeError:
            raise errors.InvalidFileName("the file name is not valid UTF-8") from None
    plain = params.get("filename")
    if plain is None:
        return None
    return validate_name(plain)


_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def _disposition_params(header: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for m in _PARAM.finditer(header):
        quoted, token = m.group(2), m.group(3)
        if quoted is not None:
            value = re.sub(r"\\(.)", r"\1", quoted)
        elif token.startswith('"'):
            # An opening quote that never closes: guessing where the name ends would
            # store another name than the one sent.
            raise errors.InvalidFileName("Content-Disposition holds an unterminated quote")
        else:
            value = token
        params.setdefault(m.group(1).lower(), value)
    return params


#: Types that describe an HTTP form, never a file: a raw body sent with one is almost
#: always a client that forgot its Content-Type (curl --data-binary does this).
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded"})


def validate_media_type(value: str | None) -> str:
    """A bare ``type/subtype`` (parameters dropped), lower-cased; default octet-stream."""
    if not value:
        return "application/octet-stream"
    media = value.split(";", 1)[0].strip().lower()
    if not _MEDIA_TYPE.match(media):
        raise errors.UnsupportedMediaType("the Content-Type is not a media type (type/subtype)")
    if media in _FORM_TYPES:
        raise errors.UnsupportedMediaType(
            f"{media} is a form encoding, not a file type: send the file's own Content-Type "
            "(or application/octet-stream), or multipart/form-data with one file part"
        )
    return media


def content_disposition(name: str | None, *, inline: bool = False) -> str:
    """A header safe for any name: an ASCII fallback plus the exact UTF-8 name."""
    kind = "inline" if inline else "attachment"
    if not name:
        return kind
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_" for c in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
