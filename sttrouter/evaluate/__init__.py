"""A/B evaluation of endpoints: accuracy (WER, CER), latency, real-time factor and cost.

An A/B test of engines — say the offline engine against Deepgram — measures latency, accuracy
and cost on the same audio. Given a JSONL manifest of ``(audio, reference text)`` pairs,
:func:`evaluate` streams every clip through every endpoint and measures:

- **WER / CER** with jiwer, after normalising both texts the same way (lower case, punctuation
  removed, whitespace collapsed); the summary is corpus-level (total edits / total reference
  words), not a mean of per-clip rates;
- **time to first result**: first audio sent → first result (interim or final);
- **final latency**: last audio sent → the last final result;
- **real-time factor**: processing time / audio duration (below 1 is faster than real time;
  with real-time pacing it is at least 1 by construction, so measure it without);
- **cost**: the clip's audio at the endpoint's ``cost_per_hour`` (a failed clip costs nothing
  here: it is an error row, not a measurement).

By default audio is sent as fast as the engine accepts it (what the real-time factor measures);
``realtime=True`` paces it like a live microphone, which is what the latencies mean in
production. Results become a table (:func:`format_table`), JSON (:meth:`EvalReport.to_dict`,
schema ``sttrouter.eval/1``) and a PNG chart (:func:`render_chart`, extra ``eval``).

Manifest lines::

    {"audio": "clip1.wav", "text": "the reference transcript", "id": "clip1"}

``audio`` is relative to the manifest's folder; ``text`` may be given as ``reference``;
``id`` defaults to the audio file's stem.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Protocol

import anyio
import attrs

from sttrouter.audio import AudioFormat, read_audio
from sttrouter.clock import SYSTEM_CLOCK, Clock
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError, MissingDependency, STTError
from sttrouter.metrics import cost_for
from sttrouter.results import STTResult, Transcript
from sttrouter.service import STTService, iter_chunks

__all__ = [
    "SCHEMA",
    "EndpointSummary",
    "EvalProgress",
    "EvalReport",
    "ItemResult",
    "ManifestItem",
    "cer",
    "evaluate",
    "failure_summary",
    "format_table",
    "load_manifest",
    "normalize_text",
    "render_chart",
    "require_chart_library",
    "run_item",
    "wer",
]

SCHEMA: Final = "sttrouter.eval/1"

ServiceBuilder = Callable[[STTEndpoint], STTService]


# -- text --------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation and symbols (Unicode categories P* and S*), collapse spaces.

    Apostrophes go too, on both sides, so "don't" and "dont" compare equal.
    """
    kept = [
        " " if unicodedata.category(c)[0] in "PSZC" and c not in "'’" else c for c in text.lower()
    ]
    out = "".join(c for c in kept if c not in "'’")
    return " ".join(out.split())


def _jiwer() -> Any:
    try:
        import jiwer
    except ImportError as exc:
        raise MissingDependency("jiwer", "eval") from exc
    return jiwer


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate of normalised texts (edits / reference words)."""
    return _rate("wer", references, hypotheses)


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate of normalised texts."""
    return _rate("cer", references, hypotheses)


def _rate(kind: str, references: Sequence[str], hypotheses: Sequence[str]) -> float:
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    if not refs or any(not r for r in refs):
        raise ConfigError("every reference text must contain at least one word")
    return float(getattr(_jiwer(), kind)(refs, hyps))


# -- manifest ---------------------------------------------------------------------------------


@attrs.frozen
class ManifestItem:
    """One clip: ``audio`` file and the ``text`` spoken in it."""

    id: str
    audio: Path
    text: str
    language: str | None = None


def load_manifest(path: str | Path) -> list[ManifestItem]:
    """Read a JSONL manifest; errors name the file, the line and the field."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read manifest: {exc.strerror}", source=str(p)) from exc
    items: list[ManifestItem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{p}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg}", source=where) from None
        if not isinstance(data, dict):
            raise ConfigError("each line must be a JSON object", source=where)
        audio = data.get("audio", data.get("path"))
        text = data.get("text", data.get("reference"))
        if not isinstance(audio, str) or not audio:
            raise ConfigError("needs an audio file name", source=where, field="audio")
        if not isinstance(text, str) or not normalize_text(text):
            raise ConfigError("needs a non-empty reference text", source=where, field="text")
        audio_path = (p.parent / audio).resolve() if not Path(audio).is_absolute() else Path(audio)
        if not audio_path.is_file():
            raise ConfigError(
                f"audio file {audio_path} does not exist", source=where, field="audio"
            )
        item_id = str(data.get("id") or Path(audio).stem)
        if item_id in seen:
            raise ConfigError(f"duplicate id {item_id!r}", source=where, field="id")
        seen.add(item_id)
        language = data.get("language")
        items.append(
            ManifestItem(item_id, audio_path, text, language if isinstance(language, str) else None)
        )
    if not items:
        raise ConfigError("the manifest lists no clips", source=str(p))
    return items


# -- running ---------------------------------------------------------------------------------


@attrs.frozen
class ItemResult:
    """One clip through one endpoint. On failure ``error`` is set and the measures are ``None``."""

    item_id: str
    endpoint_id: str
    reference: str
    hypothesis: str
    audio_seconds: float
    wer: float | None
    cer: float | None
    first_result_s: float | None
    final_latency_s: float | None
    processing_s: float
    rtf: float | None
    cost: Decimal
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["cost"] = str(self.cost)
        return d


async def run_item(
    service: STTService,
    data: bytes,
    fmt: AudioFormat,
    *,
    item_id: str,
    reference: str,
    clock: Clock = SYSTEM_CLOCK,
    realtime: bool = False,
    chunk_seconds: float = 0.1,
    on_audio: Callable[[float], None] | None = None,
) -> ItemResult:
    """Stream one clip through ``service`` and measure it (an engine failure becomes ``error``,
    with no cost). ``on_audio`` hears the seconds of the clip sent so far, after each chunk."""
    collected: list[STTResult] = []
    first_at: float | None = None
    last_final_at: float | None = None
    last_sent_at: float | None = None
    failure: STTError | None = None
    duration = fmt.seconds(len(data))
    started = clock.now()

    async def read(results: Any) -> None:
        nonlocal first_at, last_final_at, failure
        try:
            async for r in results:
                now = clock.now()
                if first_at is None:
                    first_at = now
                if r.is_final:
                    last_final_at = now
                collected.append(r)
        except STTError as exc:
            failure = exc

    try:
        results = await service.start_streaming(fmt)
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, results)
            try:
                sent = 0.0
                for chunk in iter_chunks(data, fmt, chunk_seconds):
                    await service.send_audio(chunk)
                    sent += fmt.seconds(len(chunk))
                    if on_audio is not None:
                        on_audio(sent)
                    if realtime:  # like a microphone: chunk k is due at started + its end time
                        await clock.sleep(max(0.0, started + sent - clock.now()))
                last_sent_at = clock.now()
                await service.stop_streaming()
            except STTError as exc:
                failure = failure or exc
                await service.cancel_streaming()
    except STTError as exc:
        failure = exc
    finished = clock.now()
    processing = finished - started
    hypothesis = Transcript.from_results(collected).text
    if failure is not None:
        return ItemResult(
            item_id, service.endpoint.id, reference, hypothesis, duration,
            None, None, None, None, processing, None, Decimal(0),
            error=f"{type(failure).__name__}: {failure}",
        )  # fmt: skip
    cost = cost_for(service.cost_per_hour, duration)
    return ItemResult(
        item_id=item_id,
        endpoint_id=service.endpoint.id,
        reference=reference,
        hypothesis=hypothesis,
        audio_seconds=duration,
        wer=wer([reference], [hypothesis]),
        cer=cer([reference], [hypothesis]),
        first_result_s=None if first_at is None else first_at - started,
        final_latency_s=(
            None
            if last_final_at is None or last_sent_at is None
            else max(0.0, last_final_at - last_sent_at)
        ),
        processing_s=processing,
        rtf=processing / duration if duration else None,
        cost=cost,
    )


@attrs.frozen
class EndpointSummary:
    """One endpoint over the whole manifest (failed clips are counted in ``errors`` only)."""

    endpoint_id: str
    provider: str
    cost_per_hour: Decimal
    clips: int
    errors: int
    wer: float | None
    cer: float | None
    mean_first_result_s: float | None
    mean_final_latency_s: float | None
    rtf: float | None
    cost: Decimal

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["cost"] = str(self.cost)
        d["cost_per_hour"] = str(self.cost_per_hour)
        return d


def _mean(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _summarise(endpoint: STTEndpoint, rows: Sequence[ItemResult]) -> EndpointSummary:
    ok = [r for r in rows if r.error is None]
    audio = sum(r.audio_seconds for r in ok)
    return EndpointSummary(
        endpoint_id=endpoint.id,
        provider=endpoint.provider,
        cost_per_hour=endpoint.cost_per_hour,
        clips=len(rows),
        errors=len(rows) - len(ok),
        wer=wer([r.reference for r in ok], [r.hypothesis for r in ok]) if ok else None,
        cer=cer([r.reference for r in ok], [r.hypothesis for r in ok]) if ok else None,
        mean_first_result_s=_mean(r.first_result_s for r in ok),
        mean_final_latency_s=_mean(r.final_latency_s for r in ok),
        rtf=sum(r.processing_s for r in ok) / audio if audio else None,
        cost=sum((r.cost for r in rows), Decimal(0)),
    )


@attrs.frozen
class EvalReport:
    """Everything :func:`evaluate` measured."""

    manifest: str
    endpoints: tuple[EndpointSummary, ...]
    items: tuple[ItemResult, ...]
    realtime: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, schema ``sttrouter.eval/1``."""
        return {
            "schema": SCHEMA,
            "manifest": self.manifest,
            "realtime": self.realtime,
            "summary": [s.to_dict() for s in self.endpoints],
            "items": [r.to_dict() for r in self.items],
        }


def _default_builder(clock: Clock) -> ServiceBuilder:
    from sttrouter.providers import create_service

    def build(endpoint: STTEndpoint) -> STTService:
        return create_service(endpoint, clock=clock)

    return build


class EvalProgress(Protocol):
    """Hears how an :func:`evaluate` run advances (a progress bar, a log)."""

    def begin(self, runs: int, audio_seconds: float) -> None:
        """The run will stream ``runs`` clip/endpoint pairs, ``audio_seconds`` in all."""

    def clip(self, item: ManifestItem, endpoint: STTEndpoint, audio_seconds: float) -> None:
        """A clip starts on an endpoint."""

    def audio(self, seconds: float) -> None:
        """Seconds of the current clip sent so far."""

    def done(self, row: ItemResult) -> None:
        """A clip finished on an endpoint (``row.error`` says if it failed)."""


async def evaluate(
    items: Sequence[ManifestItem],
    endpoints: Sequence[STTEndpoint],
    *,
    build: ServiceBuilder | None = None,
    clock: Clock = SYSTEM_CLOCK,
    realtime: bool = False,
    manifest: str = "",
    progress: Callable[[ItemResult], None] | None = None,
    watch: EvalProgress | None = None,
) -> EvalReport:
    """Run every clip through every endpoint, one stream at a time (so timings do not interfere).

    Args:
        items: the clips (see :func:`load_manifest`).
        endpoints: what to compare.
        build: makes a fresh service for an endpoint; default
            :func:`sttrouter.providers.create_service`.
        clock: for timings and real-time pacing.
        realtime: pace audio like a live microphone instead of as fast as possible.
        manifest: shown in the report.
        progress: called after each clip/endpoint pair.
        watch: told when the run begins, each clip starts, its audio advances and it ends.
    """
    if not endpoints:
        raise ConfigError("give at least one endpoint to evaluate")
    make = build or _default_builder(clock)
    clips = [(item, *read_audio(item.audio)) for item in items]
    rows: dict[str, list[ItemResult]] = {ep.id: [] for ep in endpoints}
    ordered: list[ItemResult] = []
    if watch is not None:
        total = sum(fmt.seconds(len(data)) for _item, data, fmt in clips)
        watch.begin(len(clips) * len(endpoints), total * len(endpoints))
    for endpoint in endpoints:
        for item, data, fmt in clips:
            service = make(endpoint)
            if watch is not None:
                watch.clip(item, endpoint, fmt.seconds(len(data)))
            row = await run_item(
                service,
                data,
                fmt,
                item_id=item.id,
                reference=item.text,
                clock=clock,
                realtime=realtime,
                on_audio=None if watch is None else watch.audio,
            )
            rows[endpoint.id].append(row)
            ordered.append(row)
            if progress is not None:
                progress(row)
            if watch is not None:
                watch.done(row)
    summaries = tuple(_summarise(ep, rows[ep.id]) for ep in endpoints)
    return EvalReport(manifest, summaries, tuple(ordered), realtime)


# -- presentation -----------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_table(report: EvalReport) -> str:
    """Per-clip rows, then one summary row per endpoint."""
    header = ["clip", "endpoint", "WER", "CER", "first ms", "final ms", "RTF", "cost", "note"]
    body = [
        [
            r.item_id,
            r.endpoint_id,
            _pct(r.wer),
            _pct(r.cer),
            _ms(r.first_result_s),
            _ms(r.final_latency_s),
            _num(r.rtf),
            f"${r.cost}",
            r.error or "",
        ]
        for r in report.items
    ]
    summary_header = [
        "endpoint",
        "clips",
        "errors",
        "WER",
        "CER",
        "first ms",
        "final ms",
        "RTF",
        "$/hour",
    ]
    summary = [
        [
            s.endpoint_id,
            str(s.clips),
            str(s.errors),
            _pct(s.wer),
            _pct(s.cer),
            _ms(s.mean_first_result_s),
            _ms(s.mean_final_latency_s),
            _num(s.rtf),
            str(s.cost_per_hour),
        ]
        for s in report.endpoints
    ]
    mode = "real-time pacing" if report.realtime else "as fast as the engine accepts audio"
    lines = [f"Manifest: {report.manifest} ({mode})", ""]
    lines += _grid(header, body)
    lines += ["", "Summary (WER/CER over all clips, latencies are means):"]
    lines += _grid(summary_header, summary)
    return "\n".join(lines)


def _grid(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)]


def failure_summary(report: EvalReport) -> str | None:
    """One line naming how many clips failed and on which endpoints, or ``None`` when none
    did."""
    failed = [s for s in report.endpoints if s.errors]
    if not failed:
        return None
    count = sum(s.errors for s in failed)
    where = ", ".join(f"{s.endpoint_id}: {s.errors}" for s in failed)
    return f"{count} of {len(report.items)} clip runs failed ({where})"


def require_chart_library() -> None:
    """Check that :func:`render_chart` can run, before a long evaluation rather than after.

    Raises:
        MissingDependency: matplotlib is not installed (extra ``eval``).
    """
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("matplotlib", "eval") from exc


def render_chart(report: EvalReport, path: str | Path) -> Path:
    """Write a PNG comparing the endpoints: accuracy, latency, speed and per-clip WER.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).

    Raises:
        MissingDependency: matplotlib is not installed (extra ``eval``).
    """
    require_chart_library()
    from sttrouter.evaluate._chart import draw

    return draw(report, path)
