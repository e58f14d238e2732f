"""Progress bars on stderr for long work (transcribing a long file, an eval run).

A bar is drawn only when stderr is a terminal, so logs, pipes and CI output stay plain. The
bars are rich's, drawn on stderr and cleared when the work ends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["AudioBar", "audio_bar", "wants_bar"]

AudioBar = Callable[[float], None]
"""Tells the bar how far the work has come, in seconds of audio (a running total)."""


def wants_bar(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal a bar can be drawn on."""
    out = sys.stderr if stream is None else stream
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def audio_bar(
    label: str, total_seconds: float, stream: TextIO | None = None
) -> Iterator[tuple[AudioBar, Callable[[str], None]]]:
    """A bar over ``total_seconds`` of audio on ``stream`` (default stderr).

    Yields ``(update, relabel)``: ``update(seconds_done)`` moves the bar, ``relabel(text)``
    changes the text in front of it.
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
        task = progress.add_task(label, total=total_seconds)

        def update(seconds: float) -> None:
            progress.update(task, completed=min(seconds, total_seconds))

        def relabel(text: str) -> None:
            progress.update(task, description=text)

        yield update, relabel
