from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    RateLimited,
    STTError,
)
from sttrouter.resilience import RetryPolicy
from sttrouter.testing import FakeClock

pytestmark = pytest.mark.anyio


def test_defaults_match_unamentis() -> None:
    p = RetryPolicy()
    assert (p.attempts, p.initial, p.multiplier, p.max_delay) == (3, 0.1, 2.0, 5.0)
    exact = RetryPolicy(jitter=0.0, attempts=10)
    assert list(exact.delays()) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), jitter=st.floats(0, 1), retry=st.integers(1, 20))
def test_jitter_bounds_and_seeded(seed: int, jitter: float, retry: int) -> None:
    p = RetryPolicy(jitter=jitter)
    base = min(p.max_delay, p.initial * p.multiplier ** (retry - 1))
    d = p.delay(retry, random.Random(seed))
    assert base * (1 - jitter) - 1e-12 <= d <= base + 1e-12
    assert d == p.delay(retry, random.Random(seed))


def test_should_retry_by_kind() -> None:
    p = RetryPolicy(attempts=3)
    assert p.should_retry(ConnectionFailed("x"), 1)
    assert not p.should_retry(ConnectionFailed("x"), 3)
    assert not p.should_retry(AuthenticationFailed("bad key"), 1)
    assert not p.should_retry(AudioFormatError("odd bytes"), 1)
    assert p.should_retry(OSError("foreign"), 1)


def test_retry_after_is_honoured() -> None:
    p = RetryPolicy(jitter=0.0)
    assert p.delay_after(RateLimited("slow down", retry_after=3.0), 1, None) == 3.0
    assert p.delay_after(RateLimited("slow down"), 1, None) == pytest.approx(0.1)
    assert RetryPolicy(jitter=0.0, honour_retry_after=False).delay_after(
        RateLimited("x", retry_after=3.0), 1, None
    ) == pytest.approx(0.1)


async def test_call_retries_transient_on_the_clock() -> None:
    clock = FakeClock()
    calls: list[float] = []
    retries: list[tuple[int, float]] = []

    async def flaky() -> str:
        calls.append(clock.now())
        if len(calls) < 3:
            raise ConnectionFailed("refused")
        return "ok"

    p = RetryPolicy(jitter=0.0)

    async def run() -> str:
        return await p.call(flaky, clock=clock, on_retry=lambda n, e, d: retries.append((n, d)))

    import anyio

    async with anyio.create_task_group() as tg:
        result: list[str] = []

        async def go() -> None:
            result.append(await run())

        tg.start_soon(go)
        while not result:
            await clock.advance(0.05)
    assert result == ["ok"]
    assert calls == pytest.approx([0.0, 0.1, 0.3])
    assert retries == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]


async def test_call_never_retries_permanent_and_gives_up() -> None:
    clock = FakeClock()
    n = 0

    async def bad_key() -> None:
        nonlocal n
        n += 1
        raise AuthenticationFailed("invalid key")

    with pytest.raises(AuthenticationFailed):
        await RetryPolicy().call(bad_key, clock=clock)
    assert n == 1

    async def down() -> None:
        nonlocal n
        n += 1
        raise ConnectionFailed("down")

    n = 0
    with pytest.raises(ConnectionFailed):
        await RetryPolicy(attempts=1).call(down, clock=clock)
    assert n == 1

    async def foreign() -> None:
        raise KeyError("not retried: not in retry_on")

    with pytest.raises(KeyError):
        await RetryPolicy().call(foreign, clock=clock, retry_on=(STTError,))


def test_validation() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(initial=-1)
    with pytest.raises(ConfigError, match="jitter"):
        RetryPolicy(jitter=1.5)
