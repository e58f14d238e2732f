"""``sttrouter route``: show the chain the router picks for given conditions, and why.

Examples::

    sttrouter route --tier ultra --network disconnected --thermal serious
    sttrouter route --device iPhone17,2 --ram-gb 8 --language zh --json
    sttrouter route --host --config endpoints.toml --policy policy.toml
    sttrouter route --config endpoints.toml --load glm#1=3 --load glm#2=1   # pool replicas
    sttrouter route --config endpoints.toml --tenant acme --spent 4.50      # budgets
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from sttrouter.errors import ConfigError
from sttrouter.panel.budgets import BudgetBook, Spend
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
    p.add_argument(
        "--load",
        action="append",
        metavar="ID=STREAMS",
        help="streams a pool replica holds now (repeatable): replicas are ordered least "
        "loaded first",
    )
    p.add_argument(
        "--tenant",
        metavar="KEY",
        help="decide for this tenant under the config's [[budget]] tables",
    )
    p.add_argument(
        "--spent",
        metavar="USD",
        default="0",
        help="with --tenant: US dollars the tenant has spent in every budget period",
    )
    p.add_argument(
        "--spent-hours",
        metavar="H",
        default="0",
        help="with --tenant: hours of priced audio the tenant has used in every budget period",
    )
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


class _Load(dict[str, int]):
    """Streams per replica, from ``--load ID=N`` flags."""

    def in_use(self, endpoint_id: str) -> int:
        return self.get(endpoint_id, 0)


def load_from_args(values: list[str] | None) -> _Load | None:
    if not values:
        return None
    load = _Load()
    for value in values:
        eid, sep, count = value.partition("=")
        if not sep or not count.strip().isdigit():
            raise ConfigError(f"--load {value!r} must look like ID=STREAMS, e.g. glm#1=3")
        load[eid.strip()] = int(count)
    return load


def budget_from_args(args: argparse.Namespace, router: Router) -> BudgetBook | None:
    if args.tenant is None:
        return None
    budgets = router.registry.budgets
    if not budgets:
        raise ConfigError(
            "--tenant needs [[budget]] tables in the --config registry file",
            source=router.registry.source,
        )
    try:
        spend = Spend(Decimal(args.spent), float(args.spent_hours) * 3600)
    except (InvalidOperation, ValueError):
        raise ConfigError("--spent and --spent-hours must be numbers") from None
    book = BudgetBook(budgets)
    book.record(args.tenant, spend)
    return book


def run(args: argparse.Namespace) -> int:
    router = router_from_args(args)
    book = budget_from_args(args, router)
    decision = router.decide(
        conditions_from_args(args),
        language=args.language,
        streaming=not args.batch,
        environ=environ_from_args(args),
        load=load_from_args(args.load),
        budget=None if book is None else book.view(args.tenant),
    )
    if args.json:
        print(decision.to_json(indent=2))
    else:
        print(decision.explain())
    return 0 if decision.chain else 3
