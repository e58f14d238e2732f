"""``sttrouter endpoints``: list the endpoints of a registry file, or check one.

Examples::

    sttrouter endpoints list                    # the built-in registry
    sttrouter endpoints list endpoints.toml --json
    sttrouter endpoints check endpoints.toml    # exit 1 and a message naming file, endpoint, field
"""

from __future__ import annotations

import argparse
import json
import os

from sttrouter.endpoint import STTEndpoint
from sttrouter.panel.registry import EndpointRegistry, default_registry, endpoint_to_dict

__all__ = ["register", "run", "table"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "endpoints",
        help="list or validate an endpoint registry file",
        description="List the endpoints of a registry TOML file (or the built-in registry), "
        "or validate one.",
    )
    sub = p.add_subparsers(dest="endpoints_command", metavar="ACTION", required=True)
    lst = sub.add_parser("list", help="print the endpoints as a table")
    lst.add_argument("file", nargs="?", help="registry TOML (default: the built-in registry)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    chk = sub.add_parser("check", help="validate a registry file and print its table")
    chk.add_argument("file", help="registry TOML")
    p.set_defaults(func=run)


def _key_state(ep: STTEndpoint) -> str:
    env = ep.connection.api_key_env
    if env is None:
        return "-"
    return f"{env} ({'set' if os.environ.get(env) else 'not set'})"


def table(registry: EndpointRegistry) -> str:
    """A fixed-width table of the registry (no secrets: key columns show the variable name)."""
    head = (
        "id", "provider", "location", "latency", "rel", "cost/h", "stream", "network",
        "min tier", "max heat", "mem GB", "languages", "api key",
    )  # fmt: skip
    rows = [head]
    for ep in registry:
        langs = ",".join(sorted(ep.supported_languages)) or "any"
        if len(langs) > 24:
            langs = f"{len(ep.supported_languages)} languages"
        rows.append(
            (
                ep.id,
                ep.provider,
                ep.location.value,
                f"{ep.expected_latency_ms:g}ms",
                f"{ep.reliability_score:g}",
                f"${ep.cost_per_hour}",
                "yes" if ep.supports_streaming else "no",
                "needs" if ep.needs_network else "no",
                ep.min_tier.value,
                ep.max_thermal.value,
                "-" if ep.memory_gb is None else f"{ep.memory_gb:g}",
                langs,
                _key_state(ep),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run(args: argparse.Namespace) -> int:
    if args.endpoints_command == "check":
        registry = EndpointRegistry.load(args.file)
        print(table(registry))
        print(f"{args.file}: {len(registry)} endpoint(s), valid")
        return 0
    registry = default_registry() if args.file is None else EndpointRegistry.load(args.file)
    if args.json:
        print(json.dumps([endpoint_to_dict(ep) for ep in registry], indent=2))
    else:
        print(table(registry))
    return 0
