"""The clock every time-dependent part takes, so tests run on virtual time.

:class:`SystemClock` is the real one. ``sttrouter.testing.FakeClock`` is the virtual one:
time moves only when a test advances it, so stalls, cool-downs and deadlines are tested
without sleeping.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock", "fail_after"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds and a sleep that honours it."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The real monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


@asynccontextmanager
async def fail_after(clock: Clock, seconds: float | None) -> AsyncIterator[None]:
    """Like :func:`anyio.fail_after`, on any :class:`Clock`.

    Raises ``TimeoutError`` when the body has not finished after ``seconds`` of that clock.
    ``None`` or ``inf`` means no deadline.
    """
    if seconds is None or math.isinf(seconds):
        yield
        return
    if isinstance(clock, SystemClock):
        with anyio.fail_after(seconds):
            yield
        return
    expired = False
    with anyio.CancelScope() as outer:

        async def watchdog() -> None:
            nonlocal expired
            await clock.sleep(seconds)
            expired = True
            outer.cancel()

        # a plain task, not a task group: an error from the body must propagate unwrapped
        # (a task group would turn it into an ExceptionGroup)
        task = asyncio.get_running_loop().create_task(watchdog())
        try:
            yield
        finally:
            task.cancel()
    if expired:
        raise TimeoutError(f"deadline of {seconds}s passed")
