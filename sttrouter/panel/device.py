"""Device tier, network and thermal state: the conditions a routing decision is made under.

Tier detection from an Apple device identifier or from the host is added by the patch-panel
work; this module holds the value types every layer shares.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["Conditions", "DeviceTier", "NetworkStatus", "ThermalState"]


class _Ranked(enum.StrEnum):
    """A string enum whose members are ordered by declaration."""

    @property
    def rank(self) -> int:
        return list(type(self)).index(self)


class DeviceTier(_Ranked):
    """How capable the device is, weakest first (so ``tier.rank >= min_tier.rank`` means able)."""

    UNSUPPORTED = "unsupported"
    PRO_STANDARD = "pro_standard"
    PRO_MAX = "pro_max"
    ULTRA = "ultra"


class NetworkStatus(_Ranked):
    """Network reachability, best first."""

    CONNECTED = "connected"
    CONSTRAINED = "constrained"
    DISCONNECTED = "disconnected"


class ThermalState(_Ranked):
    """Thermal pressure, coolest first (as iOS ``ProcessInfo.ThermalState``)."""

    NOMINAL = "nominal"
    FAIR = "fair"
    SERIOUS = "serious"
    CRITICAL = "critical"


@attrs.frozen
class Conditions:
    """What the router knows about the device and its surroundings right now."""

    tier: DeviceTier = attrs.field(default=DeviceTier.PRO_MAX, converter=DeviceTier)
    network: NetworkStatus = attrs.field(default=NetworkStatus.CONNECTED, converter=NetworkStatus)
    thermal: ThermalState = attrs.field(default=ThermalState.NOMINAL, converter=ThermalState)
    memory_gb: float | None = None
    """Memory available for an in-process engine, when known."""
