""":class:`RedisState`: routing state shared by every replica through a Redis-protocol server.

Each replica keeps the same local objects as :class:`~sttrouter.state.InMemoryState` — breakers,
failure ledger, health views, admission — and reads them synchronously on the hot path. What
its own sessions change is written to the server and published on one pub/sub channel in the
background; what other replicas publish is applied to the local view as it arrives. Claims
that must hold exactly across replicas go through the server: admission leases (a Lua script)
and the one half-open trial per breaker (``SET NX`` with a TTL).

When the server is unreachable or slower than the deadline, nothing waits on it: routing goes
on from the last local view, admission falls back to a local limit, one WARNING is logged and
:meth:`RedisState.status` says so; when the server answers again the replica re-asserts its
own state (open breakers, live leases) and reads the fleet's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Self

from sttrouter.clock import Clock
from sttrouter.endpoint import STTEndpoint
from sttrouter.resilience import (
    AdmissionController,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    HealthStatus,
    HealthView,
)
from sttrouter.resilience.breaker import StateListener
from sttrouter.state._ledger import FailureRecord
from sttrouter.state._memory import InMemoryState
from sttrouter.state._redis_admission import LeasedAdmission
from sttrouter.state._redis_link import RedisLink, keep_task, log, redis_module
from sttrouter.state._redis_settings import RedisSettings, StateKeys
from sttrouter.state._usage import Usage

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisState"]


class RedisState(InMemoryState):
    """Breakers, health, the failure ledger, admission leases and usage counters shared by
    every replica that points at the same server and key prefix.

    Build it with :meth:`from_url` (or :meth:`from_settings`, which reads the URL from an
    environment variable), give it to :class:`~sttrouter.RoutingContext` as ``state=``, and
    ``await state.start()`` (``async with context`` does) — it also starts by itself on first
    use inside an event loop.

    Args:
        url: the server (``redis://[:password@]host:port/db``; ``rediss://`` for TLS).
        settings: key prefix, TTLs, deadline, fallback (see
            :class:`~sttrouter.state.RedisSettings`).
        replica_id: names this replica in the server (default: host, pid and a random
            suffix).
        clock, breaker_config, queue_limit, queue_timeout, health, on_breaker_change: as for
            :class:`~sttrouter.state.InMemoryState`.
    """

    def __init__(
        self,
        url: str,
        *,
        settings: RedisSettings | None = None,
        replica_id: str | None = None,
        clock: Clock | None = None,
        breaker_config: BreakerConfig | None = None,
        queue_limit: int = 8,
        queue_timeout: float = 2.0,
        health: Iterable[HealthView] = (),
        on_breaker_change: StateListener | None = None,
    ) -> None:
        self.settings = settings or RedisSettings()
        self.replica_id = (
            replica_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self._url = url
        self._keys = StateKeys(self.settings.key_prefix)
        self._link = RedisLink(url, self.settings)
        self._link.on_up = self.resync
        self._applying = False
        self._trials: dict[str, tuple[str, float]] = {}  # endpoint id -> (owner, until)
        self._claiming: set[str] = set()
        self._remote_health: dict[str, tuple[str, float]] = {}  # id -> (status, until)
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = False
        self.subscribed = False
        self._on_subscribed = asyncio.Event()
        super().__init__(
            clock=clock,
            breaker_config=breaker_config,
            queue_limit=queue_limit,
            queue_timeout=queue_timeout,
            health=health,
            on_breaker_change=on_breaker_change,
        )
        self._failures.on_record = self._failure_recorded
        self._breakers.trial_gate = self._trial_gate
        self._usage.on_add = self._usage_added
        self.leased.on_use = self._ensure_started
        self._remote_view = _RemoteHealth(self)  # joins the health views on first use

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A store on the server at ``url``; ``kwargs`` as for the constructor."""
        return cls(url, **kwargs)

    @classmethod
    def from_settings(cls, settings: RedisSettings, **kwargs: Any) -> Self:
        """A store on the server whose URL is in the environment variable ``settings.url_env``."""
        return cls(settings.url(), settings=settings, **kwargs)

    def _make_admission(self, queue_limit: int, queue_timeout: float) -> AdmissionController:
        return LeasedAdmission(
            self._link,
            self._keys,
            publish=self._publish,
            clock=self._clock,
            queue_limit=queue_limit,
            queue_timeout=queue_timeout,
        )

    @property
    def leased(self) -> LeasedAdmission:
        assert isinstance(self._admission, LeasedAdmission)
        return self._admission

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background tasks (writer, subscriber, lease keeper) and load the fleet's
        state; returns within a few deadlines even when the server is down."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._link.writer()),
            loop.create_task(self._subscriber()),
            loop.create_task(self._keeper()),
        ]
        with contextlib.suppress(TimeoutError):  # a server that is down does not hold us up
            async with asyncio.timeout(self.settings.deadline * 4):
                await self._on_subscribed.wait()
        await self.resync()

    def _ensure_started(self) -> None:
        if self._started:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the writes wait in the outbox until start()
        keep_task(loop.create_task(self.start()))

    async def aclose(self) -> None:
        """Give back this replica's leases, stop the background tasks, close the client."""
        if self._started and self._link.ok:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.deadline * 4):
                    await self._link.flush()  # releases and records still queued
            await self.leased.drop_all()
        self._link.closing = True
        self._link.wake()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # the client library may swallow a cancellation mid-request: the loops also stop
            # on `closing`, and nothing waits longer than a few deadlines
            await asyncio.wait(self._tasks, timeout=self.settings.deadline * 8)
        self._tasks = []
        await self._link.aclose()

    async def flush(self) -> None:
        """Return once what this replica has learnt so far was sent to the server."""
        self._ensure_started()
        await self._link.flush()

    def status(self) -> dict[str, Any]:
        """``ok`` (the server answers), ``server`` (without credentials), ``since`` (when that
        last changed, Unix time), ``error``, ``replica``, ``subscribed``, ``dropped_writes``."""
        out = self._link.status()
        out.update(
            replica=self.replica_id, subscribed=self.subscribed, dropped_writes=self._link.dropped
        )
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        out = super().snapshot()
        for eid in sorted({*out, *self.leased.endpoint_ids(), *self._usage.endpoint_ids()}):
            row = out.setdefault(
                eid,
                {
                    "breaker": self._breakers.states().get(eid, BreakerState.CLOSED).value,
                    "available": self._view.is_available(eid),
                    "in_use": 0,
                    "waiting": 0,
                    "last_failure": None,
                },
            )
            row.update(self.leased.snapshot(eid))
            row["usage"] = self._usage.fleet(eid).to_dict()
        return out

    # -- publishing what this replica learns ------------------------------------------------
    def _publish(self, message: dict[str, Any]) -> None:
        self._ensure_started()
        data = json.dumps({**message, "o": self.replica_id})
        channel = self._keys.channel

        async def op(r: Redis) -> Any:
            return await r.publish(channel, data)

        self._link.send(op)

    def _breaker_changed(self, endpoint_id: str, old: BreakerState, new: BreakerState) -> None:
        super()._breaker_changed(endpoint_id, old, new)
        if new is not BreakerState.HALF_OPEN:
            self._trials.pop(endpoint_id, None)
        if self._applying or new is BreakerState.HALF_OPEN:
            return
        b = self._breakers.breaker(endpoint_id)
        if new is BreakerState.OPEN:
            self._write_open(endpoint_id, b.remaining, b.last_reason or "", b.permanent)
        else:
            keys = (self._keys.breaker(endpoint_id), self._keys.trial(endpoint_id))

            async def op(r: Redis) -> Any:
                return await r.delete(*keys)

            self._link.send(op)
        self._publish(_breaker_message(endpoint_id, b))

    def _write_open(self, endpoint_id: str, remaining: float, reason: str, permanent: bool) -> None:
        key, trial, index = (
            self._keys.breaker(endpoint_id),
            self._keys.trial(endpoint_id),
            self._keys.index,
        )
        fields = {"reason": reason, "permanent": int(permanent), "by": self.replica_id}
        ms = max(1, int(remaining * 1000))

        async def op(r: Redis) -> Any:
            async with r.pipeline(transaction=False) as p:
                p.hset(key, mapping=fields)  # type: ignore[arg-type]
                p.pexpire(key, ms)
                p.delete(trial)
                p.sadd(index, endpoint_id)
                return await p.execute()

        self._link.send(op)

    def _failure_recorded(self, rec: FailureRecord) -> None:
        if self._applying:
            return
        key, index = self._keys.failure(rec.endpoint_id), self._keys.index
        data = json.dumps({**rec.to_dict(), "at_wall": time.time()})
        ttl = int(self.settings.failure_ttl)

        async def op(r: Redis) -> Any:
            async with r.pipeline(transaction=False) as p:
                p.set(key, data, ex=ttl)
                p.sadd(index, rec.endpoint_id)
                return await p.execute()

        self._link.send(op)
        self._publish(
            {
                "t": "failure",
                "id": rec.endpoint_id,
                "message": rec.message,
                "permanent": rec.permanent,
                "count": rec.count,
                "age": self._clock.now() - rec.at,
            }
        )

    def health_changed(self, endpoint_id: str, old: HealthStatus, new: HealthStatus) -> None:
        key, ttl = self._keys.health(endpoint_id), int(self.settings.health_ttl)
        index = self._keys.index

        async def op(r: Redis) -> Any:
            async with r.pipeline(transaction=False) as p:
                p.set(key, new.value, ex=ttl)
                p.sadd(index, endpoint_id)
                return await p.execute()

        self._link.send(op)
        self._publish({"t": "health", "id": endpoint_id, "status": new.value})

    def _usage_added(self, endpoint_id: str, inc: Usage) -> None:
        key, index = self._keys.usage(endpoint_id), self._keys.index

        async def op(r: Redis) -> Any:
            async with r.pipeline(transaction=False) as p:
                p.hincrbyfloat(key, "audio_seconds", inc.audio_seconds)
                p.hincrby(key, "sessions", inc.sessions)
                p.hincrbyfloat(key, "cost", inc.cost)
                p.sadd(index, endpoint_id)
                return await p.execute()

        self._ensure_started()
        self._link.send(op)

    # -- the half-open trial: one replica at a time ----------------------------------------
    def _trial_gate(self, endpoint_id: str) -> bool:
        if not self._link.ok:
            return True  # the server is down: each replica decides alone
        owner, until = self._trials.get(endpoint_id, ("", 0.0))
        if owner and time.monotonic() < until:
            return owner == self.replica_id
        if endpoint_id not in self._claiming:
            self._claiming.add(endpoint_id)
            self._ensure_started()
            with contextlib.suppress(RuntimeError):
                keep_task(asyncio.get_running_loop().create_task(self._claim_trial(endpoint_id)))
        return False  # until the claim is answered

    async def _claim_trial(self, endpoint_id: str) -> None:
        key, me = self._keys.trial(endpoint_id), self.replica_id
        ttl = self.settings.trial_ttl

        async def claim(r: Redis) -> Any:
            if await r.set(key, me, nx=True, px=int(ttl * 1000)):
                return me, ttl * 1000
            async with r.pipeline(transaction=False) as p:
                p.get(key)
                p.pttl(key)
                owner, pttl = await p.execute()
            return (owner.decode() if owner else ""), pttl

        try:
            owner, pttl = await self._link.call(claim)
            if owner:
                self._trials[endpoint_id] = (owner, time.monotonic() + max(0, pttl) / 1000)
        except Exception:  # the server is down: the gate lets this replica decide alone
            pass
        finally:
            self._claiming.discard(endpoint_id)

    # -- applying what other replicas publish ------------------------------------------------
    def apply_message(self, data: bytes | str) -> None:
        """Apply one message from the channel (messages of this replica are skipped)."""
        try:
            msg = json.loads(data)
            kind, eid = msg["t"], msg["id"]
        except (ValueError, KeyError, TypeError):
            log.warning("state store: skipped a malformed message %.80r", data)
            return
        if msg.get("o") == self.replica_id:
            return
        self._applying = True
        try:
            if kind == "breaker":
                self._breakers.breaker(eid).apply(
                    BreakerState(msg["state"]),
                    reason=msg.get("reason", ""),
                    remaining=float(msg.get("remaining", 0.0)),
                    permanent=bool(msg.get("permanent")),
                )
            elif kind == "failure":
                at = self._clock.now() - float(msg.get("age", 0.0))
                self._failures.apply(
                    FailureRecord(
                        eid, at, msg["message"], bool(msg["permanent"]), int(msg["count"])
                    )
                )
            elif kind == "health":
                self._health.add(self._remote_view)
                self._remote_health[eid] = (
                    msg["status"],
                    time.monotonic() + self.settings.health_ttl,
                )
            elif kind == "release":
                self.leased.released(eid)
        finally:
            self._applying = False

    async def _subscriber(self) -> None:
        aioredis = redis_module()
        while not self._link.closing:
            client = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=self.settings.deadline
            )
            pubsub = client.pubsub()
            try:
                async with asyncio.timeout(self.settings.deadline * 4):
                    await pubsub.subscribe(self._keys.channel)
                missed = not self.subscribed and self._link.failures > 0
                self.subscribed = True
                self._on_subscribed.set()
                if missed:
                    await self.resync()  # whatever was published while unsubscribed
                while not self._link.closing:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self.apply_message(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed = False
                self._link.down(exc)
            finally:
                with contextlib.suppress(BaseException):
                    await pubsub.aclose()
                with contextlib.suppress(BaseException):
                    await client.aclose()
            await asyncio.sleep(min(1.0, self.settings.deadline * 2))

    async def _keeper(self) -> None:
        """Renews leases (and notices the server going and coming back) every third of the
        lease TTL, at most every second."""
        period = min(1.0, self.settings.lease_ttl / 3)
        while not self._link.closing:
            await asyncio.sleep(period)
            with contextlib.suppress(Exception):
                await self._link.call(lambda r: r.ping())
            if self._link.ok:
                await self.leased.renew()

    # -- re-sync ---------------------------------------------------------------------------
    async def resync(self) -> None:
        """Re-assert this replica's open breakers and live leases, then read the fleet's
        breakers, failures, health, leases and usage into the local view."""
        try:
            for eid, state in self._breakers.states().items():
                b = self._breakers.breaker(eid)
                if (
                    state is BreakerState.OPEN
                    and b.remaining > 0
                    and not await self._link.call(_exists(self._keys.breaker(eid)))
                ):
                    self._write_open(eid, b.remaining, b.last_reason or "", b.permanent)
                    self._publish(_breaker_message(eid, b))
            await self.leased.renew()
            await self.refresh()
        except Exception as exc:  # the server went away again; the next answer re-syncs
            log.debug("state store re-sync interrupted: %s", exc)

    async def refresh(self) -> None:
        """Read the fleet's state from the server into the local view (raises when the server
        does not answer within the deadline)."""
        index = self._keys.index
        known = await self._link.call(lambda r: r.smembers(index))
        ids = sorted({_text(m) for m in known} | set(self._breakers.states()))
        keys = self._keys

        async def read(r: Redis) -> list[Any]:
            async with r.pipeline(transaction=False) as p:
                for eid in ids:
                    p.hgetall(keys.breaker(eid))
                    p.pttl(keys.breaker(eid))
                    p.get(keys.failure(eid))
                    p.get(keys.health(eid))
                    p.pttl(keys.health(eid))
                    p.hgetall(keys.usage(eid))
                return list(await p.execute())

        rows = await self._link.call(read)
        self._applying = True
        try:
            for i, eid in enumerate(ids):
                self._apply_row(eid, *rows[i * 6 : i * 6 + 6])
        finally:
            self._applying = False

    async def fleet(self, endpoints: Iterable[STTEndpoint]) -> dict[str, dict[str, Any]]:
        """The fleet's view of ``endpoints`` read from the server now: :meth:`snapshot` rows
        with live leases counted on the server (raises when it does not answer)."""
        eps = list(endpoints)
        for ep in eps:
            self.leased.has_capacity(ep)  # notes each limit
        await self.refresh()
        await self.leased.renew()
        snap = self.snapshot()
        return {ep.id: snap.get(ep.id, {}) for ep in eps} | {
            k: v for k, v in snap.items() if k not in {ep.id for ep in eps}
        }

    def _apply_row(
        self,
        eid: str,
        breaker: dict[bytes, bytes],
        breaker_ttl: int,
        failure: bytes | None,
        health: bytes | None,
        health_ttl: int,
        usage: dict[bytes, bytes],
    ) -> None:
        b = self._breakers.breaker(eid)
        if breaker and breaker_ttl > 0:
            remaining = breaker_ttl / 1000
            if b.state is not BreakerState.OPEN or abs(b.remaining - remaining) > 0.5:
                b.apply(
                    BreakerState.OPEN,
                    reason=breaker.get(b"reason", b"").decode(),
                    remaining=remaining,
                    permanent=breaker.get(b"permanent") == b"1",
                )
        if failure:
            rec = json.loads(failure)
            age = max(0.0, time.time() - float(rec["at_wall"]))
            local = self._failures.last(eid)
            if local is None or self._clock.now() - local.at > age + 1e-3:
                self._failures.apply(
                    FailureRecord(
                        eid, self._clock.now() - age, rec["message"], rec["permanent"], rec["count"]
                    )
                )
        if health and health_ttl > 0:
            self._health.add(self._remote_view)
            self._remote_health[eid] = (health.decode(), time.monotonic() + health_ttl / 1000)
        if usage:
            self._usage.set_fleet(
                eid,
                Usage(
                    float(usage.get(b"audio_seconds", 0)),
                    int(float(usage.get(b"sessions", 0))),
                    float(usage.get(b"cost", 0)),
                ),
            )

    def __repr__(self) -> str:
        where, prefix = self._link.where, self.settings.key_prefix
        return f"RedisState({where!r}, prefix={prefix!r}, ok={self._link.ok})"


class _RemoteHealth:
    """Unavailable where another replica's health monitor last found the endpoint unhealthy
    (for ``health_ttl`` seconds)."""

    def __init__(self, state: RedisState) -> None:
        self._state = state

    def is_available(self, endpoint_id: str) -> bool:
        status, until = self._state._remote_health.get(endpoint_id, ("", 0.0))
        return status != HealthStatus.UNHEALTHY.value or time.monotonic() >= until


def _exists(key: str) -> Callable[[Redis], Awaitable[Any]]:
    async def op(r: Redis) -> Any:
        return await r.exists(key)

    return op


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _breaker_message(endpoint_id: str, b: CircuitBreaker) -> dict[str, Any]:
    return {
        "t": "breaker",
        "id": endpoint_id,
        "state": b.state.value,
        "reason": b.last_reason or "",
        "permanent": b.permanent,
        "remaining": b.remaining,
    }
