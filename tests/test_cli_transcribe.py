"""``sttrouter transcribe`` on the committed clips, with the real offline engine."""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sttrouter import __version__
from sttrouter.cli import main
from sttrouter.cli import transcribe as transcribe_cli
from sttrouter.cli.transcribe import OFFLINE_NOTE, pinned_endpoint
from sttrouter.errors import ConfigError

AUDIO = Path(__file__).parent.parent / "examples" / "audio"
WATER = str(AUDIO / "water_16k.wav")
WATER_TEXT = "please drink a glass of water every morning"

REGISTRY = """
[[endpoint]]
id = "cloud"
provider = "deepgram"
location = "cloud"

[endpoint.connection]
api_key_env = "STTROUTER_TEST_UNSET_KEY"

[[endpoint]]
id = "ps"
provider = "offline"
location = "on_device"
needs_network = false

[endpoint.connection.options]
interim_results = false
"""


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("STTROUTER_TEST_UNSET_KEY", raising=False)
    path = tmp_path / "endpoints.toml"
    path.write_text(REGISTRY)
    return str(path)


def test_prints_the_transcript_with_the_offline_engine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcribe", WATER]) == 0
    out, err = capsys.readouterr()
    assert out == WATER_TEXT + "\n"
    assert OFFLINE_NOTE in err


def test_json_prints_every_result_with_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcribe", WATER, "--json", "--endpoint", "offline"]) == 0
    out, err = capsys.readouterr()
    assert OFFLINE_NOTE not in err  # chosen explicitly
    doc = json.loads(out)
    assert doc["endpoint"] == "offline"
    assert doc["text"] == WATER_TEXT
    assert doc["language"] == "en"
    assert doc["duration"] == pytest.approx(3.86, abs=0.01)
    assert doc["metrics"]["cost"] == "0.000000"
    assert doc["metrics"]["audio_seconds"] == pytest.approx(doc["duration"])
    [result] = doc["results"]
    assert result["is_final"]
    assert result["is_end_of_utterance"]
    assert [w["word"] for w in result["words"]] == WATER_TEXT.split()
    for w in result["words"]:
        assert result["start"] <= w["start"] <= w["end"] <= result["start"] + result["duration"]


def test_partials_stream_interims_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcribe", WATER, "--partials", "--json"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "partial:" in line or "final:" in line]
    assert "partial:" in lines[0]
    assert lines[-1].endswith("final: " + WATER_TEXT)
    doc = json.loads(out)
    kinds = [r["is_final"] for r in doc["results"]]
    assert kinds[-1]
    assert kinds.count(False) == len(lines) - 1  # every interim, as printed


def test_config_routes_past_endpoints_without_their_key(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcribe", WATER, "--config", registry, "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["endpoint"] == "ps"
    assert doc["text"] == WATER_TEXT
    assert [e["kind"] for e in doc["route_events"]] == ["selected"]
    assert err == ""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_config_fails_over_to_the_next_endpoint_with_events_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the first endpoint refuses connections: the session moves to the offline engine
    monkeypatch.setenv("STTROUTER_TEST_KEY", "k")
    path = tmp_path / "endpoints.toml"
    path.write_text(
        REGISTRY.replace("STTROUTER_TEST_UNSET_KEY", "STTROUTER_TEST_KEY").replace(
            'api_key_env = "STTROUTER_TEST_KEY"',
            f'api_key_env = "STTROUTER_TEST_KEY"\nbase_url = "ws://127.0.0.1:{_closed_port()}"',
        )
    )
    assert main(["transcribe", WATER, "--config", str(path), "-v", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["text"] == WATER_TEXT
    assert doc["endpoint"] == "ps"
    kinds = [(e["kind"], e["endpoint_id"]) for e in doc["route_events"]]
    assert ("failed", "cloud") in kinds
    assert kinds[-1] == ("selected", "ps") or ("failover", "ps") in kinds
    assert "route: failed cloud" in err


def test_several_files_and_json_to_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fox = str(AUDIO / "fox_16k.wav")
    out_file = tmp_path / "out.json"
    assert main(["transcribe", WATER, fox, "--json", str(out_file)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"==> {WATER} <==\n{WATER_TEXT}\n==> {fox} <==\n")
    assert f"wrote {out_file}" in err
    docs = json.loads(out_file.read_text())
    assert [d["file"] for d in docs] == [WATER, fox]
    assert docs[0]["text"] == WATER_TEXT


def test_json_dash_prints_to_stdout_and_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["transcribe", WATER, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == WATER_TEXT
    assert not (tmp_path / "-").exists()


def test_language_is_routed_and_passed_to_the_engine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["transcribe", WATER, "--language", "en", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == WATER_TEXT
    # no engine for Mandarin: the error says why, before any audio is sent
    assert main(["transcribe", WATER, "--language", "zh"]) == 1
    err = capsys.readouterr().err
    assert "no endpoint can serve language 'zh'" in err
    assert "offline: does not transcribe 'zh'" in err


def test_one_failed_file_fails_the_run_but_not_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.wav")
    assert main(["transcribe", missing, WATER]) == 1
    out, err = capsys.readouterr()
    assert WATER_TEXT in out
    assert "does not exist" in err
    assert err.rstrip().endswith("sttrouter: transcribe: 1 of 2 file(s) failed")


def test_pinned_endpoint(registry: str) -> None:
    def pinned(config: str | None, endpoint: str | None) -> str | None:
        args = argparse.Namespace(config=config, endpoint=endpoint, model_dir=None)
        found = pinned_endpoint(args)
        return None if found is None else found.id

    assert pinned(None, None) is None
    assert pinned(registry, None) is None  # routed
    assert pinned(registry, "cloud") == "cloud"
    assert pinned(registry, "offline") == "offline"  # built in, even where not listed
    assert pinned(None, "deepgram") == "deepgram"  # the built-in registry
    with pytest.raises(ConfigError, match=r"no endpoint 'nope'; the registry has: cloud, ps"):
        pinned(registry, "nope")
    bad = argparse.Namespace(config=registry, endpoint=None, model_dir="/models")
    with pytest.raises(ConfigError, match="--model-dir runs GLM-ASR in-process"):
        pinned_endpoint(bad)


def test_progress_bar_on_a_terminal_for_long_files(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(transcribe_cli, "LONG_FILE_SECONDS", 1.0)
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["transcribe", WATER, "--endpoint", "offline"]) == 0
    assert capsys.readouterr().out == WATER_TEXT + "\n"
    drawn = terminal.getvalue()
    assert "water_16k.wav" in drawn
    assert "s of audio" in drawn
    assert "4/4 s of audio" in drawn  # the bar ends full (3.86 s shown rounded)


def test_errors_exit_1_with_a_clear_message(
    tmp_path: Path, registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcribe", str(tmp_path / "missing.wav")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sttrouter: error: audio file")
    assert "does not exist; check the path" in err
    assert main(["transcribe", str(tmp_path)]) == 1
    assert f"{str(tmp_path)!r} is a directory, not an audio file" in capsys.readouterr().err
    (tmp_path / "notes.wav").write_text("not audio at all")
    assert main(["transcribe", str(tmp_path / "notes.wav")]) == 1
    err = capsys.readouterr().err
    assert "cannot read audio file" in err
    assert "Format not recognised" in err
    assert "BytesIO" not in err
    (tmp_path / "empty.wav").write_bytes(b"")
    assert main(["transcribe", str(tmp_path / "empty.wav")]) == 1
    assert "is empty" in capsys.readouterr().err
    assert main(["transcribe", WATER, "--config", registry, "--endpoint", "nope"]) == 1
    assert "no endpoint 'nope'" in capsys.readouterr().err


def test_silence_prints_an_empty_line_and_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import soundfile

    silent = tmp_path / "silence.flac"
    soundfile.write(silent, [0.0] * 16_000, 16_000)
    assert main(["transcribe", str(silent), "--endpoint", "offline"]) == 0
    out, err = capsys.readouterr()
    assert out == "\n"
    assert "no speech was recognised" in err


def test_python_m_sttrouter_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sttrouter", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == f"sttrouter {__version__}"


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs Linux /proc")
def test_an_unreadable_file_names_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    # a regular file whose read fails (works as root too, unlike chmod 000)
    assert main(["transcribe", "/proc/self/mem"]) == 1
    err = capsys.readouterr().err
    assert "cannot read audio file '/proc/self/mem': Input/output error" in err


def test_several_files_each_name_their_error(capsys: pytest.CaptureFixture[str]) -> None:
    fox = str(AUDIO / "fox_16k.wav")
    assert main(["transcribe", WATER, fox, "--language", "zh"]) == 1
    err = capsys.readouterr().err
    assert f"sttrouter: error: {WATER}: no endpoint can serve language 'zh'" in err
    assert f"sttrouter: error: {fox}: no endpoint can serve language 'zh'" in err
    assert err.rstrip().endswith("2 of 2 file(s) failed")


def test_model_dir_pins_the_in_process_glm_endpoint(tmp_path: Path) -> None:
    args = argparse.Namespace(config=None, endpoint=None, model_dir=str(tmp_path))
    endpoint = pinned_endpoint(args)
    assert endpoint is not None
    assert endpoint.id == "glm-local"
    assert endpoint.connection.option("model_dir") == str(tmp_path)
