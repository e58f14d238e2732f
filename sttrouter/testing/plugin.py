"""pytest plugin (entry point ``sttrouter``): fixtures for testing code that uses sttrouter.

Fixtures:
    fake_clock: a fresh :class:`~sttrouter.testing.FakeClock` at 0.
    synthetic_speech_clip: three five-word utterances of :func:`synthetic_speech`.
    fake_stt: a factory ``fake_stt(id, **kwargs) -> FakeSTTService`` on ``fake_clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sttrouter.testing import FakeClock, FakeSTTService, SyntheticSpeech, fake_endpoint
from sttrouter.testing import synthetic_speech as _synthetic_speech


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def synthetic_speech_clip() -> SyntheticSpeech:
    return _synthetic_speech((5, 5, 5))


@pytest.fixture
def fake_stt(fake_clock: FakeClock) -> Callable[..., FakeSTTService]:
    def make(id: str = "fake", **kwargs: Any) -> FakeSTTService:
        endpoint_fields = kwargs.pop("endpoint_fields", {})
        return FakeSTTService(fake_endpoint(id, **endpoint_fields), clock=fake_clock, **kwargs)

    return make
