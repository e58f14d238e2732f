"""The routing state store: the failure ledger follows the breakers; one combined view."""

from __future__ import annotations

import pytest

from sttrouter.resilience import BreakerConfig, BreakerState, HealthMonitor
from sttrouter.state import FailureLedger, FailureRecord, InMemoryState, StateStore
from sttrouter.testing import FakeClock, fake_endpoint

pytestmark = pytest.mark.anyio


async def _ok() -> None:
    return None


async def test_ledger_records_counts_and_clears() -> None:
    clock = FakeClock()
    seen: list[FailureRecord] = []
    ledger = FailureLedger(clock=clock, on_record=seen.append)
    assert ledger.last("a") is None
    assert not ledger.failed_within("a", 30)
    ledger.record("a", "connection refused")
    await clock.advance(5.0)
    rec = ledger.record("a", "key rejected", permanent=True)
    assert rec == FailureRecord("a", 5.0, "key rejected", permanent=True, count=2)
    assert seen[-1] is rec
    assert ledger.unusable() == {"a": "key rejected"}
    assert ledger.failed_within("a", 1)
    await clock.advance(35.0)
    assert not ledger.failed_within("a", 30)
    ledger.succeeded("a")
    after = ledger.last("a")
    assert after is not None
    assert (after.permanent, after.count, after.message) == (False, 0, "key rejected")
    assert ledger.unusable() == {}
    ledger.succeeded("a")  # nothing left to clear
    ledger.succeeded("never-failed")
    assert len(ledger) == 1
    assert "a" in repr(ledger)
    ledger.forget("a")
    assert ledger.records() == {}
    assert rec.to_dict() == {"at": 5.0, "message": "key rejected", "permanent": True, "count": 2}


async def test_in_memory_state_writes_breaker_failures_to_the_ledger() -> None:
    clock = FakeClock()
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    state = InMemoryState(
        clock=clock,
        breaker_config=BreakerConfig(failure_threshold=2, cool_down=10),
        on_breaker_change=lambda e, o, n: changes.append((e, o, n)),
    )
    store: StateStore = state  # the default store satisfies the protocol
    assert store.clock is clock

    b = state.breakers.breaker("a")
    b.record_failure("timeout")
    rec = state.failures.last("a")
    assert rec is not None
    assert (rec.message, rec.permanent, rec.count) == ("timeout", False, 1)
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert changes == [("a", BreakerState.CLOSED, BreakerState.OPEN)]
    assert not state.view.is_available("a")
    rec = state.failures.last("a")
    assert rec is not None
    assert (rec.message, rec.count) == ("failed", 2)

    state.breakers.breaker("b").trip("bad key")
    assert state.failures.unusable() == {"b": "bad key"}
    await clock.advance(10.0)
    assert state.breakers.breaker("b").try_acquire()  # the half-open trial
    state.breakers.breaker("b").record_success()
    assert state.failures.unusable() == {}  # it works again
    assert ("b", BreakerState.HALF_OPEN, BreakerState.CLOSED) in changes


async def test_snapshot_and_health_views() -> None:
    clock = FakeClock()
    mon = HealthMonitor({"c": _ok}, clock=clock)
    state = InMemoryState(clock=clock, health=[mon])
    assert state.snapshot() == {}
    state.breakers.breaker("a").trip("quota")
    permit = state.admission.try_acquire(fake_endpoint("b", max_concurrent_sessions=1))
    assert permit is not None
    for _ in range(3):
        mon.observe("c", False, "probe failed")
    snap = state.snapshot()
    assert snap["a"] == {
        "breaker": "open",
        "available": False,
        "in_use": 0,
        "waiting": 0,
        "last_failure": {"at": 0.0, "message": "quota", "permanent": True, "count": 1},
    }
    assert snap["b"]["in_use"] == 1
    assert snap["b"]["available"]
    assert "c" not in snap  # the monitor's own endpoints are its to report
    assert not state.view.is_available("c")
    state.health.remove(mon)
    assert state.view.is_available("c")
    permit.release()
    assert state.snapshot()["b"]["in_use"] == 0
    assert "InMemoryState" in repr(state)
    await state.aclose()
