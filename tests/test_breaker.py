from __future__ import annotations

import pytest

from sttrouter.errors import ConfigError
from sttrouter.resilience import BreakerBoard, BreakerConfig, BreakerState, CircuitBreaker
from sttrouter.testing import FakeClock

pytestmark = pytest.mark.anyio


def make(clock: FakeClock, **kw: float) -> tuple[CircuitBreaker, list[tuple[str, str, str]]]:
    changes: list[tuple[str, str, str]] = []
    cfg = BreakerConfig(**kw)  # type: ignore[arg-type]
    b = CircuitBreaker(
        "ep", cfg, clock=clock, on_change=lambda e, o, n: changes.append((e, o.value, n.value))
    )
    return b, changes


async def test_opens_after_threshold_within_window() -> None:
    clock = FakeClock()
    b, changes = make(clock, failure_threshold=3, window=10.0, cool_down=30.0)
    for _ in range(2):
        b.record_failure("drop")
        assert b.state is BreakerState.CLOSED
        assert b.try_acquire()
    assert b.failures == 2
    b.record_failure("drop")
    assert b.state is BreakerState.OPEN
    assert not b.is_available()
    assert not b.try_acquire()
    assert changes == [("ep", "closed", "open")]
    assert "open" in repr(b)


async def test_failures_outside_window_expire() -> None:
    clock = FakeClock()
    b, _ = make(clock, failure_threshold=3, window=10.0)
    b.record_failure()
    b.record_failure()
    await clock.advance(10.5)
    assert b.failures == 0
    b.record_failure()
    assert b.state is BreakerState.CLOSED


async def test_half_open_after_cool_down_gives_one_trial() -> None:
    clock = FakeClock()
    b, changes = make(clock, failure_threshold=1, cool_down=30.0)
    b.record_failure("x")
    await clock.advance(29.9)
    assert b.state is BreakerState.OPEN
    await clock.advance(0.1)
    assert b.state is BreakerState.HALF_OPEN
    assert b.is_available()
    assert b.try_acquire()  # the trial
    assert not b.is_available()
    assert not b.try_acquire()
    b.release()  # caller went away: the trial is free again
    assert b.try_acquire()
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.try_acquire()
    assert [c[2] for c in changes] == ["open", "half_open", "closed"]


async def test_failed_trial_reopens_for_a_full_cool_down() -> None:
    clock = FakeClock()
    b, _ = make(clock, failure_threshold=2, cool_down=5.0)
    b.record_failure()
    b.record_failure()
    await clock.advance(5.0)
    assert b.try_acquire()
    b.record_failure("still down")
    assert b.state is BreakerState.OPEN
    await clock.advance(4.0)
    assert b.state is BreakerState.OPEN
    b.record_failure()  # failures while open change nothing
    await clock.advance(1.0)
    assert b.state is BreakerState.HALF_OPEN
    assert b.last_reason == "still down"


async def test_trip_opens_at_once_and_reset_closes() -> None:
    clock = FakeClock()
    b, _ = make(clock)
    b.trip("invalid API key")
    assert b.state is BreakerState.OPEN
    b.reset()
    assert b.state is BreakerState.CLOSED
    assert b.failures == 0


async def test_success_in_closed_state_keeps_counting_window() -> None:
    clock = FakeClock()
    b, changes = make(clock, failure_threshold=2)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert changes[-1][2] == "open"


async def test_board_is_a_health_view() -> None:
    clock = FakeClock()
    seen: list[str] = []
    board = BreakerBoard(
        BreakerConfig(failure_threshold=1, cool_down=1.0),
        clock=clock,
        on_change=lambda e, o, n: seen.append(f"{e}:{n.value}"),
    )
    assert board.is_available("a")  # unknown endpoints are available
    board["a"].record_failure()
    assert not board.is_available("a")
    assert board.is_available("b")
    assert board.breaker("a") is board["a"]
    assert board.states() == {"a": BreakerState.OPEN}
    await clock.advance(1.0)
    assert board.is_available("a")
    assert seen == ["a:open", "a:half_open"]


async def test_board_reports_every_failure_and_whether_it_tripped() -> None:
    clock = FakeClock()
    failures: list[tuple[str, str, bool]] = []
    board = BreakerBoard(
        BreakerConfig(failure_threshold=2),
        clock=clock,
        on_failure=lambda e, r, p: failures.append((e, r, p)),
    )
    board["a"].record_failure("refused")
    board["a"].record_failure("refused")
    board["a"].record_failure("while open")  # counted by nobody, still reported
    board["b"].trip("bad key")
    assert failures == [
        ("a", "refused", False),
        ("a", "refused", False),
        ("a", "while open", False),
        ("b", "bad key", True),
    ]


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="failure_threshold"):
        BreakerConfig(failure_threshold=0)
    with pytest.raises(ConfigError, match="cool_down"):
        BreakerConfig(cool_down=-1)
