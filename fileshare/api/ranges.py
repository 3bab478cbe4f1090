"""HTTP byte ranges (RFC 9110 section 14): a single range is served as 206; anything this
server does not serve (several ranges, other units) is ignored and the whole file sent,
as the RFC allows."""

from __future__ import annotations

import re

from fileshare import errors

#: 18 digits cover any file size; longer numbers are not a range this server can serve.
_SINGLE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return (first, last) inclusive, or None for "send everything"."""
    if not header:
        return None
    m = _SINGLE.match(header.strip())
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise errors.RangeNotSatisfiable(size)
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignore
    if start >= size:
        raise errors.RangeNotSatisfiable(size)
    end = int(last) if last else size - 1
    return start, min(end, size - 1)
