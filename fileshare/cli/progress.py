"""Progress bars on stderr, for people: silent when stderr is not a terminal, so that
scripts, CI logs and ``2>file`` get only the one line of an error."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from tqdm import tqdm


def bar(label: str, total: int | None) -> tqdm[NoReturn]:
    """A byte counter for one transfer (``total`` None: the size is not known)."""
    columns, lines = _size()
    return tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        # None: tqdm turns itself off unless its file is a TTY.
        disable=None,
        # tqdm takes the size from the terminal, and draws nothing in one of 0 x 0 (a
        # pseudo-terminal nobody sized, as `docker run -t` and CI runners give).
        ncols=columns or 80,
        nrows=lines or 24,
        leave=True,
    )


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 0, 0
    return size.columns, size.lines
