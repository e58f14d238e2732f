"""Tier detection: Apple identifiers + RAM (seed §6), and the host running Python."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from sttrouter.panel.device import (
    APPLE_DEVICES,
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

U, PS, PM, UL = (
    DeviceTier.UNSUPPORTED,
    DeviceTier.PRO_STANDARD,
    DeviceTier.PRO_MAX,
    DeviceTier.ULTRA,
)


@pytest.mark.parametrize(
    ("identifier", "ram_gb", "tier"),
    [
        # the seed's §6.1 table, with the RAM each model reports
        ("iPhone18,2", 12, UL),  # 17 Pro Max
        ("iPhone18,1", 12, UL),  # 17 Pro
        ("iPhone18,2", 11.2, UL),  # iOS reports a little under the marketing size
        ("iPhone17,2", 8, PM),  # 16 Pro Max
        ("iPhone16,2", 8, PM),  # 15 Pro Max
        ("iPhone17,1", 8, PS),  # 16 Pro
        ("iPhone16,1", 8, PS),  # 15 Pro
        ("iPhone15,2", 6, PS),  # 14 Pro
        ("iPhone15,3", 6, PS),  # 14 Pro Max
        # known identifier, no RAM reported: the table's tier
        ("iPhone18,2", None, UL),
        ("iPhone15,2", None, PS),
        # known identifier reporting less RAM than its tier needs: memory decides (the seed's
        # `ultraTierIdentifiers.contains(identifier) && ramGB >= 12`, generalised)
        ("iPhone18,2", 8, PM),
        ("iPhone17,2", 6, PS),
        ("iPhone15,2", 4, U),
        # surrounding whitespace is tolerated
        (" iPhone18,1 ", None, UL),
    ],
)
def test_known_apple_devices(identifier: str, ram_gb: float | None, tier: DeviceTier) -> None:
    assert tier_for_apple_device(identifier, ram_gb) is tier


@pytest.mark.parametrize(
    ("identifier", "ram_gb", "tier"),
    [
        # unknown identifiers are classed by memory alone, never an error
        ("iPhone19,1", 12, UL),  # a future iPhone
        ("iPhone19,1", None, U),  # ...that does not report memory: no on-device promise
        ("iPad16,3", 16, UL),  # an iPad
        ("arm64", 8, PM),  # the simulator
        ("iPhone14,2", 6, PS),  # iPhone 13 Pro, not in the seed's table
        ("iPhone12,1", 4, U),  # iPhone 11
        ("", None, U),
        ("garbage!!", 3, U),
        ("iPhone18,3", float("nan"), U),
    ],
)
def test_unknown_identifiers_get_a_memory_answer(
    identifier: str, ram_gb: float | None, tier: DeviceTier
) -> None:
    assert tier_for_apple_device(identifier, ram_gb) is tier


def test_table_is_consistent_with_memory_thresholds() -> None:
    for dev in APPLE_DEVICES.values():
        # each row's nominal RAM reaches at least its tier
        assert tier_for_memory(dev.ram_gb).rank >= dev.tier.rank
        assert tier_for_apple_device(dev.identifier, dev.ram_gb) is dev.tier


@pytest.mark.parametrize(
    ("ram", "tier"),
    [(None, U), (0, U), (5.4, U), (5.5, PS), (6, PS), (7, PM), (10.9, PM), (11, UL), (80, UL)],
)
def test_tier_for_memory(ram: float | None, tier: DeviceTier) -> None:
    assert tier_for_memory(ram) is tier


def test_tier_order_means_capability() -> None:
    assert [t.rank for t in (U, PS, PM, UL)] == [0, 1, 2, 3]
    assert ThermalState.CRITICAL.rank > ThermalState.NOMINAL.rank


class _Props:
    def __init__(self, gb: float) -> None:
        self.total_memory = int(gb * 1024**3)


def _fake_torch(*, cuda: list[float] | None = None, mps: bool = False, boom: bool = False) -> Any:
    torch = types.SimpleNamespace()

    def is_available() -> bool:
        if boom:
            raise RuntimeError("CUDA driver version is insufficient")
        return bool(cuda)

    torch.cuda = types.SimpleNamespace(
        is_available=is_available,
        device_count=lambda: len(cuda or []),
        get_device_properties=lambda i: _Props((cuda or [])[i]),
    )
    torch.backends = types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps))
    return torch


def test_host_ram_is_measured() -> None:
    info = detect_host(use_torch=False)
    assert info.ram_gb is not None
    assert info.ram_gb > 0.1
    assert info.accelerator is None
    assert info.engine_memory_gb == info.ram_gb


def test_host_cuda_memory_wins_over_ram() -> None:
    info = detect_host(torch_module=_fake_torch(cuda=[16.0, 80.0]))
    assert info.accelerator == "cuda"
    assert info.accelerator_memory_gb == pytest.approx(80.0)
    assert info.tier is UL


def test_host_small_gpu_gives_low_tier() -> None:
    info = detect_host(torch_module=_fake_torch(cuda=[4.0]))
    assert info.engine_memory_gb == pytest.approx(4.0)
    assert info.tier is U


def test_host_mps_uses_unified_memory() -> None:
    info = detect_host(torch_module=_fake_torch(mps=True))
    assert info.accelerator == "mps"
    assert info.accelerator_memory_gb == info.ram_gb


def test_host_broken_driver_falls_back_to_ram() -> None:
    info = detect_host(torch_module=_fake_torch(boom=True))
    assert info.accelerator is None
    assert info.engine_memory_gb == info.ram_gb


def test_host_without_accelerator() -> None:
    info = detect_host(torch_module=_fake_torch())
    assert info.accelerator is None


def test_detect_host_uses_an_already_imported_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=[24.0]))
    assert detect_host().accelerator == "cuda"


def test_detect_host_without_torch_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    info = detect_host()
    assert info.accelerator is None
    assert "torch" not in sys.modules


def test_detect_host_survives_a_broken_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import importlib.util

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())

    def boom(name: str) -> Any:
        raise OSError("libcudart.so: cannot open shared object file")

    monkeypatch.setattr(importlib, "import_module", boom)
    assert detect_host().accelerator is None


def test_host_ram_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def fail(name: str) -> int:
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", fail)
    info = detect_host(use_torch=False)
    assert info.ram_gb is None
    assert info.tier is U


def test_host_conditions() -> None:
    host = HostInfo(ram_gb=32.0, accelerator="cuda", accelerator_memory_gb=8.0)
    c = host_conditions("constrained", "fair", host=host)
    assert c == Conditions(
        tier=PM, network=NetworkStatus.CONSTRAINED, thermal=ThermalState.FAIR, memory_gb=8.0
    )
    measured = host_conditions(host=detect_host(use_torch=False))
    assert measured.memory_gb is not None
