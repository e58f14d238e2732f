"""``sttrouter transcribe`` on the committed clips, with the real offline engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sttrouter import __version__
from sttrouter.cli import main
from sttrouter.cli.transcribe import OFFLINE_NOTE, choose_endpoint
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


def test_config_uses_the_first_endpoint_with_its_key_set(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcribe", WATER, "--config", registry, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["endpoint"] == "ps"
    assert err == ""


def test_choose_endpoint(registry: str, tmp_path: Path) -> None:
    endpoint, note = choose_endpoint(None, None)
    assert (endpoint.id, note) == ("offline", OFFLINE_NOTE)
    assert choose_endpoint(registry, "cloud")[0].id == "cloud"
    assert choose_endpoint(registry, "offline") == (choose_endpoint(None, "offline")[0], None)
    assert choose_endpoint(None, "deepgram")[0].provider == "deepgram"  # the built-in registry
    with pytest.raises(ConfigError, match=r"no endpoint 'nope'; the registry has: cloud, ps"):
        choose_endpoint(registry, "nope")
    keyless = tmp_path / "keyless.toml"
    keyless.write_text(REGISTRY.split('[[endpoint]]\nid = "ps"')[0])
    endpoint, note = choose_endpoint(str(keyless), None)
    assert endpoint.id == "offline"
    assert note is not None
    assert "no usable endpoint" in note


def test_errors_exit_1_with_a_clear_message(
    tmp_path: Path, registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcribe", str(tmp_path / "missing.wav")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sttrouter: error: audio file")
    assert "does not exist; check the path" in err
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
