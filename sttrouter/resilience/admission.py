"""Admission control: a per-endpoint concurrency limit with a bounded, deadline-bound queue.

Each endpoint admits at most ``endpoint.max_concurrent_sessions`` streams at once (``None`` =
unlimited). A stream that finds its endpoint full waits in that endpoint's FIFO queue — at most
``queue_limit`` waiters, each for at most ``queue_timeout`` seconds of the injected clock —
and is then refused with :class:`AdmissionRefused` so the caller can spill to the next
endpoint of its chain. Nothing waits forever and the queue never grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from types import TracebackType

from sttrouter.clock import SYSTEM_CLOCK, Clock, fail_after
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError, RateLimited

__all__ = ["AdmissionController", "AdmissionRefused", "Permit"]


class AdmissionRefused(RateLimited):
    """The endpoint is at its concurrency limit and its wait queue is full or timed out."""


class Permit:
    """The right to run one stream on an endpoint. Release it exactly once (idempotent)."""

    def __init__(self, controller: AdmissionController | None, endpoint_id: str) -> None:
        self._controller = controller
        self.endpoint_id = endpoint_id
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self._controller is not None:
            self._controller._release_permit(self)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.release()


class _Slot:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_use = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def full(self) -> bool:
        return self.limit is not None and self.in_use >= self.limit


class AdmissionController:
    """Concurrency limits for every endpoint of a process (share one between sessions).

    Args:
        clock: time source for queue deadlines.
        queue_limit: most streams waiting per endpoint.
        queue_timeout: seconds one stream waits before it is refused.
        on_queued: called as ``on_queued(endpoint_id, position)`` when a stream starts waiting.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        queue_limit: int = 8,
        queue_timeout: float = 2.0,
        on_queued: Callable[[str, int], None] | None = None,
    ) -> None:
        if queue_limit < 0 or queue_timeout < 0:
            raise ConfigError(
                f"queue_limit ({queue_limit}) and queue_timeout ({queue_timeout}) must not be "
                "negative"
            )
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.queue_limit = queue_limit
        self.queue_timeout = queue_timeout
        self.on_queued = on_queued
        self._slots: dict[str, _Slot] = {}

    def _slot(self, endpoint: STTEndpoint) -> _Slot:
        slot = self._slots.get(endpoint.id)
        if slot is None:
            slot = _Slot(endpoint.max_concurrent_sessions)
            self._slots[endpoint.id] = slot
        else:
            slot.limit = endpoint.max_concurrent_sessions  # follow config changes
        return slot

    def endpoint_ids(self) -> tuple[str, ...]:
        """Every endpoint a stream has asked to be admitted to."""
        return tuple(self._slots)

    def in_use(self, endpoint_id: str) -> int:
        slot = self._slots.get(endpoint_id)
        return slot.in_use if slot else 0

    def waiting(self, endpoint_id: str) -> int:
        slot = self._slots.get(endpoint_id)
        return sum(1 for f in slot.waiters if not f.done()) if slot else 0

    def has_capacity(self, endpoint: STTEndpoint) -> bool:
        """Whether a stream would be admitted now without waiting."""
        slot = self._slot(endpoint)
        return not slot.full and not slot.waiters

    def try_acquire(self, endpoint: STTEndpoint) -> Permit | None:
        """A permit now, or ``None`` when the endpoint is full (never waits)."""
        slot = self._slot(endpoint)
        if slot.full or slot.waiters:
            return None
        slot.in_use += 1
        return Permit(self, endpoint.id)

    async def try_acquire_async(self, endpoint: STTEndpoint) -> Permit | None:
        """Like :meth:`try_acquire`; a controller shared between processes claims the slot
        where the limit is held (a bounded wait on that store, never on the queue)."""
        return self.try_acquire(endpoint)

    async def acquire(self, endpoint: STTEndpoint, *, max_wait: float | None = None) -> Permit:
        """A permit, waiting in the endpoint's queue if it is full.

        Raises:
            AdmissionRefused: the queue is full, or ``max_wait`` (default ``queue_timeout``)
                passed first.
        """
        permit = self.try_acquire(endpoint)
        if permit is not None:
            return permit
        slot = self._slot(endpoint)
        waiting = self.waiting(endpoint.id)
        if waiting >= self.queue_limit:
            raise AdmissionRefused(
                f"{endpoint.id} is at its limit of {slot.limit} concurrent sessions and "
                f"{waiting} streams are already waiting; raise max_concurrent_sessions or add "
                "a fallback endpoint",
                endpoint_id=endpoint.id,
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.waiters.append(fut)
        if self.on_queued is not None:
            self.on_queued(endpoint.id, waiting + 1)
        wait = self.queue_timeout if max_wait is None else max_wait
        try:
            async with fail_after(self.clock, wait):
                await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return Permit(self, endpoint.id)  # the slot came just as time ran out
            raise AdmissionRefused(
                f"{endpoint.id} stayed at its limit of {slot.limit} concurrent sessions for "
                f"{wait:g}s; spilling to the next endpoint",
                endpoint_id=endpoint.id,
                retry_after=wait,
            ) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                slot.in_use -= 1  # handed a slot while being cancelled: give it back
                self._wake(slot)
            raise
        finally:
            if not fut.done():
                fut.cancel()
            _remove(slot.waiters, fut)
        return Permit(self, endpoint.id)

    def _release_permit(self, permit: Permit) -> None:
        self._release(permit.endpoint_id)

    def _release(self, endpoint_id: str) -> None:
        slot = self._slots[endpoint_id]
        slot.in_use -= 1
        self._wake(slot)

    def _wake(self, slot: _Slot) -> None:
        while slot.waiters and not slot.full:
            fut = slot.waiters.popleft()
            if not fut.done():
                slot.in_use += 1  # the slot passes straight to the first waiter (FIFO)
                fut.set_result(None)


def _remove(waiters: deque[asyncio.Future[None]], fut: asyncio.Future[None]) -> None:
    """Remove ``fut`` from ``waiters`` if it is still there."""
    with contextlib.suppress(ValueError):
        waiters.remove(fut)
