"""Test kit for sttrouter users: fakes, fault plans, a virtual clock and a conformance check.

Everything here is public API. Typical use::

    from sttrouter.testing import FakeClock, FakeSTTService, FaultPlan, synthetic_speech

    clock = FakeClock()
    primary = FakeSTTService(
        fake_endpoint("primary"), faults=FaultPlan.drop_after(1.0), clock=clock
    )
"""

from sttrouter.providers import register_provider
from sttrouter.testing._clock import FakeClock, settle
from sttrouter.testing._conformance import ConformanceError, ServiceMaker, check_stt_service
from sttrouter.testing._fake_server import (
    ScriptedUtterance,
    ScriptedWord,
    ServerFault,
    SessionRecord,
)
from sttrouter.testing._fake_service import FakeSTTService, Utterance, fake_endpoint
from sttrouter.testing._faults import FINAL_FAULTS, Fault, FaultKind, FaultPlan
from sttrouter.testing._speech import MARK_BASE, SyntheticSpeech, mark_word, synthetic_speech
from sttrouter.testing.assemblyai_server import FakeAssemblyAIServer
from sttrouter.testing.deepgram_server import FakeDeepgramServer
from sttrouter.testing.openai_server import FakeOpenAITranscriptionServer

# The fake engine is a provider kind like any custom one: importing the test kit registers it,
# so the production factory knows nothing of the test kit.
register_provider("fake", FakeSTTService)

__all__ = [
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
