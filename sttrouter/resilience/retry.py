"""Retry with exponential backoff and jitter; permanent and caller errors are never retried.

Defaults follow UnaMentis: 3 attempts, 100 ms first delay, ×2 per attempt, at most 5 s. The
jitter draws from a :class:`random.Random` you can seed, so schedules are reproducible in
tests, and sleeping goes through the injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import attrs

from sttrouter.clock import SYSTEM_CLOCK, Clock
from sttrouter.errors import ConfigError, RateLimited, STTError

__all__ = ["RetryPolicy"]

T = TypeVar("T")


def _check(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0 or (attr.name in ("attempts", "multiplier") and value < 1):
        raise ConfigError(f"{attr.name} out of range: {value!r}", field=attr.name)


@attrs.frozen
class RetryPolicy:
    """How often and how patiently to try again.

    Attributes:
        attempts: total tries, the first included (``1`` = never retry).
        initial: delay before the second try, seconds.
        multiplier: growth of the delay per try.
        max_delay: cap on one delay, seconds.
        jitter: fraction of each delay that is random (``0`` = none, ``1`` = "full jitter").
        honour_retry_after: wait at least what a :class:`RateLimited` error asked for.
    """

    attempts: int = attrs.field(default=3, validator=_check)
    initial: float = attrs.field(default=0.1, validator=_check)
    multiplier: float = attrs.field(default=2.0, validator=_check)
    max_delay: float = attrs.field(default=5.0, validator=_check)
    jitter: float = attrs.field(default=0.5, validator=_check)
    honour_retry_after: bool = True

    def __attrs_post_init__(self) -> None:
        if self.jitter > 1:
            raise ConfigError(f"jitter must lie in 0..1, got {self.jitter!r}", field="jitter")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the second attempt)."""
        base = min(self.max_delay, self.initial * self.multiplier ** max(0, retry - 1))
        if not self.jitter:
            return base
        r = (rng or random).random()
        return base * (1.0 - self.jitter) + base * self.jitter * r

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The delays between the attempts, in order (``attempts - 1`` of them)."""
        for retry in range(1, self.attempts):
            yield self.delay(retry, rng)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether to try again after ``error`` ended try number ``attempt`` (1-based)."""
        if attempt >= self.attempts:
            return False
        return not isinstance(error, STTError) or error.retryable

    def delay_after(self, error: BaseException, retry: int, rng: random.Random | None) -> float:
        """The delay before ``retry``, stretched to a rate limit's ``retry_after``."""
        d = self.delay(retry, rng)
        if (
            self.honour_retry_after
            and isinstance(error, RateLimited)
            and error.retry_after is not None
        ):
            d = max(d, error.retry_after)
        return d

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        retry_on: tuple[type[BaseException], ...] = (STTError,),
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """Await ``fn()`` until it succeeds or the policy gives up (the last error is raised).

        Only exceptions in ``retry_on`` are retried, and of those only retryable
        :class:`STTError`s (transient); anything else propagates at once.

        Args:
            on_retry: called as ``on_retry(retry_number, error, delay)`` before each sleep.
        """
        clk = clock or SYSTEM_CLOCK
        attempt = 1
        while True:
            try:
                return await fn()
            except retry_on as exc:
                if not self.should_retry(exc, attempt):
                    raise
                d = self.delay_after(exc, attempt, rng)
                if on_retry is not None:
                    on_retry(attempt, exc, d)
                await clk.sleep(d)
                attempt += 1
