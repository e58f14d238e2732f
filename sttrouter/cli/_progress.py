"""Progress bars on stderr for long work (transcribing a long file, an eval run).

A bar is drawn only when stderr is a terminal, so logs, pipes and CI output stay plain. The
bars are rich's, drawn on stderr and cleared when the work ends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["AudioBar", "Bar", "audio_bar", "wants_bar"]

AudioBar = Callable[[float], None]
"""Tells the bar how far the work has come, in seconds of audio (a running total)."""


def wants_bar(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal a bar can be drawn on."""
    out = sys.stderr if stream is None else stream
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


class Bar:
    """One bar over seconds of audio."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def update(self, seconds: float) -> None:
        """Move the bar to ``seconds`` of audio done."""
        self._progress.update(self._task, completed=seconds)

    def label(self, text: str) -> None:
        """Change the text in front of the bar."""
        self._progress.update(self._task, description=text)

    def total(self, seconds: float) -> None:
        """Change the audio the bar spans."""
        self._progress.update(self._task, total=seconds)


@contextmanager
def audio_bar(label: str, total_seconds: float, stream: TextIO | None = None) -> Iterator[Bar]:
    """A bar over ``total_seconds`` of audio on ``stream`` (default stderr), cleared at the end.

    What is printed to stderr meanwhile appears above the bar.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr if stream is None else stream)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s of audio"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield Bar(progress, progress.add_task(label, total=total_seconds))
