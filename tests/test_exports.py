"""The public surface is listed once, pinned exactly, and stays importable; custom engines are
registered one way, and the production factory knows nothing of the test kit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sttrouter
import sttrouter.testing
from sttrouter import (
    ENGINE_FORMAT,
    BaseSTTService,
    ConfigError,
    EndpointRegistry,
    Router,
    STTEndpoint,
    STTResult,
    create_service,
    register_provider,
)
from sttrouter.endpoint import register_provider_kind
from sttrouter.panel import Conditions

# Adding or removing a name of the application API is a decision: make it here, on purpose.
PUBLIC_API = [
    "transcribe_file",
    "ENGINE_FORMAT",
    "AlreadyStreaming",
    "AudioConverter",
    "AudioFormat",
    "AudioFormatError",
    "AudioStream",
    "AuthenticationFailed",
    "BaseSTTService",
    "CallerError",
    "Clock",
    "Conditions",
    "ConfigError",
    "ConnectTimeout",
    "ConnectionConfig",
    "ConnectionFailed",
    "Decision",
    "DeviceTier",
    "EmptyTranscripts",
    "Encoding",
    "EndpointMisconfigured",
    "EndpointRegistry",
    "ErrorKind",
    "HedgeConfig",
    "Location",
    "MalformedResponse",
    "MissingDependency",
    "NetworkStatus",
    "NoEndpointAvailable",
    "NotStreaming",
    "PermanentError",
    "Policy",
    "Provider",
    "QuotaExceeded",
    "RateLimited",
    "RouteEvent",
    "RouteEventKind",
    "RoutedSession",
    "Router",
    "RoutingContext",
    "Rule",
    "STTEndpoint",
    "STTError",
    "STTMetrics",
    "STTResult",
    "STTService",
    "ServiceFactory",
    "SessionConfig",
    "SkipReason",
    "StreamOptions",
    "StreamStalled",
    "StreamingFailed",
    "SystemClock",
    "ThermalState",
    "Transcript",
    "TransientError",
    "UnsupportedOption",
    "Verdict",
    "WordTimestamp",
    "__version__",
    "assemblyai_endpoint",
    "create_service",
    "deepgram_endpoint",
    "default_registry",
    "offline_endpoint",
    "read_audio",
    "register_provider",
]

TESTING_API = [
    "FINAL_FAULTS",
    "MARK_BASE",
    "ConformanceError",
    "FakeAssemblyAIServer",
    "FakeClock",
    "FakeDeepgramServer",
    "FakeOpenAITranscriptionServer",
    "FakeSTTService",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "ScriptedUtterance",
    "ScriptedWord",
    "ServerFault",
    "ServiceMaker",
    "SessionRecord",
    "SyntheticSpeech",
    "Utterance",
    "check_stt_service",
    "fake_endpoint",
    "mark_word",
    "settle",
    "synthetic_speech",
]


def test_top_level_all_is_exactly_the_public_api() -> None:
    assert sorted(sttrouter.__all__) == sorted(PUBLIC_API)
    assert len(sttrouter.__all__) == len(set(sttrouter.__all__))
    for name in sttrouter.__all__:
        assert hasattr(sttrouter, name), name


def test_testing_all_is_exactly_the_test_kit() -> None:
    assert sorted(sttrouter.testing.__all__) == sorted(TESTING_API)
    for name in sttrouter.testing.__all__:
        assert hasattr(sttrouter.testing, name), name


def test_star_import_gives_exactly_the_public_api() -> None:
    namespace: dict[str, object] = {}
    exec("from sttrouter import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC_API)


# --- one way to register a custom engine --------------------------------------------------------


class CountingEngine(BaseSTTService):
    """A custom engine: one final at the end, saying how much audio it heard."""

    async def _open(self) -> None:
        self.heard = 0

    async def _send(self, pcm: bytes) -> None:
        self.heard += len(pcm)

    async def _finish(self) -> None:
        seconds = self.heard / ENGINE_FORMAT.bytes_for(1.0)
        await self._emit(
            STTResult(
                transcript=f"heard {seconds:g} seconds",
                is_final=True,
                is_end_of_utterance=True,
                start=0.0,
                duration=seconds,
                endpoint_id=self.endpoint.id,
            )
        )

    async def _abort(self) -> None:
        return None


CUSTOM_TOML = """
[[endpoint]]
id = "counter"
provider = "counting_engine"
location = "on_device"
needs_network = false
cost_per_hour = "0.5"
"""


@pytest.mark.anyio
async def test_a_registered_engine_loads_from_toml_validates_routes_and_streams(
    tmp_path: Path,
) -> None:
    register_provider("counting_engine", CountingEngine, replace=True)
    path = tmp_path / "endpoints.toml"
    path.write_text(CUSTOM_TOML)
    registry = EndpointRegistry.load(path)
    endpoint = registry["counter"]
    decision = Router(registry).decide(Conditions(network="disconnected"))
    assert [e.id for e in decision.chain] == ["counter"]

    service = create_service(endpoint)
    assert isinstance(service, CountingEngine)
    results = await service.start_streaming(ENGINE_FORMAT)
    await service.send_audio(b"\x00\x00" * 16000)
    last = await service.stop_streaming()
    assert last is not None
    assert last.transcript == "heard 1 seconds"
    assert [r.transcript async for r in results] in ([], ["heard 1 seconds"])
    assert service.metrics.cost > 0


def test_registering_twice_needs_replace_and_kinds_are_checked() -> None:
    register_provider("counting_engine", CountingEngine, replace=True)
    register_provider("counting_engine", CountingEngine)  # the same factory again: fine

    class Other(CountingEngine):
        pass

    with pytest.raises(ConfigError, match="already registered"):
        register_provider("counting_engine", Other)
    with pytest.raises(ConfigError, match="already registered"):
        register_provider("offline", Other)
    with pytest.raises(ConfigError, match="lower_snake_case"):
        register_provider("Not-A-Kind", Other)


def test_errors_point_at_register_provider() -> None:
    with pytest.raises(ConfigError, match=r"sttrouter\.register_provider\(kind, factory\)"):
        STTEndpoint(id="x", provider="never_registered")
    register_provider_kind("kind_without_engine")  # validates, but has no factory
    endpoint = STTEndpoint(id="y", provider="kind_without_engine")
    with pytest.raises(ConfigError, match=r"sttrouter\.register_provider\(kind, factory\)"):
        create_service(endpoint)


def test_the_fake_engine_is_registered_by_the_test_kit_not_the_factory() -> None:
    script = textwrap.dedent(
        """
        import sttrouter.providers as providers
        from sttrouter import ConfigError, STTEndpoint, create_service

        assert "fake" not in providers._BUILTIN
        endpoint = STTEndpoint(id="f", provider="fake")
        try:
            create_service(endpoint)
        except ConfigError as exc:
            assert "import sttrouter.testing" in str(exc), exc
        else:
            raise AssertionError("the fake engine was known before the test kit was imported")
        from sttrouter.testing import FakeSTTService

        assert isinstance(create_service(endpoint), FakeSTTService)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
