"""sttrouter: one async streaming interface to every speech-to-text engine, routed by
device tier, network, thermal state, health, load and cost, with mid-stream failover
that loses no audio.
"""

from sttrouter._builtin_endpoints import assemblyai_endpoint, deepgram_endpoint, offline_endpoint
from sttrouter.audio import ENGINE_FORMAT, AudioConverter, AudioFormat, Encoding, read_audio
from sttrouter.clock import Clock, SystemClock
from sttrouter.context import RoutingContext
from sttrouter.convenience import transcribe_file
from sttrouter.endpoint import ConnectionConfig, Location, Provider, STTEndpoint
from sttrouter.errors import (
    AlreadyStreaming,
    AudioFormatError,
    AuthenticationFailed,
    CallerError,
    ConfigError,
    ConnectionFailed,
    ConnectTimeout,
    EmptyTranscripts,
    EndpointMisconfigured,
    ErrorKind,
    MalformedResponse,
    MissingDependency,
    NoEndpointAvailable,
    NotStreaming,
    PermanentError,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    StreamStalled,
    STTError,
    TransientError,
    UnsupportedOption,
)
from sttrouter.events import RouteEvent, RouteEventKind
from sttrouter.metrics import STTMetrics
from sttrouter.options import StreamOptions
from sttrouter.panel.device import Conditions, DeviceTier, NetworkStatus, ThermalState
from sttrouter.panel.policy import Policy, Rule
from sttrouter.panel.registry import EndpointRegistry, default_registry
from sttrouter.panel.router import Decision, Router, SkipReason, Verdict
from sttrouter.providers import create_service, register_provider
from sttrouter.results import STTResult, Transcript, WordTimestamp
from sttrouter.service import AudioStream, BaseSTTService, ServiceFactory, STTService
from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.session.hedge import HedgeConfig

__version__ = "0.1.0"

__all__ = [
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
    "transcribe_file",
]
