"""The catalogue of problem types: one per stable ``code``, each with a page of its own.

Derived from the ``fileshare.errors`` hierarchy (status, title, and the first paragraph of
each class's docstring as the explanation) plus the two codes only the web framework's own
errors get, so no code is listed twice. The OpenAPI document's code enum, the problem
answers' ``type`` URIs and the ``/problems/{code}`` pages all read it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from fileshare import errors

#: Where the pages live, under the public base URL: ``{base_url}/problems/{code}``.
PATH = "/problems/"


@dataclass(frozen=True)
class ProblemType:
    code: str
    #: ``None`` where the status varies (``http_error``).
    status: int | None
    title: str
    explanation: str
    #: The broader code this one refines (``scanner_unavailable`` → ``service_unavailable``).
    parent: str | None = None


METHOD_NOT_ALLOWED = ProblemType(
    "method_not_allowed",
    405,
    "Method not allowed",
    "The path exists but does not take this method; the `Allow` header lists those it does.",
)
HTTP_ERROR = ProblemType(
    "http_error",
    None,
    "HTTP error",
    "An HTTP error of the server framework that has no code of its own (a malformed "
    "request line or header, for example); `status` and `title` say which.",
)


def _explanation(cls: type[errors.FileshareError]) -> str:
    # ``__doc__`` is not inherited: a class without a docstring of its own has none.
    doc = inspect.cleandoc(cls.__doc__ or "")
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def _from_hierarchy() -> dict[str, ProblemType]:
    found: dict[str, ProblemType] = {}
    pending: list[type[errors.FileshareError]] = [errors.FileshareError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.code in found:  # a subclass that keeps its parent's code adds no type
            continue
        base = cls.__mro__[1]
        parent = base.code if issubclass(base, errors.FileshareError) else None
        found[cls.code] = ProblemType(
            cls.code,
            cls.status,
            cls.title,
            _explanation(cls),
            parent if parent not in (cls.code, errors.FileshareError.code) else None,
        )
    return found


def problem_types() -> dict[str, ProblemType]:
    """Every code the service answers with, sorted by code."""
    found = _from_hierarchy() | {t.code: t for t in (METHOD_NOT_ALLOWED, HTTP_ERROR)}
    return dict(sorted(found.items()))


def type_uri(base_url: str, code: str) -> str:
    return f"{base_url}{PATH}{code}"
