"""The patch panel: endpoints, conditions, policy and routing decisions. Pure: no I/O.

``Router(registry, policy).decide(conditions)`` returns a :class:`Decision`: the ordered chain
of endpoints to try and, for every registered endpoint, its rank or why it was left out.
"""

from sttrouter.endpoint import ConnectionConfig, Location, Provider, STTEndpoint
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
from sttrouter.panel.registry import EndpointRegistry, default_registry
from sttrouter.panel.router import Decision, HealthView, Router, SkipReason, Verdict

__all__ = [
    "Conditions",
    "ConnectionConfig",
    "Decision",
    "DeviceTier",
    "EndpointRegistry",
    "HealthView",
    "HostInfo",
    "Location",
    "NetworkStatus",
    "Policy",
    "Provider",
    "Router",
    "Rule",
    "STTEndpoint",
    "SkipReason",
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
