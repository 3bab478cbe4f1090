import pytest

from fileshare import errors
from fileshare.api.names import (
    content_disposition,
    name_from_content_disposition,
    validate_media_type,
    validate_name,
)


@pytest.mark.parametrize(
    "bad",
    [
        "../etc/passwd",
        "a/b",
        "a\\b",
        "..",
        ".",
        "nul\x00byte",
        "tab\there",
        "",
        "   ",
        "x" * 256,
        "é" * 128,
        "bad\ufffdutf8",
        "\udcff",
    ],
)
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidFileName):
        validate_name(bad)


def test_good_names_are_normalised() -> None:
    assert validate_name("re\u0301sume\u0301.pdf") == "r\u00e9sum\u00e9.pdf"
    assert validate_name("scan 2024 (1).dcm") == "scan 2024 (1).dcm"
    assert validate_name("x" * 255) == "x" * 255


def test_content_disposition_prefers_extended_filename() -> None:
    header = "attachment; filename=\"fallback.pdf\"; filename*=UTF-8''%C3%A9t%C3%A9.pdf"
    assert name_from_content_disposition(header) == "été.pdf"
    assert name_from_content_disposition('inline; filename="a b.txt"') == "a b.txt"
    assert name_from_content_disposition("inline") is None


def test_content_disposition_refuses_bad_encodings() -> None:
    with pytest.raises(errors.InvalidFileName):
        name_from_content_disposition("attachment; filename*=UTF-8''%FF%FE.pdf")
    with pytest.raises(errors.InvalidFileName):
        name_from_content_disposition("attachment; filename*=latin-1''caf%E9.pdf")
    with pytest.raises(errors.InvalidFileName):
        name_from_content_disposition('attachment; filename="../../x"')


def test_rendered_disposition_is_ascii_and_exact() -> None:
    header = content_disposition('weird"name\\été.pdf')
    assert header.isascii()
    assert "filename*=UTF-8''weird%22name%5C%C3%A9t%C3%A9.pdf" in header
    assert 'filename="weird_name_' in header
    assert content_disposition(None) == "attachment"


def test_media_types() -> None:
    assert validate_media_type(None) == "application/octet-stream"
    assert validate_media_type("Application/PDF; charset=x") == "application/pdf"
    for bad in (
        "pdf",
        "text/",
        "a b/c",
        "text/plain\r\nX-Evil: 1",
        "application/x-www-form-urlencoded",
    ):
        with pytest.raises(errors.UnsupportedMediaType):
            validate_media_type(bad)
