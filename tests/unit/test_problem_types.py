"""The problem type catalogue is the error hierarchy: every code there has a type with a
status, a title and an explanation of its own, and nothing else is in it but the two codes
of the framework's own errors."""

from __future__ import annotations

from fileshare import errors
from fileshare.api.problem_types import problem_types, type_uri


def _hierarchy() -> list[type[errors.FileshareError]]:
    found, pending = [], [errors.FileshareError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_class_has_a_type_with_its_own_explanation() -> None:
    catalogue = problem_types()
    for cls in _hierarchy():
        problem = catalogue[cls.code]
        assert (problem.status, problem.title) == (cls.status, cls.title)
        # The first paragraph of the class's own docstring is what its page explains.
        assert problem.explanation, f"{cls.__name__} needs a docstring: its problem page shows it"
    assert set(catalogue) - {cls.code for cls in _hierarchy()} == {
        "method_not_allowed",
        "http_error",
    }


def test_a_refined_code_links_to_the_broader_one() -> None:
    catalogue = problem_types()
    assert catalogue["scanner_unavailable"].parent == "service_unavailable"
    assert catalogue["unsupported_content_encoding"].parent == "unsupported_media_type"
    # The root's own code (a bug) is nobody's broader kind.
    assert catalogue["bad_request"].parent is None
    # Developer notes after the first paragraph stay off the page.
    assert "hierarchy" not in catalogue["internal_error"].explanation


def test_type_uris_live_under_the_public_base_url() -> None:
    assert type_uri("https://files.example.org", "infected") == (
        "https://files.example.org/problems/infected"
    )
