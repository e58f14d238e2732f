"""``sttrouter route``: show the chain the router picks for given conditions, and why.

Examples::

    sttrouter route --tier ultra --network disconnected --thermal serious
    sttrouter route --device iPhone17,2 --ram-gb 8 --language zh --json
    sttrouter route --host --config endpoints.toml --policy policy.toml
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from sttrouter.panel.device import (
    Conditions,
    DeviceTier,
    NetworkStatus,
    ThermalState,
    detect_host,
    tier_for_apple_device,
)
from sttrouter.panel.policy import Policy
from sttrouter.panel.registry import EndpointRegistry, default_registry
from sttrouter.panel.router import Router

__all__ = [
    "add_router_arguments",
    "environ_from_args",
    "register",
    "registry_from_args",
    "router_from_args",
    "run",
]


class _AllKeys(dict[str, str]):
    """An environment in which every variable is set (for ``--assume-keys``)."""

    def get(self, key: str, default: object = None) -> str:
        return "set"


def add_router_arguments(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--policy`` and ``--assume-keys``: shared by route and simulate."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="endpoint registry TOML (default: the built-in registry, examples/endpoints.toml)",
    )
    p.add_argument("--policy", metavar="FILE", help="policy TOML (default: the built-in policy)")
    p.add_argument(
        "--assume-keys",
        action="store_true",
        help="treat every api_key_env as set (plan without the keys at hand)",
    )


def registry_from_args(args: argparse.Namespace) -> EndpointRegistry:
    return default_registry() if args.config is None else EndpointRegistry.load(args.config)


def router_from_args(args: argparse.Namespace) -> Router:
    policy = None if args.policy is None else Policy.load(args.policy)
    return Router(registry_from_args(args), policy)


def environ_from_args(args: argparse.Namespace) -> Mapping[str, str]:
    return _AllKeys() if args.assume_keys else os.environ


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "route",
        help="show which endpoints a session would use under given conditions, and why",
        description="Decide the endpoint chain for a device tier, network and thermal state, "
        "and explain every endpoint left out.",
    )
    p.add_argument("--tier", choices=[t.value for t in DeviceTier], help="device tier")
    p.add_argument(
        "--device",
        metavar="IDENT",
        help="Apple device identifier (e.g. iPhone18,2): the tier is detected from it",
    )
    p.add_argument("--ram-gb", type=float, help="RAM the device reports (with --device)")
    p.add_argument("--host", action="store_true", help="detect tier and memory from this host")
    p.add_argument(
        "--network", choices=[n.value for n in NetworkStatus], default=NetworkStatus.CONNECTED
    )
    p.add_argument(
        "--thermal", choices=[t.value for t in ThermalState], default=ThermalState.NOMINAL
    )
    p.add_argument("--memory-gb", type=float, help="memory free for an in-process engine")
    p.add_argument("--language", help="BCP-47 language code the session needs (e.g. en, zh)")
    p.add_argument("--batch", action="store_true", help="a batch (non-streaming) request")
    add_router_arguments(p)
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=run)


def conditions_from_args(args: argparse.Namespace) -> Conditions:
    memory = args.memory_gb
    if args.host:
        host = detect_host()
        tier = host.tier
        memory = host.engine_memory_gb if memory is None else memory
    elif args.device:
        tier = tier_for_apple_device(args.device, args.ram_gb)
    else:
        tier = DeviceTier(args.tier or DeviceTier.PRO_MAX)
    if args.tier and (args.device or args.host):
        tier = DeviceTier(args.tier)  # an explicit tier wins over detection
    return Conditions(tier=tier, network=args.network, thermal=args.thermal, memory_gb=memory)


def run(args: argparse.Namespace) -> int:
    router = router_from_args(args)
    decision = router.decide(
        conditions_from_args(args),
        language=args.language,
        streaming=not args.batch,
        environ=environ_from_args(args),
    )
    if args.json:
        print(decision.to_json(indent=2))
    else:
        print(decision.explain())
    return 0 if decision.chain else 3
