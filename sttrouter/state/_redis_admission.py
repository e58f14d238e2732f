"""Admission leases: a per-endpoint concurrency limit held exactly across replicas.

Each admitted stream holds a lease: a member of the endpoint's sorted set whose score is its
expiry (server time, milliseconds). A Lua script drops expired leases, counts the live ones and
adds the new lease only under the limit — one atomic step on the server, so four replicas
racing for the last slot admit exactly one. Live leases are renewed in the background; a
crashed replica stops renewing and its leases expire after ``lease_ttl``. A stream that finds
the endpoint full waits in this replica's queue (bounded, deadline-bound, as in one process)
and tries again whenever any replica announces a release, or every ``poll_interval``.

While the server is unreachable the controller admits locally up to the fallback limit
(``ceil(limit / replicas)``), so routing goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sttrouter.clock import Clock, fail_after
from sttrouter.endpoint import STTEndpoint
from sttrouter.resilience import AdmissionController, AdmissionRefused, Permit
from sttrouter.resilience.admission import _Slot
from sttrouter.state._redis_link import RedisLink
from sttrouter.state._redis_settings import StateKeys

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LeasedAdmission"]

# Scripts read the server's clock (TIME), so every replica measures leases on one clock.
_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
ACQUIRE = (
    _NOW
    + """
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return {0, n} end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return {1, n + 1}
"""
)
RENEW = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)
COUNT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)


class _Lease(Permit):
    def __init__(self, controller: LeasedAdmission, endpoint_id: str, lease_id: str) -> None:
        super().__init__(controller, endpoint_id)
        self.lease_id = lease_id


class LeasedAdmission(AdmissionController):
    """An :class:`~sttrouter.resilience.AdmissionController` whose limits hold across every
    replica sharing one server.

    Args:
        link: the server connection.
        keys: key names.
        publish: announces ``("release", endpoint_id)`` to the other replicas.
        clock, queue_limit, queue_timeout: as for the in-process controller.
    """

    def __init__(
        self,
        link: RedisLink,
        keys: StateKeys,
        *,
        publish: Callable[[dict[str, Any]], None],
        clock: Clock,
        queue_limit: int,
        queue_timeout: float,
    ) -> None:
        super().__init__(clock=clock, queue_limit=queue_limit, queue_timeout=queue_timeout)
        self._link = link
        self._keys = keys
        self._publish = publish
        self._leases: dict[str, dict[str, None]] = {}  # endpoint id -> its live lease ids
        self._fleet: dict[str, int] = {}
        self._queued: dict[str, int] = {}
        self._released: dict[str, asyncio.Event] = {}
        self._limits: dict[str, int] = {}
        self._claims: dict[str, asyncio.Lock] = {}
        self.on_use: Callable[[], None] | None = None
        """Called whenever a limit is asked about (the store starts itself from here)."""

    def shared(self) -> bool:
        """Whether limits are held on the server now (else the local fallback applies)."""
        return self._link.ok

    # -- the local slot follows the mode ----------------------------------------------------
    def _slot(self, endpoint: STTEndpoint) -> _Slot:
        if self.on_use is not None:
            self.on_use()
        slot = super()._slot(endpoint)
        limit = endpoint.max_concurrent_sessions
        if limit is not None:
            self._limits[endpoint.id] = limit
            slot.limit = None if self.shared() else self._link.settings.fallback_limit(limit)
        return slot

    def fleet_in_use(self, endpoint_id: str) -> int:
        """Leases the whole fleet held at the last look."""
        return self._fleet.get(endpoint_id, self.in_use(endpoint_id))

    def waiting(self, endpoint_id: str) -> int:
        return super().waiting(endpoint_id) + self._queued.get(endpoint_id, 0)

    def has_capacity(self, endpoint: STTEndpoint) -> bool:
        limit = endpoint.max_concurrent_sessions
        if limit is None or not self.shared():
            return super().has_capacity(endpoint)
        self._slot(endpoint)
        return self.fleet_in_use(endpoint.id) < limit and not self.waiting(endpoint.id)

    def try_acquire(self, endpoint: STTEndpoint) -> Permit | None:
        """A permit now without waiting on anything: only where no shared limit applies (no
        limit, or the server is down and the fallback limit has room); a shared limit is
        claimed by :meth:`try_acquire_async` or :meth:`acquire`."""
        if endpoint.max_concurrent_sessions is not None and self.shared():
            return None
        return super().try_acquire(endpoint)

    async def try_acquire_async(self, endpoint: STTEndpoint) -> Permit | None:
        if endpoint.max_concurrent_sessions is None or not self.shared():
            return super().try_acquire(endpoint)
        if self.waiting(endpoint.id):
            return None  # first come, first served within this replica
        return await self._claim(endpoint)

    async def acquire(self, endpoint: STTEndpoint, *, max_wait: float | None = None) -> Permit:
        if endpoint.max_concurrent_sessions is None or not self.shared():
            return await super().acquire(endpoint, max_wait=max_wait)
        permit = await self.try_acquire_async(endpoint)
        if permit is not None:
            return permit
        if not self.shared():  # the server went away during the claim
            return await super().acquire(endpoint, max_wait=max_wait)
        eid = endpoint.id
        waiting = self.waiting(eid)
        if waiting >= self.queue_limit:
            raise AdmissionRefused(
                f"{eid} is at its limit of {endpoint.max_concurrent_sessions} concurrent "
                f"sessions across the fleet and {waiting} streams are already waiting here",
                endpoint_id=eid,
            )
        self._queued[eid] = self._queued.get(eid, 0) + 1
        if self.on_queued is not None:
            self.on_queued(eid, waiting + 1)
        wait = self.queue_timeout if max_wait is None else max_wait
        released = self._released.setdefault(eid, asyncio.Event())
        try:
            async with fail_after(self.clock, wait):
                while True:
                    released.clear()
                    if not self.shared():
                        permit = super().try_acquire(endpoint)
                    else:
                        permit = await self._claim(endpoint)
                    if permit is not None:
                        return permit
                    await self._next_chance(released)
        except TimeoutError:
            raise AdmissionRefused(
                f"{eid} stayed at its limit of {endpoint.max_concurrent_sessions} concurrent "
                f"sessions across the fleet for {wait:g}s; spilling to the next endpoint",
                endpoint_id=eid,
                retry_after=wait,
            ) from None
        finally:
            self._queued[eid] -= 1

    async def _next_chance(self, released: asyncio.Event) -> None:
        """Until a release is announced or ``poll_interval`` of the clock passes."""
        tasks = [
            asyncio.ensure_future(released.wait()),
            asyncio.ensure_future(self.clock.sleep(self._link.settings.poll_interval)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()

    async def _claim(self, endpoint: STTEndpoint) -> Permit | None:
        eid, limit = endpoint.id, endpoint.max_concurrent_sessions
        assert limit is not None
        lease_id = uuid.uuid4().hex
        key = self._keys.leases(eid)
        ttl_ms = int(self._link.settings.lease_ttl * 1000)

        async def op(r: Redis) -> Any:
            return await r.eval(ACQUIRE, 1, key, lease_id, limit, ttl_ms)

        # one claim in flight per endpoint: a burst of streams queues here (each claim is one
        # round trip) instead of opening a connection each and overrunning the deadline
        lock = self._claims.setdefault(eid, asyncio.Lock())
        try:
            async with lock:
                if not self.shared():
                    return super().try_acquire(endpoint)
                admitted, count = await self._link.call(op)
        except Exception:
            return super().try_acquire(endpoint)  # the server is down: the fallback limit
        self._fleet[eid] = int(count)
        if not admitted:
            return None
        self._slot(endpoint).in_use += 1
        self._leases.setdefault(eid, {})[lease_id] = None
        return _Lease(self, eid, lease_id)

    def _release_permit(self, permit: Permit) -> None:
        eid = permit.endpoint_id
        self._release(eid)
        if not isinstance(permit, _Lease):
            return
        self._leases.get(eid, {}).pop(permit.lease_id, None)
        self._fleet[eid] = max(0, self._fleet.get(eid, 1) - 1)
        zrem = _zrem(self._keys.leases(eid), [permit.lease_id])

        async def op(r: Redis) -> Any:
            await zrem(r)
            self.released(eid)  # waiting streams here try again once the slot is free

        self._link.send(op)
        self._publish({"t": "release", "id": eid})

    def released(self, endpoint_id: str) -> None:
        """A slot of ``endpoint_id`` came free somewhere: waiting streams try again."""
        ev = self._released.get(endpoint_id)
        if ev is not None:
            ev.set()

    async def renew(self) -> None:
        """Renew every live lease of this replica (and re-assert them after the server lost
        them) and refresh the fleet counts."""
        ttl_ms = int(self._link.settings.lease_ttl * 1000)
        for eid in set(self._leases) | set(self._limits):
            key, ids = self._keys.leases(eid), list(self._leases.get(eid, {}))

            async def op(r: Redis, key: str = key, ids: list[str] = ids) -> Any:
                return await r.eval(RENEW, 1, key, ttl_ms, *ids)

            with contextlib.suppress(Exception):
                self._fleet[eid] = int(await self._link.call(op))

    async def drop_all(self) -> None:
        """Give back every lease this replica holds (on a clean shutdown)."""
        for eid, live in list(self._leases.items()):
            if live:
                with contextlib.suppress(Exception):
                    await self._link.call(_zrem(self._keys.leases(eid), list(live)))
        self._leases.clear()

    def snapshot(self, endpoint_id: str) -> dict[str, Any]:
        """Leases of ``endpoint_id``: here, in the fleet (last look) and the limit."""
        return {
            "leases_here": len(self._leases.get(endpoint_id, {})),
            "leases_fleet": self.fleet_in_use(endpoint_id),
            "limit": self._limits.get(endpoint_id),
        }


def _zrem(key: str, lease_ids: list[str]) -> Callable[[Redis], Awaitable[Any]]:
    async def op(r: Redis) -> Any:
        return await r.zrem(key, *lease_ids)

    return op
