"""The patch panel: endpoints, pools, conditions, policy, budgets and routing decisions. Pure:
no I/O.

``Router(registry, policy).decide(conditions)`` returns a :class:`Decision`: the ordered chain
of endpoints to try and, for every registered endpoint, its rank or why it was left out.
"""

from sttrouter.endpoint import ConnectionConfig, Location, Provider, STTEndpoint
from sttrouter.panel.budgets import (
    Budget,
    BudgetBook,
    BudgetMeter,
    BudgetView,
    InMemorySpend,
    OnExhausted,
    Period,
    Spend,
    SpendCounters,
)
from sttrouter.panel.device import (
    Conditions,
    DeviceTier,
    HostInfo,
    NetworkStatus,
    ThermalState,
    detect_host,
    host_conditions,
    tier_for_apple_device,
    tier_for_memory,
)
from sttrouter.panel.policy import Policy, Rule, Unlisted, default_policy
from sttrouter.panel.pools import LoadView, PoolLoad, Replica
from sttrouter.panel.registry import EndpointRegistry, default_registry
from sttrouter.panel.router import BoundRouter, Decision, HealthView, Router, SkipReason, Verdict

__all__ = [
    "BoundRouter",
    "Budget",
    "BudgetBook",
    "BudgetMeter",
    "BudgetView",
    "Conditions",
    "ConnectionConfig",
    "Decision",
    "DeviceTier",
    "EndpointRegistry",
    "HealthView",
    "HostInfo",
    "InMemorySpend",
    "LoadView",
    "Location",
    "NetworkStatus",
    "OnExhausted",
    "Period",
    "Policy",
    "PoolLoad",
    "Provider",
    "Replica",
    "Router",
    "Rule",
    "STTEndpoint",
    "SkipReason",
    "Spend",
    "SpendCounters",
    "ThermalState",
    "Unlisted",
    "Verdict",
    "default_policy",
    "default_registry",
    "detect_host",
    "host_conditions",
    "tier_for_apple_device",
    "tier_for_memory",
]
