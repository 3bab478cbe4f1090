import pytest

from fileshare.tracecontext import TraceParent, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "flags", "sampled"),
    [(f"00-{TRACE}-{PARENT}-01", 1, True), (f"00-{TRACE}-{PARENT}-00", 0, False)],
)
def test_a_version_00_traceparent_is_read(value: str, flags: int, sampled: bool) -> None:
    parsed = parse_traceparent(value)
    assert parsed == TraceParent(trace_id=TRACE, parent_id=PARENT, flags=flags)
    assert parsed.sampled is sampled


def test_flags_other_than_sampled_are_kept_but_only_bit_0_means_sampled() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-{PARENT}-08")
    assert parsed is not None
    assert parsed.flags == 8
    assert parsed.sampled is False


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"01-{TRACE}-{PARENT}-01",  # a version we do not know
        f"ff-{TRACE}-{PARENT}-01",  # the forbidden version
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{PARENT}-01",  # uppercase hex
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"00-{TRACE[:-1]}-{PARENT}-01",  # short trace id
        f"00-{TRACE}0-{PARENT}-01",  # long trace id
        f"00-{TRACE}-{PARENT[:-1]}-01",  # short parent id
        f"00-{TRACE}-{PARENT}0-01",  # long parent id
        f"00-{TRACE}-{PARENT}-1",  # short flags
        f"00-{TRACE}-{PARENT}-001",  # long flags
        f"00-{TRACE}-{PARENT}",  # no flags
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}g-{PARENT}-01",  # not hex
        f"00_{TRACE}_{PARENT}_01",  # wrong separator
        f" 00-{TRACE}-{PARENT}-01",  # surrounding space
        f"00-{TRACE}-{PARENT}-01\n",  # a trailing newline ("$" would have let it in)
        f"00-{TRACE}-{PARENT}-01,00-{TRACE}-{PARENT}-01",  # two traceparent fields
    ],
)
def test_anything_else_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None
