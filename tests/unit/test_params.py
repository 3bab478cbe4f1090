"""Query parameters, ids, tags and cursors, parsed at the edge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from multidict import MultiDict

from fileshare import errors
from fileshare.api import params
from fileshare.index.base import Cursor
from fileshare.index.sql import like_pattern, merge_patch, signature_db


def query(**kw: str | list[str]) -> MultiDict[str]:
    items: list[tuple[str, str]] = []
    for key, value in kw.items():
        for v in value if isinstance(value, list) else [value]:
            items.append((key, v))
    return MultiDict(items)


def test_cursor_round_trip() -> None:
    cursor = Cursor(datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=UTC), "abc-1.2~x")
    token = params.encode_cursor(cursor)
    assert not set("=/+") & set(token)
    assert params.decode_cursor(token) == cursor
    plus2 = Cursor(cursor.created.astimezone(timezone(timedelta(hours=2))), "x")
    assert params.decode_cursor(params.encode_cursor(plus2)).created == plus2.created


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "bm90IGpzb24",  # "not json"
        "WzFd",  # [1]
        "WyIyMDI0LTAxLTAxIiwgIngiXQ",  # naive time
        "WyIyMDI0LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgIi4uLyJd",  # an id that cannot exist
    ],
)
def test_garbled_cursors_are_400(token: str) -> None:
    with pytest.raises(errors.InvalidParameter, match="offsetKey"):
        params.decode_cursor(token)


@pytest.mark.parametrize("good", ["a", "A9", "report-2024_05.v2~final", "x" * 128])
def test_file_ids(good: str) -> None:
    assert params.file_id(good, creating=True) == good


@pytest.mark.parametrize("bad", ["", "-a", ".a", "a b", "a/b", "ü", "x" * 129, "a\x00", "a\n"])
def test_bad_file_ids(bad: str) -> None:
    with pytest.raises(errors.InvalidFileId):
        params.file_id(bad, creating=True)
    with pytest.raises(errors.NotFound):
        params.file_id(bad)


def test_tags_are_nfc_normalised() -> None:
    decomposed = "A\u0308rzte"  # Ä as A + combining diaeresis
    assert params.tag(decomposed) == "Ärzte"
    assert params.tag("ct:head@2024+x_y.z-1") == "ct:head@2024+x_y.z-1"


@pytest.mark.parametrize(
    "bad", ["", "a b", "a/b", "100%", "x" * 65, "tab\t", 5, None, "a\\b", "a\n"]
)
def test_bad_tags(bad: object) -> None:
    with pytest.raises(errors.InvalidTag):
        params.tag(bad)


def test_page_size_bounds() -> None:
    assert params.page_size(query()) == 50
    assert params.page_size(query(pageSize="5")) == 5
    assert params.page_size(query(pageSize="100")) == 100
    for bad in ("4", "101", "", "1e2", "+5", " 5", "\u0665", "5\n"):
        with pytest.raises(errors.InvalidParameter, match="pageSize"):
            params.page_size(query(pageSize=bad))
    with pytest.raises(errors.InvalidParameter, match="once"):
        params.page_size(query(pageSize=["5", "6"]))


def test_file_query() -> None:
    q = params.file_query(
        query(
            tag=["a", "b", "a"],
            tagLike="x%",
            present="true",
            contentType="Image/*",
            **{"from": "2024-05-01", "to": "2024-05-02T00:00:00+02:00"},
        ),
        search=True,
    )
    assert q.tags == ("a", "b")
    assert q.tag_like == "x%"
    assert q.present is True
    assert q.content_type == "image/*"
    assert q.created_from == datetime(2024, 5, 1, tzinfo=UTC)
    assert q.created_to == datetime(2024, 5, 1, 22, tzinfo=UTC)
    with pytest.raises(errors.InvalidParameter, match="unknown"):
        params.file_query(query(tag="a"), search=False)
    with pytest.raises(errors.InvalidParameter, match="at most"):
        params.file_query(query(tag=[f"t{i}" for i in range(6)]), search=True)
    with pytest.raises(errors.InvalidParameter, match="earlier"):
        params.file_query(query(**{"from": "2024-05-02", "to": "2024-05-01"}), search=False)


def test_like_pattern_escapes_all_but_percent() -> None:
    assert like_pattern("A_b%") == "a\\_b%"
    assert like_pattern("ÄRZTE\\") == "ärzte\\\\"


def test_merge_patch_is_rfc_7396() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}}
    assert merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1]}, {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert merge_patch({"a": {"b": 1}}, {"a": [2]}) == {"a": [2]}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
    assert merge_patch(target, {}) == target


def test_signature_db_version() -> None:
    assert signature_db("ClamAV 1.4.6/27000/Thu Feb 29 09:00:00 2024") == 27000
    assert signature_db("ClamAV 1.4.6") is None
    assert signature_db(None) is None
