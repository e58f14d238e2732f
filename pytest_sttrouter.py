"""pytest plugin of sttrouter (entry point ``sttrouter``): fixtures for testing code that uses it.

Installed with the package and loaded by pytest automatically. It lives outside the
``sttrouter`` package and imports it only when a fixture is used, so loading the plugin costs
nothing and coverage measurement of ``sttrouter`` (which starts after plugins load) sees every
line of it.

Fixtures:
    fake_clock: a fresh :class:`sttrouter.testing.FakeClock` at 0.
    synthetic_speech_clip: three five-word utterances of :func:`sttrouter.testing.synthetic_speech`.
    fake_stt: a factory ``fake_stt(id, **kwargs) -> FakeSTTService`` on ``fake_clock``; pass
        ``endpoint_fields={...}`` to override fields of the fake endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sttrouter.testing import FakeClock, FakeSTTService, SyntheticSpeech


@pytest.fixture
def fake_clock() -> FakeClock:
    from sttrouter.testing import FakeClock

    return FakeClock()


@pytest.fixture
def synthetic_speech_clip() -> SyntheticSpeech:
    from sttrouter.testing import synthetic_speech

    return synthetic_speech((5, 5, 5))


@pytest.fixture
def fake_stt(fake_clock: FakeClock) -> Callable[..., FakeSTTService]:
    from sttrouter.testing import FakeSTTService, fake_endpoint

    def make(id: str = "fake", **kwargs: Any) -> FakeSTTService:
        endpoint_fields = kwargs.pop("endpoint_fields", {})
        return FakeSTTService(fake_endpoint(id, **endpoint_fields), clock=fake_clock, **kwargs)

    return make
