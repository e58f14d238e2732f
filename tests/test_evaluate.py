"""A/B evaluation: WER arithmetic on known text, timings on a virtual clock, JSON, PNG, CLI."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import wave
from decimal import Decimal
from pathlib import Path

import pytest

from sttrouter.cli import main
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError, MissingDependency
from sttrouter.evaluate import (
    SCHEMA,
    EvalReport,
    cer,
    evaluate,
    format_table,
    load_manifest,
    normalize_text,
    render_chart,
    wer,
)
from sttrouter.testing import FakeClock, FakeSTTService, FaultPlan, fake_endpoint, synthetic_speech

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Two clips of synthetic speech: the fake engine hears exactly "w1 w2 w3 w4 w5" and
# "w1 w2 w3 w4". The references are chosen so the error counts are known:
#   c0: same words, different case and punctuation             -> 0 errors of 5 words
#   c1: "w1 w2 x w4 extra": w3 -> x substituted, "extra" deleted -> 2 errors of 5 words
CLIPS = {
    "c0": ((3, 2), "W1 w2, w3. w4 — w5!"),
    "c1": ((4,), "w1 w2 x w4 extra"),
}


def _write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    lines = []
    for cid, (utterances, text) in CLIPS.items():
        _write_wav(tmp_path / f"{cid}.wav", synthetic_speech(utterances).pcm)
        lines.append(json.dumps({"audio": f"{cid}.wav", "text": text}))
    path = tmp_path / "manifest.jsonl"
    path.write_text("# comment lines and blank lines are skipped\n\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        '[[endpoint]]\nid = "fake-a"\nprovider = "fake"\nneeds_network = false\n'
        'cost_per_hour = "0.36"\n\n'
        '[[endpoint]]\nid = "fake-b"\nprovider = "fake"\nneeds_network = false\n'
    )
    return path


# -- text and rates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  don't   STOP  ", "dont stop"),
        ("it’s 3.5 — fine?", "its 3 5 fine"),
        ("line\nbreak\ttab", "line break tab"),
        ("...", ""),
    ],
)
def test_normalize_text(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_wer_and_cer_arithmetic() -> None:
    assert wer(["a b c d"], ["A, b c d."]) == 0.0
    assert wer(["a b c d"], ["a x c"]) == 0.5  # one substitution, one deletion
    assert wer(["a b", "c d e f"], ["a b", ""]) == pytest.approx(4 / 6)  # corpus-level
    assert cer(["abcd"], ["abxd"]) == 0.25
    with pytest.raises(ConfigError, match="at least one word"):
        wer(["?!"], ["x"])
    with pytest.raises(ConfigError):
        cer([], [])


def test_missing_jiwer_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jiwer", None)
    with pytest.raises(MissingDependency) as info:
        wer(["a"], ["a"])
    assert info.value.extra == "eval"


# -- manifest -----------------------------------------------------------------------------------


def test_load_manifest(manifest: Path) -> None:
    items = load_manifest(manifest)
    assert [i.id for i in items] == ["c0", "c1"]
    assert items[0].audio == (manifest.parent / "c0.wav").resolve()
    assert items[1].text == "w1 w2 x w4 extra"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"text": "hello"}', "audio file name"),
        ('{"audio": "c0.wav"}', "reference text"),
        ('{"audio": "c0.wav", "text": "?!"}', "reference text"),
        ('{"audio": "nope.wav", "text": "hi"}', "does not exist"),
        ('{"audio": "c0.wav", "text": "a", "id": "c0"}', "duplicate id"),
    ],
)
def test_manifest_errors_name_file_and_line(manifest: Path, line: str, message: str) -> None:
    bad = manifest.parent / "bad.jsonl"
    bad.write_text(f'{{"audio": "c0.wav", "reference": "w1", "id": "c0"}}\n{line}\n')
    with pytest.raises(ConfigError, match=message) as info:
        load_manifest(bad)
    assert "bad.jsonl:2" in str(info.value)


def test_manifest_empty_or_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ConfigError, match="no clips"):
        load_manifest(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        load_manifest(tmp_path / "missing.jsonl")


# -- evaluate ---------------------------------------------------------------------------------


async def test_evaluate_fake_endpoints_wer_and_cost(manifest: Path) -> None:
    endpoints = [fake_endpoint("fake-a", cost_per_hour="0.36"), fake_endpoint("fake-b")]
    seen: list[str] = []
    report = await evaluate(
        load_manifest(manifest),
        endpoints,
        manifest=str(manifest),
        progress=lambda r: seen.append(r.item_id),
    )
    assert seen == ["c0", "c1", "c0", "c1"]
    by = {(r.endpoint_id, r.item_id): r for r in report.items}
    c0, c1 = by["fake-a", "c0"], by["fake-a", "c1"]
    assert c0.hypothesis == "w1 w2 w3 w4 w5"
    assert c0.wer == 0.0
    assert c1.hypothesis == "w1 w2 w3 w4"
    assert c1.wer == pytest.approx(2 / 5)
    assert c1.cer == pytest.approx(cer(["w1 w2 x w4 extra"], ["w1 w2 w3 w4"]))
    # c0: 5 words x 0.1 s + 2 gaps x 0.5 s = 1.5 s at $0.36/h = $0.00015
    assert c0.audio_seconds == pytest.approx(1.5)
    assert c0.cost == Decimal("0.000150")
    assert by["fake-b", "c0"].cost == 0
    summary = {s.endpoint_id: s for s in report.endpoints}
    assert summary["fake-a"].wer == pytest.approx(2 / 10)  # corpus: 2 errors in 10 words
    assert summary["fake-a"].errors == 0
    assert summary["fake-a"].cost == Decimal("0.000150") + c1.cost
    for r in report.items:
        assert r.first_result_s is not None
        assert r.first_result_s >= 0
        assert r.final_latency_s is not None
        assert r.final_latency_s >= 0
        assert r.rtf is not None
        assert r.rtf > 0


async def test_realtime_timings_on_a_virtual_clock(manifest: Path) -> None:
    clock = FakeClock()
    latency = 0.25

    def build(endpoint: STTEndpoint) -> FakeSTTService:
        return FakeSTTService(endpoint, faults=FaultPlan.added_latency(latency), clock=clock)

    task = asyncio.ensure_future(
        evaluate(
            load_manifest(manifest)[:1],
            [fake_endpoint("slow")],
            build=build,
            clock=clock,
            realtime=True,
        )
    )
    while not task.done():
        await clock.advance(0.05)
    report = task.result()
    (row,) = report.items
    assert report.realtime
    # the first word's run ends when the second chunk arrives (t = 0.1), then the engine's latency
    assert row.first_result_s == pytest.approx(0.1 + latency)
    # the last final arrives `latency` after the last audio was sent
    assert row.final_latency_s == pytest.approx(latency)
    # paced in real time: processing = audio duration + the last result's latency
    assert row.rtf == pytest.approx((1.5 + latency) / 1.5)
    assert row.wer == 0.0


async def test_failing_endpoints_become_error_rows(manifest: Path) -> None:
    plans = {"refuses": FaultPlan.fail_on_connect(), "drops": FaultPlan.drop_after(0.5)}

    def build(endpoint: STTEndpoint) -> FakeSTTService:
        return FakeSTTService(endpoint, faults=plans.get(endpoint.id))

    endpoints = [
        fake_endpoint("refuses", cost_per_hour="0.36"),
        fake_endpoint("drops", cost_per_hour="0.36"),
        fake_endpoint("ok"),
    ]
    report = await evaluate(load_manifest(manifest), endpoints, build=build)
    # a failed clip is an error row, not a measurement: it is not priced
    assert all(r.cost == 0 for r in report.items if r.error)
    assert summary_cost(report, "drops") == 0
    summary = {s.endpoint_id: s for s in report.endpoints}
    assert summary["refuses"].errors == 2
    assert summary["refuses"].wer is None
    assert summary["refuses"].rtf is None
    assert summary["drops"].errors == 2
    assert summary["ok"].errors == 0
    refused = next(r for r in report.items if r.endpoint_id == "refuses")
    assert refused.error is not None
    assert refused.error.startswith("ConnectionFailed")
    assert refused.wer is None
    dropped = next(r for r in report.items if r.endpoint_id == "drops")
    assert dropped.error is not None
    assert "StreamingFailed" in dropped.error
    table = format_table(report)
    assert "ConnectionFailed" in table
    assert table.count("-") > 0


def summary_cost(report: EvalReport, endpoint_id: str) -> Decimal:
    return next(s.cost for s in report.endpoints if s.endpoint_id == endpoint_id)


async def test_evaluate_needs_an_endpoint(manifest: Path) -> None:
    with pytest.raises(ConfigError, match="at least one endpoint"):
        await evaluate(load_manifest(manifest), [])


# -- JSON and chart -------------------------------------------------------------------------------


async def _report(manifest: Path) -> EvalReport:
    return await evaluate(
        load_manifest(manifest),
        [fake_endpoint("fake-a", cost_per_hour="0.36"), fake_endpoint("fake-b")],
        manifest=str(manifest),
    )


async def test_json_schema(manifest: Path) -> None:
    data = json.loads(json.dumps((await _report(manifest)).to_dict()))
    assert data["schema"] == SCHEMA
    assert set(data) == {"schema", "manifest", "realtime", "summary", "items"}
    assert {s["endpoint_id"] for s in data["summary"]} == {"fake-a", "fake-b"}
    summary_keys = {
        "endpoint_id", "provider", "cost_per_hour", "clips", "errors", "wer", "cer",
        "mean_first_result_s", "mean_final_latency_s", "rtf", "cost",
    }  # fmt: skip
    assert all(set(s) == summary_keys for s in data["summary"])
    item_keys = {
        "item_id", "endpoint_id", "reference", "hypothesis", "audio_seconds", "wer", "cer",
        "first_result_s", "final_latency_s", "processing_s", "rtf", "cost", "error",
    }  # fmt: skip
    assert all(set(i) == item_keys for i in data["items"])
    assert data["summary"][0]["cost_per_hour"] == "0.36"
    assert Decimal(data["items"][0]["cost"]) == Decimal("0.000150")


async def test_chart_is_a_readable_png(manifest: Path, tmp_path: Path) -> None:
    report = await _report(manifest)
    out = render_chart(report, tmp_path / "chart.png")
    raw = out.read_bytes()
    assert raw.startswith(PNG_MAGIC)
    assert len(raw) > 20_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(str(out))
    assert pixels.shape[:2] == (800, 1100)  # 11 x 8 inches at 100 dpi
    assert pixels.std() > 0.05  # not a blank canvas


async def test_chart_with_failed_endpoint(manifest: Path, tmp_path: Path) -> None:
    def build(endpoint: STTEndpoint) -> FakeSTTService:
        return FakeSTTService(endpoint, faults=FaultPlan.fail_on_connect())

    report = await evaluate(load_manifest(manifest), [fake_endpoint("down")], build=build)
    assert render_chart(report, tmp_path / "down.png").read_bytes().startswith(PNG_MAGIC)


async def test_missing_matplotlib_names_the_extra(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = await _report(manifest)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependency) as info:
        render_chart(report, tmp_path / "x.png")
    assert info.value.extra == "eval"
    assert "sttrouter[eval]" in str(info.value)


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_eval_writes_table_json_and_png(
    manifest: Path, registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    argv = [
        "eval", str(manifest), "--endpoints", "fake-a,fake-b", "--config", str(registry),
        "--json", str(out_json), "--chart", str(out_png),
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "fake-a / c1: WER 40.0%" in captured.err
    assert "Summary" in captured.out
    assert "20.0%" in captured.out
    data = json.loads(out_json.read_text())
    assert data["schema"] == SCHEMA
    assert [s["wer"] for s in data["summary"]] == [pytest.approx(0.2), pytest.approx(0.2)]
    assert out_png.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [("nope", "no endpoint 'nope'"), (" , ", "names no endpoint")],
)
def test_cli_eval_bad_endpoints(
    manifest: Path, registry: Path, endpoints: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", str(manifest), "--endpoints", endpoints, "--config", str(registry), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err


def test_cli_eval_unknown_endpoint_in_builtin_registry(
    manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(manifest), "--endpoints", "nope"]) == 1
    assert "built-in registry" in capsys.readouterr().err


# -- the bundled samples through the real offline engine ----------------------------------------

BUNDLED = REPO / "examples" / "audio" / "manifest.jsonl"


def _short_bundled(tmp_path: Path) -> Path:
    """The bundled manifest cut to its shortest clip (48 kHz stereo, so conversion runs too),
    so the real engine runs in a few seconds."""
    keep = {"water_48k_stereo.wav"}
    lines = [
        json.dumps({**d, "audio": str(BUNDLED.parent / d["audio"])})
        for d in map(json.loads, BUNDLED.read_text().splitlines())
        if d["audio"] in keep
    ]
    assert len(lines) == 1
    path = tmp_path / "short.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bundled_manifest_is_valid() -> None:
    items = load_manifest(BUNDLED)
    assert len(items) >= 5
    assert all(i.audio.is_file() for i in items)


def test_cli_eval_offline_on_bundled_samples(
    tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pocketsphinx")
    manifest = _short_bundled(tmp_path)
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    # "offline" is not in this registry: the built-in engine is used anyway
    argv = [
        "eval", str(manifest), "--endpoints", "offline", "--config", str(registry),
        "--json", str(out_json), "--chart", str(out_png), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out_json.read_text())
    (offline,) = data["summary"]
    assert offline["endpoint_id"] == "offline"
    assert offline["provider"] == "offline"
    assert offline["errors"] == 0
    # pocketsphinx is weak but real: it gets most of this short sentence
    assert offline["wer"] < 0.5
    hyps = [i["hypothesis"] for i in data["items"]]
    assert len(hyps) == 1
    assert all("water" in h for h in hyps)
    assert out_png.read_bytes().startswith(PNG_MAGIC)
    assert "offline" in capsys.readouterr().out


# -- exit status, JSON to stdout, progress, the chart library ------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry_with_a_dead_endpoint(
    registry: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Path:
    monkeypatch.setenv("STTROUTER_TEST_KEY", "k")
    path = tmp_path / "with_dead.toml"
    path.write_text(
        registry.read_text()
        + '\n[[endpoint]]\nid = "down"\nprovider = "deepgram"\nlocation = "cloud"\n'
        'cost_per_hour = "0.258"\n[endpoint.connection]\napi_key_env = "STTROUTER_TEST_KEY"\n'
        f'base_url = "ws://127.0.0.1:{_closed_port()}"\n'
    )
    return path


def test_cli_eval_exits_1_when_a_clip_failed_and_prints_json_to_stdout(
    manifest: Path,
    registry_with_a_dead_endpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [
        "eval", str(manifest), "--endpoints", "fake-a,down",
        "--config", str(registry_with_a_dead_endpoint), "--json", "-",
    ]  # fmt: skip
    assert main(argv) == 1
    out, err = capsys.readouterr()
    data = json.loads(out)  # stdout holds the JSON alone; the table went to stderr
    assert not (tmp_path / "-").exists()
    down = [i for i in data["items"] if i["endpoint_id"] == "down"]
    assert len(down) == 2
    assert all(i["error"] and i["cost"] == "0" for i in down)
    assert err.splitlines()[-1] == "sttrouter: eval: 2 of 4 clip runs failed (down: 2)"
    # the table carries the whole error, however long
    assert down[0]["error"] in err
    assert len(down[0]["error"]) > 60
    assert "[1/4] fake-a / c0: WER 0.0%" in err


def test_cli_eval_finds_a_missing_chart_library_before_the_run(
    manifest: Path,
    registry: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    argv = [
        "eval", str(manifest), "--endpoints", "fake-a", "--config", str(registry),
        "--chart", str(tmp_path / "x.png"), "--json", str(tmp_path / "x.json"),
    ]  # fmt: skip
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "sttrouter[eval]" in err
    assert "WER" not in err + out  # no clip ran
    assert not (tmp_path / "x.json").exists()


def test_cli_eval_draws_a_bar_on_a_terminal(
    manifest: Path,
    registry: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["eval", str(manifest), "--endpoints", "fake-a,fake-b", "--config", str(registry)]
    assert main(argv) == 0
    assert "Summary" in capsys.readouterr().out
    drawn = terminal.getvalue()
    assert "[4/4] fake-b / c1" in drawn  # the label names the clip running
    assert "s of audio" in drawn
    assert "WER 40.0%" not in drawn  # no per-clip lines under a bar
