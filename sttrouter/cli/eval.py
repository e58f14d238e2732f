"""``sttrouter eval``: A/B-test endpoints on a manifest of clips (WER, CER, latency, RTF, cost).

Examples::

    sttrouter eval examples/audio/manifest.jsonl
    sttrouter eval clips.jsonl --config endpoints.toml --endpoints offline,deepgram --chart ab.png
    sttrouter eval manifest.jsonl --json - > report.json      # the table goes to stderr

Exit status: 0 when every clip was transcribed on every endpoint; 1 when any clip failed (a
one-line summary on stderr names how many and where; failed clips are in the table and JSON
with their full error and no cost). A missing chart library is reported before any clip runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio

from sttrouter.cli._progress import Bar, audio_bar, wants_bar
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.evaluate import (
    EvalProgress,
    ItemResult,
    ManifestItem,
    evaluate,
    failure_summary,
    format_table,
    load_manifest,
    render_chart,
    require_chart_library,
)

__all__ = ["register", "resolve_endpoints", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "eval",
        help="A/B-test endpoints on a manifest: WER, CER, latency, real-time factor, cost",
        description=(
            "Stream every clip of a JSONL manifest ({'audio': FILE, 'text': REFERENCE} per line) "
            "through each endpoint and compare them. Prints a table; writes JSON and a PNG chart "
            "on request. Exit status 1 when any clip failed."
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
    p.add_argument(
        "--json",
        metavar="OUT",
        help="write the full report as JSON to OUT ('-': to stdout, and the table to stderr)",
    )
    p.add_argument("--chart", metavar="OUT.png", help="write a PNG chart (needs the eval extra)")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="pace audio like a live microphone (latencies as in production; slower)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr (by default: a bar on a terminal, a line per clip otherwise)",
    )
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


class _Lines:
    """Progress as one line per finished clip (logs, pipes, CI)."""

    def __init__(self) -> None:
        self.runs = 0
        self.finished = 0

    def begin(self, runs: int, audio_seconds: float) -> None:
        self.runs = runs

    def clip(self, item: ManifestItem, endpoint: STTEndpoint, audio_seconds: float) -> None:
        pass

    def audio(self, seconds: float) -> None:
        pass

    def done(self, row: ItemResult) -> None:
        self.finished += 1
        what = row.error if row.error else f"WER {row.wer or 0:.1%}"
        print(
            f"  [{self.finished}/{self.runs}] {row.endpoint_id} / {row.item_id}: {what}",
            file=sys.stderr,
            flush=True,
        )


class _Bar(_Lines):
    """Progress as a bar over all the audio of the run, labelled with the clip running."""

    def __init__(self, bar: Bar) -> None:
        super().__init__()
        self.bar = bar
        self.before = 0.0  # audio of the clips already finished

    def begin(self, runs: int, audio_seconds: float) -> None:
        self.runs = runs
        self.bar.total(audio_seconds)

    def clip(self, item: ManifestItem, endpoint: STTEndpoint, audio_seconds: float) -> None:
        self.bar.label(f"[{self.finished + 1}/{self.runs}] {endpoint.id} / {item.id}")

    def audio(self, seconds: float) -> None:
        self.bar.update(self.before + seconds)

    def done(self, row: ItemResult) -> None:
        self.finished += 1
        self.before += row.audio_seconds
        self.bar.update(self.before)
        if row.error:  # failures stay on screen above the bar
            print(f"  {row.endpoint_id} / {row.item_id}: {row.error}", file=sys.stderr)


@contextlib.contextmanager
def _watch(quiet: bool) -> Iterator[EvalProgress | None]:
    if quiet:
        yield None
        return
    if not wants_bar():
        yield _Lines()
        return
    with audio_bar("eval", 0.0) as bar:
        yield _Bar(bar)


def run(args: argparse.Namespace) -> int:
    items = load_manifest(args.manifest)
    endpoints = resolve_endpoints(args.endpoints, args.config)
    if args.chart:
        require_chart_library()  # before the run, not after it
    with _watch(args.quiet) as watch:
        report = anyio.run(
            lambda: evaluate(
                items, endpoints, realtime=args.realtime, manifest=args.manifest, watch=watch
            )
        )
    to_stdout = args.json == "-"
    print(format_table(report), file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            print(f"wrote {args.json}")
    if args.chart:
        render_chart(report, args.chart)
        print(f"wrote {args.chart}", file=sys.stderr if to_stdout else sys.stdout)
    summary = failure_summary(report)
    if summary is not None:
        print(f"sttrouter: eval: {summary}", file=sys.stderr)
        return 1
    return 0
