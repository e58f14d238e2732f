"""Device tier, network and thermal state: the conditions a routing decision is made under.

Also tier detection: from an Apple device identifier plus the RAM the device reports
(:func:`tier_for_apple_device`), and for the host running Python from its RAM and, when torch
is installed, its CUDA/MPS memory (:func:`detect_host`).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from sttrouter.endpoint import DeviceTier, NetworkStatus, ThermalState

__all__ = [
    "APPLE_DEVICES",
    "AppleDevice",
    "Conditions",
    "DeviceTier",
    "HostInfo",
    "NetworkStatus",
    "ThermalState",
    "detect_host",
    "host_conditions",
    "tier_for_apple_device",
    "tier_for_memory",
]


@attrs.frozen
class Conditions:
    """What the router knows about the device and its surroundings right now."""

    tier: DeviceTier = attrs.field(default=DeviceTier.PRO_MAX, converter=DeviceTier)
    network: NetworkStatus = attrs.field(default=NetworkStatus.CONNECTED, converter=NetworkStatus)
    thermal: ThermalState = attrs.field(default=ThermalState.NOMINAL, converter=ThermalState)
    memory_gb: float | None = None
    """Memory available for an in-process engine, when known."""


# --- tier detection ---------------------------------------------------------------------------

# RAM thresholds (GB) per tier. iOS reports physical memory slightly below the marketing figure
# (a 12 GB phone reports about 11.2 GiB), so each threshold sits a little under the nominal size.
_TIER_RAM_GB: tuple[tuple[DeviceTier, float], ...] = (
    (DeviceTier.ULTRA, 11.0),  # 12 GB class
    (DeviceTier.PRO_MAX, 7.0),  # 8 GB class
    (DeviceTier.PRO_STANDARD, 5.5),  # 6 GB class
)


@attrs.frozen
class AppleDevice:
    """One row of the known-device table.

    Attributes:
        identifier: the ``utsname.machine`` string, e.g. ``"iPhone18,2"``.
        model: marketing name.
        ram_gb: installed RAM.
        tier: the tier the UnaMentis design assigns to it.
    """

    identifier: str
    model: str
    ram_gb: float
    tier: DeviceTier


APPLE_DEVICES: Mapping[str, AppleDevice] = MappingProxyType(
    {
        d.identifier: d
        for d in (
            # UnaMentis' device table (its iPhone 17 identifiers were projected before release;
            # these are the shipped ones).
            AppleDevice("iPhone18,1", "iPhone 17 Pro", 12, DeviceTier.ULTRA),
            AppleDevice("iPhone18,2", "iPhone 17 Pro Max", 12, DeviceTier.ULTRA),
            AppleDevice("iPhone17,2", "iPhone 16 Pro Max", 8, DeviceTier.PRO_MAX),
            AppleDevice("iPhone17,1", "iPhone 16 Pro", 8, DeviceTier.PRO_STANDARD),
            AppleDevice("iPhone16,2", "iPhone 15 Pro Max", 8, DeviceTier.PRO_MAX),
            AppleDevice("iPhone16,1", "iPhone 15 Pro", 8, DeviceTier.PRO_STANDARD),
            AppleDevice("iPhone15,3", "iPhone 14 Pro Max", 6, DeviceTier.PRO_STANDARD),
            AppleDevice("iPhone15,2", "iPhone 14 Pro", 6, DeviceTier.PRO_STANDARD),
        )
    }
)
"""Known Apple identifiers. ``proMax`` is the 8 GB Pro Max line, ``proStandard`` the 6-8 GB Pro
line from the 14 Pro on, as UnaMentis classes them."""


def tier_for_memory(ram_gb: float | None) -> DeviceTier:
    """The tier a device with ``ram_gb`` of memory reaches on memory alone.

    ``>= 11`` GB → ``ultra``, ``>= 7`` → ``pro_max``, ``>= 5.5`` → ``pro_standard``, else (or
    unknown) ``unsupported``.
    """
    if ram_gb is None or not math.isfinite(ram_gb):
        return DeviceTier.UNSUPPORTED
    for tier, floor in _TIER_RAM_GB:
        if ram_gb >= floor:
            return tier
    return DeviceTier.UNSUPPORTED


def _min_tier(a: DeviceTier, b: DeviceTier) -> DeviceTier:
    return a if a.rank <= b.rank else b


def tier_for_apple_device(identifier: str, ram_gb: float | None = None) -> DeviceTier:
    """Device tier from an Apple device identifier and the RAM the device reports.

    Rules, in order:

    * A known identifier (:data:`APPLE_DEVICES`) gets its table tier; when ``ram_gb`` is given
      and lower than that tier needs, the tier drops to what the memory allows (UnaMentis'
      ``identifier in ultraTierIdentifiers && ramGB >= 12`` check, generalised).
    * Any other identifier (a future iPhone, an iPad, a Mac, the simulator's ``"arm64"``, or
      garbage) is never an error: it is classed by memory alone (:func:`tier_for_memory`), and
      is ``unsupported`` when the memory is unknown. A device we cannot name therefore never gets
      an on-device engine unless it reports the memory that engine needs.
    """
    known = APPLE_DEVICES.get(identifier.strip())
    if known is None:
        return tier_for_memory(ram_gb)
    if ram_gb is None:
        return known.tier
    return _min_tier(known.tier, tier_for_memory(ram_gb))


@attrs.frozen
class HostInfo:
    """Memory of the machine running Python.

    Attributes:
        ram_gb: physical RAM, ``None`` when it cannot be read.
        accelerator: ``"cuda"``, ``"mps"`` or ``None``.
        accelerator_memory_gb: memory of the largest CUDA device; for MPS (unified memory)
            the RAM.
    """

    ram_gb: float | None
    accelerator: str | None = None
    accelerator_memory_gb: float | None = None

    @property
    def engine_memory_gb(self) -> float | None:
        """Memory an in-process engine can use: the accelerator's when there is one."""
        if self.accelerator_memory_gb is not None:
            return self.accelerator_memory_gb
        return self.ram_gb

    @property
    def tier(self) -> DeviceTier:
        """The host's tier, from :attr:`engine_memory_gb` with the device thresholds."""
        return tier_for_memory(self.engine_memory_gb)


_GB = 1024**3


def _host_ram_gb() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages <= 0 or size <= 0:
        return None
    return float(pages * size) / _GB


def _torch_if_installed() -> Any:
    """The torch module when it is already imported or installed; never installs or requires it."""
    mod = sys.modules.get("torch")
    if mod is not None:
        return mod
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.import_module("torch")
    except Exception:  # a broken torch install must not break routing
        return None


def _accelerator(torch: Any, ram_gb: float | None) -> tuple[str | None, float | None]:
    try:
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_available():
            sizes = [cuda.get_device_properties(i).total_memory for i in range(cuda.device_count())]
            if sizes:
                return "cuda", max(sizes) / _GB
        mps = getattr(getattr(torch, "backends", None), "mps", None)
        if mps is not None and mps.is_available():
            return "mps", ram_gb
    except Exception:  # driver errors: fall back to RAM
        return None, None
    return None, None


def detect_host(*, use_torch: bool = True, torch_module: Any = None) -> HostInfo:
    """Measure the host: RAM, and CUDA/MPS memory when torch is installed.

    Args:
        use_torch: look at torch at all. torch is imported only if it is installed (importing
            it takes a second or two the first time); it is never required.
        torch_module: a torch-like object to use instead (tests).
    """
    ram = _host_ram_gb()
    torch = torch_module
    if torch is None and use_torch:
        torch = _torch_if_installed()
    accel, accel_mem = (None, None) if torch is None else _accelerator(torch, ram)
    return HostInfo(ram_gb=ram, accelerator=accel, accelerator_memory_gb=accel_mem)


def host_conditions(
    network: NetworkStatus | str = NetworkStatus.CONNECTED,
    thermal: ThermalState | str = ThermalState.NOMINAL,
    *,
    host: HostInfo | None = None,
) -> Conditions:
    """Conditions for an engine running in this Python process (tier and memory measured)."""
    info = detect_host() if host is None else host
    return Conditions(
        tier=info.tier, network=network, thermal=thermal, memory_gb=info.engine_memory_gb
    )
