"""The connection of a Redis state store: bounded calls, background writes and its status.

Nothing on the hot path waits here: writes go into an outbox that a background task sends;
calls that must be answered (an admission lease) take at most the store's deadline. The first
failure marks the server down with one WARNING; the next answer marks it up with one INFO and
asks the store to re-sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from sttrouter.state._redis_settings import RedisSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisLink", "keep_task", "redact", "redis_module"]

log = logging.getLogger("sttrouter.state")

T = TypeVar("T")
Op = Callable[["Redis"], Awaitable[object]]


def redis_module() -> Any:
    """The ``redis.asyncio`` module, or an error that names the extra to install."""
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - the dev install has it
        raise ImportError(
            "RedisState needs the redis package: pip install 'sttrouter[redis]'"
        ) from exc
    return aioredis


def redact(url: str) -> str:
    """``url`` without its user and password (for logs and status)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisLink:
    """One client with a short deadline, an outbox of writes and the up/down status."""

    def __init__(self, url: str, settings: RedisSettings, *, outbox_limit: int = 10_000) -> None:
        aioredis = redis_module()
        self.settings = settings
        self.where = redact(url)
        timeout = settings.deadline
        self.client: Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
        )
        self.ok = False
        self.since = time.time()
        self.error: str | None = "not connected yet"
        self.failures = 0
        self.on_up: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._outbox: deque[Op] = deque(maxlen=outbox_limit)
        self._wake = asyncio.Event()
        self.dropped = 0
        self._busy = False
        self.closing = False
        self._idle = asyncio.Event()
        self._down_errors: tuple[type[BaseException], ...] = (
            OSError,
            TimeoutError,
            *_redis_errors(),
        )

    async def call(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``op`` within the deadline; a failure marks the server down and re-raises."""
        try:
            async with asyncio.timeout(self.settings.deadline):
                result = await op(self.client)
        except self._down_errors as exc:
            self.down(exc)
            raise
        self.up()
        return result

    def send(self, op: Op) -> None:
        """Queue a write for the background writer (dropped while the server is down: the
        re-sync restores what matters)."""
        if not self.ok and self.error != "not connected yet":
            self.dropped += 1
            return
        self._outbox.append(op)
        self._idle.clear()
        self._wake.set()

    async def writer(self) -> None:
        """Send queued writes, in order, forever."""
        while not self.closing:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                op = self._outbox.popleft()
                self._busy = True
                with contextlib.suppress(Exception):
                    await self.call(op)
                self._busy = False
            self._idle.set()

    async def flush(self) -> None:
        """Return once every queued write was sent (or dropped because the server is down)."""
        if self._outbox or self._busy:
            await self._idle.wait()

    def down(self, exc: BaseException) -> None:
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.ok or self.failures == 1:
            self.since = time.time()
            log.warning(
                "state store %s unreachable (%s); routing on the local view with local "
                "fallback limits until it is back",
                self.where,
                self.error,
            )
        self.ok = False
        self._outbox.clear()
        self._idle.set()

    def up(self) -> None:
        if self.ok:
            return
        was_down = self.failures > 0
        self.ok = True
        self.error = None
        self.since = time.time()
        if was_down:
            log.info("state store %s reachable again; re-syncing", self.where)
            if self.on_up is not None:
                keep_task(asyncio.get_running_loop().create_task(self.on_up()))

    def status(self) -> dict[str, Any]:
        return {
            "store": "redis",
            "ok": self.ok,
            "server": self.where,
            "since": self.since,
            "error": self.error,
        }

    def wake(self) -> None:
        """Let the writer see :attr:`closing`."""
        self._wake.set()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _redis_errors() -> tuple[type[Exception], ...]:
    """The errors that mean the server is unreachable or slow (not a refused command)."""
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


_TASKS: set[asyncio.Task[Any]] = set()


def keep_task(task: asyncio.Task[Any]) -> None:
    """Hold a reference to a fire-and-forget task until it ends."""
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
