"""Routing state: what routing learns about endpoints, shared by every session of a context.

- :class:`StateStore`: the protocol — breakers, health views, the failure ledger and admission
  limits, each a local view read synchronously on the hot path.
- :class:`InMemoryState`: the default store, everything in this process.
- :class:`RedisState`: the same parts shared by every replica through a Redis-protocol server
  (the ``redis`` extra), configured by :class:`RedisSettings` (``[state]`` in the registry file).
- :class:`FailureLedger` / :class:`FailureRecord`: the last failure of every endpoint and which
  endpoints are unusable.
- :class:`UsageCounters` / :class:`Usage`: audio seconds, sessions and cost per endpoint.

A :class:`~sttrouter.RoutingContext` holds one store and gives it to every session it makes, so
an endpoint one session finds broken is skipped by the next, and concurrency limits hold
across all of them.
"""

from sttrouter.state._factory import store_from_config
from sttrouter.state._ledger import FailureLedger, FailureRecord
from sttrouter.state._memory import InMemoryState
from sttrouter.state._redis import RedisState
from sttrouter.state._redis_settings import RedisSettings
from sttrouter.state._store import StateStore
from sttrouter.state._usage import Usage, UsageCounters

__all__ = [
    "FailureLedger",
    "FailureRecord",
    "InMemoryState",
    "RedisSettings",
    "RedisState",
    "StateStore",
    "Usage",
    "UsageCounters",
    "store_from_config",
]
