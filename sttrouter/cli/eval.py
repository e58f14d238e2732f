"""``sttrouter eval``: A/B-test endpoints on a manifest of clips (WER, CER, latency, RTF, cost)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anyio

from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.evaluate import ItemResult, evaluate, format_table, load_manifest, render_chart

__all__ = ["register", "resolve_endpoints", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "eval",
        help="A/B-test endpoints on a manifest: WER, CER, latency, real-time factor, cost",
        description=(
            "Stream every clip of a JSONL manifest ({'audio': FILE, 'text': REFERENCE} per line) "
            "through each endpoint and compare them. Prints a table; writes JSON and a PNG chart "
            "on request."
        ),
    )
    p.add_argument("manifest", help="JSONL manifest (audio paths relative to it)")
    p.add_argument(
        "--endpoints",
        default="offline",
        metavar="ID[,ID...]",
        help="endpoint ids to compare, comma-separated (default: offline)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="endpoint registry TOML (default: the built-in registry)"
    )
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    p.add_argument("--chart", metavar="OUT.png", help="write a PNG chart (needs the eval extra)")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="pace audio like a live microphone (latencies as in production; slower)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-clip progress on stderr")
    p.set_defaults(func=run)


def resolve_endpoints(ids_text: str, config: str | None) -> list[STTEndpoint]:
    """The endpoints named in ``ids_text``, from ``config`` or the built-in registry."""
    from sttrouter.panel.registry import EndpointRegistry, default_registry

    registry = EndpointRegistry.load(config) if config else default_registry()
    ids = [i.strip() for i in ids_text.split(",") if i.strip()]
    if not ids:
        raise ConfigError("--endpoints names no endpoint; give ids separated by commas")
    out = []
    for eid in ids:
        endpoint = registry.get(eid)
        if endpoint is None and eid == "offline":
            # the built-in engine is always available, even when a config does not list it
            from sttrouter.providers.offline import offline_endpoint

            endpoint = offline_endpoint()
        if endpoint is None:
            known = ", ".join(e.id for e in registry) or "none"
            raise ConfigError(
                f"no endpoint {eid!r} in {config or 'the built-in registry'}; known: {known}",
                field="--endpoints",
            )
        out.append(endpoint)
    return out


def _progress(row: ItemResult) -> None:
    what = row.error if row.error else f"WER {row.wer or 0:.1%}"
    print(f"  {row.endpoint_id} / {row.item_id}: {what}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    items = load_manifest(args.manifest)
    endpoints = resolve_endpoints(args.endpoints, args.config)
    report = anyio.run(
        lambda: evaluate(
            items,
            endpoints,
            realtime=args.realtime,
            manifest=args.manifest,
            progress=None if args.quiet else _progress,
        )
    )
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(
            json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
        )
        print(f"wrote {args.json}")
    if args.chart:
        render_chart(report, args.chart)
        print(f"wrote {args.chart}")
    return 0
