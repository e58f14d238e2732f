"""The state store a ``[state]`` table asks for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sttrouter.clock import Clock
from sttrouter.errors import ConfigError
from sttrouter.state._memory import InMemoryState
from sttrouter.state._redis import RedisState
from sttrouter.state._redis_settings import RedisSettings
from sttrouter.state._store import StateStore

__all__ = ["store_from_config"]


def store_from_config(
    table: Mapping[str, Any], *, clock: Clock | None = None, source: str = "<dict>"
) -> StateStore:
    """The store a registry file's ``[state]`` table names.

    An empty table, or ``store = "memory"``, is in-memory state. ``store = "redis"`` (the
    default once the table names anything else) is a :class:`RedisState` whose URL is read
    from the environment variable ``url_env`` (default ``STTROUTER_REDIS_URL``)::

        [state]
        url_env = "STTROUTER_REDIS_URL"
        key_prefix = "sttrouter"
        lease_ttl = 15
    """
    kind = table.get("store", "redis" if table else "memory")
    if kind == "memory":
        if set(table) - {"store"}:
            raise ConfigError(
                '[state] store = "memory" takes no other settings', source=source, field="store"
            )
        return InMemoryState(clock=clock)
    if kind != "redis":
        raise ConfigError(
            f'[state] store must be "memory" or "redis", got {kind!r}',
            source=source,
            field="store",
        )
    return RedisState.from_settings(RedisSettings.from_dict(table, source), clock=clock)
