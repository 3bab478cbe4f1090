"""W3C Trace Context: the ``traceparent`` a caller sends, so fileshare's log lines join the
caller's trace. Parsed by hand rather than through OpenTelemetry: fileshare records no spans,
it only needs the two ids, and a tracing SDK would be a large dependency for a regex.

Strict on purpose (https://www.w3.org/TR/trace-context/#traceparent-header): version ``00``
only, lowercase hex, the exact length, trace and parent ids not all zeros. A value that is
anything else is ignored, never repaired: a half-understood id in the logs is worse than none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# version 00 is exactly these four fields; later versions may append fields, but a caller on
# a version we do not know gets no trace binding rather than a guess at its format.
_TRACEPARENT = re.compile(
    r"00-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
)
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    #: The caller's span: the one this request's work belongs to.
    parent_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 0x01)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The trace a ``traceparent`` value names, or ``None`` if it is absent or invalid.

    Several ``traceparent`` fields arrive joined by commas (RFC 9110 field combination);
    that never matches, which is what the spec asks: more than one parent is no parent.
    """
    if value is None:
        return None
    # fullmatch, not match + "$": "$" would accept a trailing newline.
    m = _TRACEPARENT.fullmatch(value)
    if m is None or m["trace"] == _ZERO_TRACE or m["parent"] == _ZERO_PARENT:
        return None
    return TraceParent(trace_id=m["trace"], parent_id=m["parent"], flags=int(m["flags"], 16))
