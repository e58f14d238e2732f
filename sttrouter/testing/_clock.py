"""A virtual clock for tests: time moves only when the test moves it."""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`~sttrouter.clock.Clock` whose time a test controls.

    ``await clock.sleep(d)`` parks the caller until a test calls ``await clock.advance(...)``
    far enough. ``advance`` wakes sleepers in deadline order and lets each run before moving
    on, so a cool-down of 30 s or a stall deadline of 5 s is tested in microseconds.

    Args:
        start: the initial reading.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in ``sleep`` (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    @property
    def next_deadline(self) -> float | None:
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose deadline passes."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        target = self._now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await settle()
        self._now = target
        await settle()

    async def run_until_idle(self, limit: float = 3600.0) -> None:
        """Advance to each pending deadline in turn until nothing sleeps (or ``limit`` passes)."""
        end = self._now + limit
        while (nxt := self.next_deadline) is not None and nxt <= end:
            await self.advance(nxt - self._now)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:.6f}, sleepers={self.sleepers})"


async def settle(rounds: int = 20) -> None:
    """Let ready tasks run: yield to the event loop ``rounds`` times."""
    for _ in range(rounds):
        await asyncio.sleep(0)
