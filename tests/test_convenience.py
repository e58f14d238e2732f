"""``sttrouter.convenience``: ``transcribe_file`` for scripts, routed like the command line,
with the real offline engine."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sttrouter.convenience import host_session, routing_context, transcribe_file
from sttrouter.errors import AudioFormatError, NoEndpointAvailable
from sttrouter.panel.device import Conditions, NetworkStatus

ROOT = Path(__file__).parent.parent
WATER = ROOT / "examples" / "audio" / "water_16k.wav"
WATER_TEXT = "please drink a glass of water every morning"


def test_transcribe_file_with_the_offline_engine() -> None:
    transcript = transcribe_file(WATER)
    assert transcript.text == WATER_TEXT
    assert transcript.endpoint_ids == ("offline",)
    assert transcript.duration == pytest.approx(3.86, abs=0.01)
    assert transcribe_file(str(WATER), language="en").text == WATER_TEXT


def test_transcribe_file_fails_over_along_the_config_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    monkeypatch.setenv("STTROUTER_TEST_KEY", "k")
    config = tmp_path / "endpoints.toml"
    config.write_text(
        '[[endpoint]]\nid = "cloud"\nprovider = "deepgram"\nlocation = "cloud"\n'
        '[endpoint.connection]\napi_key_env = "STTROUTER_TEST_KEY"\n'
        f'base_url = "ws://127.0.0.1:{port}"\n\n'
        '[[endpoint]]\nid = "ps"\nprovider = "offline"\nlocation = "on_device"\n'
        "needs_network = false\n"
    )
    transcript = transcribe_file(WATER, config=config)
    assert transcript.text == WATER_TEXT
    assert transcript.endpoint_ids == ("ps",)


def test_the_shipped_example_config_falls_back_to_the_offline_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no API keys, no GLM-ASR weights in the cache, the example server host unreachable
    for key in ("DEEPGRAM_API_KEY", "ASSEMBLYAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transcript = transcribe_file(WATER, config=ROOT / "examples" / "endpoints.toml")
    assert transcript.text == WATER_TEXT
    assert transcript.endpoint_ids == ("offline",)


def test_errors_name_the_file_or_the_reason(tmp_path: Path) -> None:
    with pytest.raises(AudioFormatError, match="is a directory, not an audio file"):
        transcribe_file(tmp_path)
    with pytest.raises(NoEndpointAvailable) as info:
        transcribe_file(WATER, language="zh")
    assert "no endpoint can serve language 'zh'" in str(info.value)
    assert "offline: does not transcribe 'zh'" in str(info.value)


def test_host_session_names_why_nothing_can_serve(tmp_path: Path) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text('[[endpoint]]\nid = "cloud"\nprovider = "deepgram"\nlocation = "cloud"\n')
    context = routing_context(config)
    offline = Conditions(network=NetworkStatus.DISCONNECTED)
    with pytest.raises(NoEndpointAvailable) as info:
        host_session(context, conditions=offline)
    message = str(info.value)
    assert "no endpoint can serve this request (tier pro_max, network disconnected)" in message
    assert "cloud: needs the network; the device is disconnected" in message
