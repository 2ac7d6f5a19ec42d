"""The one progress type: ``progress(stage, done, total, note)``, reported by every long task."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

Progress = Callable[[str, int, "int | None", str], None]  # (stage, done, total or None, note)


def no_progress(stage: str, done: int, total: int | None, note: str) -> None:
    """The progress callback that reports nothing."""


@contextmanager
def stage(progress: Progress, name: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A stage of ``progress`` as a counter: yields ``advance(n=1, note="")``."""
    done = 0
    progress(name, 0, total, "")

    def advance(n: int = 1, note: str = "") -> None:
        nonlocal done
        done += n
        progress(name, done, total, note)

    yield advance
