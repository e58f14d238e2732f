"""Settings and key names of the Redis state store (no I/O here)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

from sttrouter.errors import ConfigError

__all__ = ["RedisSettings", "StateKeys"]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, int | float) and value > 0):
        raise ConfigError(f"[state] {attr.name} must be a positive number, got {value!r}")


@attrs.frozen
class RedisSettings:
    """How a :class:`~sttrouter.state.RedisState` talks to its server.

    Attributes:
        url_env: the environment variable holding the server URL (``redis://`` or
            ``rediss://``, with a password if it needs one). The URL itself never goes in a
            file or on a command line.
        key_prefix: start of every key and of the pub/sub channel; replicas that share state
            use the same prefix.
        lease_ttl: seconds an admission lease lives without renewal; a crashed replica's
            streams free their slots after this long. Live leases are renewed every third of
            it.
        trial_ttl: seconds one replica owns a half-open breaker's trial.
        failure_ttl: seconds a failure record stays in the server.
        health_ttl: seconds a shared health status stays in the server.
        deadline: seconds any one request to the server may take; past it the store counts
            the server as down and routing goes on from the local view.
        replicas: how many replicas share the limits; while the server is down each admits
            ``ceil(max_concurrent_sessions / replicas)`` streams per endpoint (the fallback
            limit), so the fleet stays within the limit.
        poll_interval: seconds between admission retries of a waiting stream when no release
            was announced (a crashed replica's lease expires without one).
    """

    url_env: str = "STTROUTER_REDIS_URL"
    key_prefix: str = "sttrouter"
    lease_ttl: float = attrs.field(default=15.0, validator=_positive)
    trial_ttl: float = attrs.field(default=30.0, validator=_positive)
    failure_ttl: float = attrs.field(default=3600.0, validator=_positive)
    health_ttl: float = attrs.field(default=60.0, validator=_positive)
    deadline: float = attrs.field(default=0.25, validator=_positive)
    replicas: int = attrs.field(default=1, validator=_positive)
    poll_interval: float = attrs.field(default=0.1, validator=_positive)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> RedisSettings:
        """Settings from a ``[state]`` table (``url_env`` and the fields above)."""
        if not isinstance(data, Mapping):
            raise ConfigError("[state] must be a table", source=source, field="state")
        known = {f.name for f in attrs.fields(cls)}
        for key in data:
            if key in ("url", "password"):
                raise ConfigError(
                    f"[state] {key}: never write the server URL or a password in a file; put "
                    'it in an environment variable and name it: url_env = "STTROUTER_REDIS_URL"',
                    source=source,
                    field=key,
                )
            if key not in known and key != "store":
                raise ConfigError(
                    f"unknown key in [state] (known: store, {', '.join(sorted(known))})",
                    source=source,
                    field=key,
                )
        kwargs = {k: v for k, v in data.items() if k in known}
        for name in ("url_env", "key_prefix"):
            if name in kwargs and not (isinstance(kwargs[name], str) and kwargs[name]):
                raise ConfigError(f"[state] {name} must be a non-empty string", source=source)
        return cls(**kwargs)

    def url(self) -> str:
        """The URL from :attr:`url_env`."""
        value = os.environ.get(self.url_env, "")
        if not value:
            raise ConfigError(
                f"the state store's URL is read from ${self.url_env}, which is not set; set it "
                "to redis://host:6379/0 (or drop the [state] table for in-memory state)",
                field="url_env",
            )
        return value

    def fallback_limit(self, limit: int) -> int:
        """This replica's limit while the server is down."""
        return max(1, math.ceil(limit / self.replicas))


@attrs.frozen
class StateKeys:
    """Key names. Every key of one endpoint carries the hash tag ``{endpoint id}``, so they
    share one Redis Cluster slot and a script may touch them together."""

    prefix: str

    def _ep(self, endpoint_id: str, what: str) -> str:
        return f"{self.prefix}:{{{endpoint_id}}}:{what}"

    def breaker(self, endpoint_id: str) -> str:
        return self._ep(endpoint_id, "breaker")

    def trial(self, endpoint_id: str) -> str:
        return self._ep(endpoint_id, "trial")

    def failure(self, endpoint_id: str) -> str:
        return self._ep(endpoint_id, "failure")

    def leases(self, endpoint_id: str) -> str:
        return self._ep(endpoint_id, "leases")

    def usage(self, endpoint_id: str) -> str:
        return self._ep(endpoint_id, "usage")

    def health(self, endpoint_id: str) -> str:
        return self._ep(endpoint_id, "health")

    @property
    def index(self) -> str:
        """The set of endpoint ids the fleet has state for."""
        return f"{self.prefix}:endpoints"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:events"
