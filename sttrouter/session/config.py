"""The knobs of a routed session and what it needs from a router."""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.panel.device import Conditions
from sttrouter.resilience import HealthView
from sttrouter.session.hedge import HedgeConfig

__all__ = ["Decider", "SessionConfig"]


class _Decision(Protocol):
    @property
    def chain(self) -> tuple[STTEndpoint, ...]: ...


class Decider(Protocol):
    """What a routed session needs from a router (``sttrouter.panel.router.Router``)."""

    def decide(
        self,
        conditions: Conditions,
        language: str | None = None,
        streaming: bool = True,
        health: HealthView | None = None,
    ) -> _Decision: ...


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attr.name} must be positive, got {value!r}", field=attr.name)


def _positive_or_none(inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _positive(inst, attr, value)


@attrs.frozen
class SessionConfig:
    """Knobs of a routed session (all times in seconds of the session's clock).

    Attributes:
        replay_seconds: bound of the replay buffer (audio since the last final).
        connect_timeout: an endpoint that has not opened by then counts as failed.
        stall_timeout: speech was sent and no result (interim or final) came for this long.
            Engines without interim results answer only at the end of an utterance: set it
            above your longest utterance for them, per endpoint with
            ``connection.options.stall_timeout`` (which overrides this).
        finish_timeout: ``stop_streaming`` waits this long for an endpoint's last final.
        empty_final_limit: this many empty finals in a row over audio with speech energy
            fail the endpoint (:class:`~sttrouter.errors.EmptyTranscripts`).
        speech_dbfs: RMS level above which a chunk or 20 ms frame counts as speech energy.
        replay_chunk_seconds: chunk size used when replaying the buffer.
        switch_back: move to a recovered higher-priority endpoint at utterance boundaries.
        retry_failed_after: an endpoint that failed in this session is used again (switch-back
            or failover) only after this long, and only if its breaker and health allow.
        raise_on_lost_audio: when audio with no final is reported (it overflowed the replay
            buffer and could not be replayed after a failover, or no endpoint was left to
            replay a span with speech that a final skipped), the stream carries on, and
            ``stop_streaming`` then raises :class:`~sttrouter.errors.NoEndpointAvailable`
            naming the first such span (all of them are in ``session.uncovered``). ``False``
            only records them.
        final_timeout: speech sent to an endpoint must have a final within this long
            (interim results do not count); else the endpoint fails and the audio is replayed
            elsewhere. ``None``: two thirds of ``replay_seconds``, so the audio is still in the
            buffer. Per endpoint: ``connection.options.final_timeout``.
        send_timeout: one send to an endpoint may block this long; then the endpoint fails
            (a send to an endpoint that has failed is abandoned at once).
        stop_timeout: ``stop_streaming`` as a whole (last finals, failovers on the way) ends
            within this long, raising :class:`~sttrouter.errors.NoEndpointAvailable` with the
            audio that has no final. ``None``: three times ``finish_timeout``.
        hedge: hedge a slow endpoint with a second one (:class:`HedgeConfig`); ``None``
            (the default): never.
    """

    replay_seconds: float = attrs.field(default=30.0, validator=_positive)
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    stall_timeout: float = attrs.field(default=5.0, validator=_positive)
    finish_timeout: float = attrs.field(default=10.0, validator=_positive)
    empty_final_limit: int = attrs.field(default=2, validator=_positive)
    speech_dbfs: float = -40.0
    replay_chunk_seconds: float = attrs.field(default=0.1, validator=_positive)
    switch_back: bool = True
    retry_failed_after: float = attrs.field(default=30.0, validator=_positive)
    raise_on_lost_audio: bool = True
    final_timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    send_timeout: float = attrs.field(default=2.0, validator=_positive)
    stop_timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    hedge: HedgeConfig | None = None

    @property
    def final_deadline(self) -> float:
        """``final_timeout``, or its default (two thirds of the replay buffer)."""
        if self.final_timeout is not None:
            return self.final_timeout
        return self.replay_seconds * 2 / 3

    @property
    def stop_deadline(self) -> float:
        """``stop_timeout``, or its default (three times ``finish_timeout``)."""
        return self.stop_timeout if self.stop_timeout is not None else 3 * self.finish_timeout
