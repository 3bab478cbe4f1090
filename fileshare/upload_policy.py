"""What a registered client's uploads are held to beyond the deployment's settings
(issue 13): the types it may upload, and what becomes of its unscannable files.

A client's policy only narrows the deployment's: its types are checked after
``FILESHARE_ALLOWED_TYPES`` (a type must pass both), and its unscannable policy chooses
between two refusals — an unscannable upload is refused whatever either says (invariant 1:
nothing clamd did not call clean is ever served). Bootstrap principals and external tokens
have no policy of their own.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from fileshare import errors
from fileshare.sniff import media_type, type_allowed

#: The most entries a client's type list may have (a list, not a catalogue).
MAX_TYPES = 64
#: The longest entry (a ``Content-Type`` is at most this long in the index).
MAX_TYPE_LENGTH = 255
#: An entry as a client's ``allowedTypes`` takes it: ``type/subtype`` or ``type/*``, no
#: parameters, any case. One pattern for the server and the OpenAPI document (a regex
#: Python and ECMAScript read alike).
TYPE_ENTRY = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/(\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*)"
_TYPE_ENTRY = re.compile(TYPE_ENTRY)


class Unscannable(enum.StrEnum):
    """What an upload clamd could not scan through becomes. Refused either way; the
    answer says which (``quarantined``)."""

    #: Its bytes are thrown away with the upload.
    REJECT = "reject"
    #: Its bytes are kept in the quarantine bucket for the administrators
    #: (``FILESHARE_QUARANTINE_BUCKET``), as infected uploads are.
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class UploadPolicy:
    #: Media types or ``type/*`` patterns the client may upload; empty: whatever the
    #: deployment accepts.
    allowed_types: frozenset[str] = frozenset()
    #: None: the deployment's (``FILESHARE_UNSCANNABLE``).
    unscannable: Unscannable | None = None

    def check_type(self, content_type: str) -> errors.FileshareError | None:
        """The client's list, on the declared type alone (before a byte is read)."""
        declared = media_type(content_type)
        if not self.allowed_types or type_allowed(declared, self.allowed_types):
            return None
        return errors.TypeNotAllowed(f"{declared} is not among the types this client may upload")

    def keeps_unscannable(self, deployment: Unscannable) -> bool:
        return (self.unscannable or deployment) is Unscannable.QUARANTINE


_UNSCANNABLE = frozenset(u.value for u in Unscannable)
#: No policy of its own: the deployment's settings alone.
NO_POLICY = UploadPolicy()


def parse_types(values: Iterable[object]) -> frozenset[str]:
    """A client's ``allowedTypes``, normalised; ``ValidationFailed`` naming a bad entry."""
    given = list(values)
    if len(given) > MAX_TYPES:
        raise errors.ValidationFailed(f"allowedTypes holds at most {MAX_TYPES} types")
    found: set[str] = set()
    for value in given:
        if (
            not isinstance(value, str)
            or len(value) > MAX_TYPE_LENGTH
            or not _TYPE_ENTRY.fullmatch(value)
        ):
            shown = str(value)[:60]
            raise errors.ValidationFailed(
                f"allowedTypes: {shown!r} is not a media type (type/subtype or type/*)"
            )
        found.add(media_type(value))
    return frozenset(found)


def parse_unscannable(value: object) -> Unscannable | None:
    if value is None:
        return None
    if isinstance(value, str) and value in _UNSCANNABLE:
        return Unscannable(value)
    raise errors.ValidationFailed("unscannable must be reject, quarantine or null")
