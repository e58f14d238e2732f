from __future__ import annotations

import anyio
import pytest

from sttrouter.errors import ConfigError, RateLimited
from sttrouter.resilience import AdmissionController, AdmissionRefused, Permit
from sttrouter.testing import FakeClock, fake_endpoint

pytestmark = pytest.mark.anyio

EP = fake_endpoint("glm", max_concurrent_sessions=2)


async def test_limit_then_queue_fifo() -> None:
    clock = FakeClock()
    queued: list[tuple[str, int]] = []
    adm = AdmissionController(clock=clock, on_queued=lambda e, p: queued.append((e, p)))
    p1 = await adm.acquire(EP)
    p2 = adm.try_acquire(EP)
    assert p2 is not None
    assert adm.in_use("glm") == 2
    assert adm.try_acquire(EP) is None
    assert not adm.has_capacity(EP)
    got: list[str] = []

    async def wait(name: str) -> None:
        permit = await adm.acquire(EP)
        got.append(name)
        assert isinstance(permit, Permit)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "first")
        await clock.advance(0)
        tg.start_soon(wait, "second")
        await clock.advance(0)
        assert adm.waiting("glm") == 2
        assert queued == [("glm", 1), ("glm", 2)]
        p1.release()
        p1.release()  # idempotent
        await clock.advance(0)
        assert got == ["first"]
        p2.release()
    assert got == ["first", "second"]
    assert adm.in_use("glm") == 2
    assert adm.waiting("glm") == 0


async def test_queue_deadline_then_refused() -> None:
    clock = FakeClock()
    adm = AdmissionController(clock=clock, queue_timeout=2.0)
    a, b = adm.try_acquire(EP), adm.try_acquire(EP)
    assert a
    assert b
    outcome: list[BaseException] = []

    async def wait() -> None:
        try:
            await adm.acquire(EP)
        except AdmissionRefused as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await clock.advance(1.9)
        assert not outcome
        await clock.advance(0.1)
    assert isinstance(outcome[0], RateLimited)
    assert "2s" in str(outcome[0])
    assert adm.waiting("glm") == 0
    assert adm.in_use("glm") == 2


async def test_queue_full_refuses_at_once() -> None:
    clock = FakeClock()
    adm = AdmissionController(clock=clock, queue_limit=1)
    assert adm.try_acquire(EP)
    assert adm.try_acquire(EP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(adm.acquire, EP)
        await clock.advance(0)
        with pytest.raises(AdmissionRefused, match="already waiting"):
            await adm.acquire(EP)
        tg.cancel_scope.cancel()
    assert adm.waiting("glm") == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    clock = FakeClock()
    adm = AdmissionController(clock=clock)
    p1, p2 = adm.try_acquire(EP), adm.try_acquire(EP)
    assert p1
    assert p2
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(adm.acquire, EP)
            await clock.advance(0)
            p1.release()  # hands the slot to the waiter ...
            scope.cancel()  # ... which is cancelled before it runs
    await clock.advance(0)
    assert adm.in_use("glm") <= 2
    p2.release()
    # everything can be acquired again: nothing leaked
    with adm.try_acquire(EP) or Permit(None, "x"):
        pass
    assert adm.in_use("glm") in (0, 1)


async def test_unlimited_and_context_manager() -> None:
    adm = AdmissionController()
    free = fake_endpoint("free")
    permits = [await adm.acquire(free) for _ in range(100)]
    assert adm.in_use("free") == 100
    for p in permits:
        with p:
            pass
    assert adm.in_use("free") == 0
    assert adm.endpoint_ids() == ("free",)
    assert adm.waiting("nothing") == 0
    assert adm.in_use("x") == 0


def test_validation() -> None:
    with pytest.raises(ConfigError):
        AdmissionController(queue_limit=-1)
