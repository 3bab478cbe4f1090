import pytest

from fileshare.scan.base import ScanError, ScanSizeExceeded, Verdict
from fileshare.scan.clamd import parse_reply


def test_clean_and_infected() -> None:
    assert parse_reply(b"stream: OK\0") == Verdict(clean=True)
    assert parse_reply(b"stream: Eicar-Test-Signature FOUND\0") == Verdict(
        clean=False, signature="Eicar-Test-Signature"
    )


def test_size_limit_is_its_own_error() -> None:
    with pytest.raises(ScanSizeExceeded):
        parse_reply(b"INSTREAM size limit exceeded. ERROR\0")


@pytest.mark.parametrize(
    "raw",
    [
        b"stream: Can't allocate memory ERROR\0",
        b"",
        b"stream: \0",
        b"garbage",
        b" FOUND\0",
        b"stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND?\0",
    ],
)
def test_anything_else_fails_closed(raw: bytes) -> None:
    with pytest.raises(ScanError):
        parse_reply(raw)


@pytest.mark.parametrize(
    ("signature", "unscannable"),
    [
        ("Heuristics.Limits.Exceeded.MaxFileSize", True),
        ("Heuristics.Limits.Exceeded.MaxRecursion", True),
        ("Heuristics.Limits.Exceeded", True),
        ("Heuristics.Encrypted.Zip", True),
        ("Heuristics.Encrypted.PDF", True),
        # Heuristic detections that are findings, not "could not look": still infected.
        ("Heuristics.Phishing.Email.SpoofedDomain", False),
        ("Heuristics.Broken.Executable", False),
        ("Heuristics.EncryptedFoo", False),
        ("Eicar-Test-Signature", False),
    ],
)
def test_only_limits_and_encryption_are_unscannable(signature: str, unscannable: bool) -> None:
    verdict = parse_reply(b"stream: %s FOUND\0" % signature.encode())
    assert verdict == Verdict(clean=False, signature=signature)
    assert verdict.unscannable is unscannable
    assert Verdict(clean=True).unscannable is False
