"""Query parameters, path ids, tags, cursors and small JSON bodies: parsed and validated
at the edge, each mistake a 400 that names the parameter and the rule."""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime

from multidict import MultiMapping

from fileshare import errors
from fileshare.api.names import validate_name
from fileshare.index.base import Cursor, FileQuery
from fileshare.index.tables import FILE_ID_MAX, OWNER_MAX, TAG_MAX

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MIN = 5
PAGE_SIZE_MAX = 100
#: A client's file id: URL-unreserved characters only (it is used in paths as is),
#: starting with a letter or digit. (Every pattern here is used with ``fullmatch``: ``$``
#: would let a trailing newline through.)
FILE_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._~-]{{0,{FILE_ID_MAX - 1}}}")
#: A tag: letters and digits of any script, and ``_ - . : @ +``; no ``%`` (the wildcard
#: of a matching search), no ``/`` (tags are path segments), no white space.
_TAG = re.compile(rf"[\w.:@+-]{{1,{TAG_MAX}}}")
_TAG_PATTERN = re.compile(rf"[\w.:@+%-]{{1,{TAG_MAX}}}")
_MEDIA_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"  # noqa: S105 (a regex)
MEDIA_FILTER = re.compile(rf"{_MEDIA_TOKEN}/(\*|{_MEDIA_TOKEN})")
_DIGITS = re.compile(r"[0-9]{1,3}")
MAX_TAGS_PER_QUERY = 5


def file_id(value: str, *, creating: bool = False) -> str:
    """A path's file id. An id that cannot exist is "not found" where a record is looked
    up, and a 400 where the client is choosing it (PUT)."""
    if FILE_ID.fullmatch(value):
        return value
    if creating:
        raise errors.InvalidFileId(
            f"a file id is 1 to {FILE_ID_MAX} of A-Z a-z 0-9 . _ ~ -, "
            "starting with a letter or digit"
        )
    raise errors.NotFound("no such file")


def tag(value: object) -> str:
    """A tag name, NFC-normalised (the same tag typed on two systems is one tag)."""
    if not isinstance(value, str):
        raise errors.InvalidTag("a tag is a string")
    normal = unicodedata.normalize("NFC", value)
    # At least one letter or digit: "." and ".." cannot be path segments.
    if not _TAG.fullmatch(normal) or not any(c.isalnum() for c in normal):
        raise errors.InvalidTag(
            f"a tag is 1 to {TAG_MAX} letters, digits or _ - . : @ + (no spaces, / or %), "
            "with at least one letter or digit"
        )
    return normal


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps([cursor.created.astimezone(UTC).isoformat(), cursor.id]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(value: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        created_text, id_ = json.loads(raw)
        created = datetime.fromisoformat(created_text)
        if created.tzinfo is None or not isinstance(id_, str) or not FILE_ID.fullmatch(id_):
            raise ValueError
        created = created.astimezone(UTC)
    except (ValueError, TypeError, binascii.Error, OverflowError, RecursionError):
        raise errors.InvalidParameter(
            "offsetKey is not one this service gave out: pass nextOffsetKey as it came"
        ) from None
    return Cursor(created=created, id=id_)


def _timestamp(name: str, value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
        # In UTC here, where a time too close to year 1 or 9999 to be expressed in UTC is
        # still the client's mistake (and not, later, the index's failure).
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise errors.InvalidParameter(
            f"{name} must be an RFC 3339 time (2024-05-01T12:00:00Z) or a date (2024-05-01)"
        ) from None


def _boolean(name: str, value: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    raise errors.InvalidParameter(f"{name} must be true or false")


def page_size(query: MultiMapping[str]) -> int:
    value = _single(query, "pageSize")
    if value is None:
        return PAGE_SIZE_DEFAULT
    # ASCII digits only: str.isdigit() and int() also take other scripts' digits.
    if not _DIGITS.fullmatch(value) or not PAGE_SIZE_MIN <= int(value) <= PAGE_SIZE_MAX:
        raise errors.InvalidParameter(
            f"pageSize must be a whole number from {PAGE_SIZE_MIN} to {PAGE_SIZE_MAX}"
        )
    return int(value)


#: An owner (a principal's namespace: a client id, a token's subject).
OWNER = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._~@:|-]{{0,{OWNER_MAX - 1}}}")


def owner(query: MultiMapping[str]) -> str | None:
    """``?owner=``: whose files a request is about (a worker's participant, a
    researcher's), None for the principal's own."""
    value = _single(query, "owner")
    if value is None:
        return None
    if not OWNER.fullmatch(value):
        raise errors.InvalidParameter(
            "owner must be 1-255 letters, digits and . _ ~ @ : | -, starting with a letter or digit"
        )
    return value


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise errors.InvalidParameter(f"{name} may be given once")
    return values[0] if values else None


_LIST_PARAMS = frozenset({"offsetKey", "pageSize", "name", "contentType", "from", "to", "owner"})
_SEARCH_PARAMS = _LIST_PARAMS | {"tag", "tagLike", "present"}


def file_query(query: MultiMapping[str], *, search: bool) -> FileQuery:
    """``GET /v1/files`` (``search=False``) and ``GET /v1/search/files`` parameters."""
    allowed = _SEARCH_PARAMS if search else _LIST_PARAMS
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise errors.InvalidParameter(
            # Not quoted back: a stray name is the client's input (and could be anything).
            f"unknown parameter; this route takes {', '.join(sorted(allowed))}"
        )
    after = _single(query, "offsetKey")
    name = _single(query, "name")
    if name is not None:
        try:
            # As names are stored: NFC, no control characters (a NUL would fail the index).
            name = validate_name(name)
        except errors.InvalidFileName as exc:
            raise errors.InvalidParameter(f"name: {exc.detail}") from None
    content_type = _single(query, "contentType")
    if content_type is not None:
        if not MEDIA_FILTER.fullmatch(content_type):
            raise errors.InvalidParameter("contentType must be type/subtype or type/*")
        content_type = content_type.lower()
    created_from = _single(query, "from")
    created_to = _single(query, "to")
    tags: tuple[str, ...] = ()
    tag_like = present = None
    if search:
        raw_tags = query.getall("tag", [])
        if len(raw_tags) > MAX_TAGS_PER_QUERY:
            raise errors.InvalidParameter(f"at most {MAX_TAGS_PER_QUERY} tag parameters")
        tags = tuple(dict.fromkeys(tag(t) for t in raw_tags))
        if (pattern := _single(query, "tagLike")) is not None:
            pattern = unicodedata.normalize("NFC", pattern)
            if not _TAG_PATTERN.fullmatch(pattern):
                raise errors.InvalidParameter(
                    "tagLike is a tag with % standing for any run of characters"
                )
            tag_like = pattern
        if (value := _single(query, "present")) is not None:
            present = _boolean("present", value)
    result = FileQuery(
        page_size=page_size(query),
        after=None if after is None else decode_cursor(after),
        name=name,
        content_type=content_type,
        created_from=None if created_from is None else _timestamp("from", created_from),
        created_to=None if created_to is None else _timestamp("to", created_to),
        tags=tags,
        tag_like=tag_like,
        present=present,
    )
    if result.created_from and result.created_to and result.created_from >= result.created_to:
        raise errors.InvalidParameter("from must be earlier than to")
    return result


def json_object(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise errors.InvalidJson(f"{what} must be a JSON object")
    return value


def string_member(body: Mapping[str, object], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise errors.ValidationFailed(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise errors.ValidationFailed(f"{name} must be a string")
    return value
