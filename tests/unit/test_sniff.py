"""The Content-Type checks of ``fileshare.sniff`` on the bytes themselves (no server is
involved: this is byte inspection; the e2e tests send the same bytes through fileshare)."""

from __future__ import annotations

import os

import pytest

from fileshare import errors
from fileshare.config import ConfigError, Settings
from fileshare.sniff import TypePolicy, media_type
from tests.sniff_files import dicom, dicom_polyglot, elf, pdf, pe, png

ENFORCE = TypePolicy()


def _code(head: bytes, declared: str, policy: TypePolicy = ENFORCE) -> str | None:
    refusal = policy.check_head(head, declared)
    return None if refusal is None else refusal.code


@pytest.mark.parametrize(
    ("head", "declared"),
    [
        (pdf(), "application/pdf"),
        (b"\xef\xbb\xbf\n  " + pdf(), "application/pdf"),  # a BOM and blank lines first
        (b"II+\x00\x08\x00\x00\x00" + bytes(100), "image/tiff"),  # BigTIFF, little-endian
        (b"MM\x00*" + bytes(100), "image/tiff"),
        (b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + bytes(100), "application/java-vm"),
        (pdf(), "application/x-pdf; charset=binary"),
        (png(), "image/png"),
        (dicom(), "application/dicom"),
        (pe(), "application/octet-stream"),
        (pe(), "application/vnd.microsoft.portable-executable"),
        (b"MZ Hospital, discharge letter\n" * 10, "text/plain"),  # two letters are no PE
        (b'{"resourceType": "Patient"}', "application/fhir+json"),
        (os.urandom(4096), "application/octet-stream"),
        (os.urandom(4096), "video/mp2t"),  # a type without a known signature: not judged
        (b"", "text/plain"),
    ],
)
def test_what_matches_or_cannot_be_judged_passes(head: bytes, declared: str) -> None:
    assert _code(head, declared) is None


@pytest.mark.parametrize(
    ("head", "declared", "code"),
    [
        (pe(), "application/pdf", "type_mismatch"),
        (pe(), "text/plain", "type_mismatch"),
        (elf(), "image/png", "type_mismatch"),
        (b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + bytes(100), "text/plain", "type_mismatch"),
        (b"GIF89a" + bytes(100), "image/tiff", "type_mismatch"),
        (os.urandom(4096), "application/pdf", "type_mismatch"),
        (png(), "image/jpeg", "type_mismatch"),
        (b"", "application/pdf", "type_mismatch"),
        (os.urandom(4096), "application/dicom", "type_mismatch"),
        (dicom_polyglot(), "application/dicom", "dicom_polyglot"),
        (dicom_polyglot(), "application/octet-stream", "dicom_polyglot"),
    ],
)
def test_mismatches_are_refused_with_their_code(head: bytes, declared: str, code: str) -> None:
    assert _code(head, declared) == code


def test_report_and_off_still_find_but_off_looks_at_nothing() -> None:
    assert _code(pe(), "application/pdf", TypePolicy("report")) == "type_mismatch"
    assert _code(pe(), "application/pdf", TypePolicy("off")) is None
    # The allow-list is a setting of its own: the mode does not switch it off.
    refused = TypePolicy("off", frozenset({"image/*"})).check_declared("text/plain")
    assert isinstance(refused, errors.TypeNotAllowed)


def test_the_allow_list_takes_types_and_families() -> None:
    policy = TypePolicy(allowed=frozenset({"application/pdf", "image/*"}))
    assert policy.check_declared("application/pdf") is None
    assert policy.check_declared("Image/PNG; q=1") is None
    assert policy.check_declared("application/x-pdf") is None  # an alias of an allowed type
    refused = policy.check_declared("application/dicom")
    assert isinstance(refused, errors.TypeNotAllowed)
    assert "application/dicom" in refused.detail
    assert TypePolicy().check_declared("anything/at-all") is None


def test_media_type_normalises() -> None:
    assert media_type(" Image/JPG ; x=y") == "image/jpeg"


@pytest.mark.parametrize("bad", ["pdf", "*/*", "image/", "a/b/c", "text/plain;x=1"])
def test_bad_allow_list_entries_are_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="FILESHARE_ALLOWED_TYPES"):
        Settings(allowed_types=frozenset({bad}))


def test_bad_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="FILESHARE_TYPE_CHECK"):
        Settings(type_check="strict")  # type: ignore[arg-type]
