"""Hedged streams: a second endpoint for a slow first one, within a cost cap.

When the serving endpoint has given no result for speech sent within a threshold, a routed
session with a :class:`HedgeConfig` opens a *hedge*: the next usable endpoint of the chain with
the same language capability, which replays the buffer like a failover and then gets the live
audio too. The first final for each utterance wins: at that utterance boundary the other leg
is closed (a winning hedge becomes the serving leg). Both legs' results land on one session
timeline, so the watermark de-duplicates them exactly as after a failover.

Pure bookkeeping, free of the event loop: the threshold (fixed, or a percentile of the
response times observed per endpoint) and the cost cap, both kept in a :class:`HedgeStats`
that every session sharing the :class:`HedgeConfig` shares.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import attrs

from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError

__all__ = ["HedgeConfig", "HedgeGate", "HedgeStats", "same_languages"]


def same_languages(a: STTEndpoint, b: STTEndpoint) -> bool:
    """Whether ``a`` and ``b`` have the same language capability (a hedge never mixes)."""
    return a.supported_languages == b.supported_languages


class HedgeStats:
    """What the sessions sharing one :class:`HedgeConfig` know together: the audio they
    received and hedged (bytes of engine-format audio), and each endpoint's recent response
    times (seconds from speech sent to the next result)."""

    def __init__(self, window: int = 200) -> None:
        self.window = window
        self.total_bytes = 0
        self.hedged_bytes = 0
        self._times: dict[str, deque[float]] = {}

    @property
    def hedged_share(self) -> float:
        """Hedged audio over all audio counted so far."""
        return self.hedged_bytes / self.total_bytes if self.total_bytes else 0.0

    def observe(self, endpoint_id: str, seconds: float) -> None:
        times = self._times.get(endpoint_id)
        if times is None:
            times = self._times[endpoint_id] = deque(maxlen=self.window)
        times.append(seconds)

    def samples(self, endpoint_id: str) -> int:
        return len(self._times.get(endpoint_id, ()))

    def percentile(self, endpoint_id: str, q: float) -> float | None:
        """The ``q``-th percentile (nearest rank) of the endpoint's response times."""
        times = self._times.get(endpoint_id)
        if not times:
            return None
        ordered = sorted(times)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    def __repr__(self) -> str:
        return f"HedgeStats(total={self.total_bytes}B, hedged={self.hedged_bytes}B)"


def _share(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{attr.name} must lie in 0..1, got {value!r}", field=attr.name)


def _positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{attr.name} must be positive, got {value!r}", field=attr.name)


def _not_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{attr.name} must not be negative, got {value!r}", field=attr.name)


def _percent(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value <= 100:
        raise ConfigError(f"{attr.name} must lie in (0, 100], got {value!r}", field=attr.name)


@attrs.frozen
class HedgeConfig:
    """When a routed session hedges a slow endpoint (``SessionConfig(hedge=HedgeConfig())``).

    Attributes:
        after: hedge when the serving endpoint has given no result this many seconds after
            speech was sent to it. ``None``: its observed ``percentile`` response time (after
            ``min_samples`` observations; ``initial_after`` before that).
        percentile: which percentile of the observed response times is the threshold.
        min_samples: observations of an endpoint before its percentile is trusted.
        initial_after: the threshold while an endpoint has fewer than ``min_samples``.
        max_share: hedged audio stays at or below this share of all audio received (a hedge
            that would pass it is not opened, and a running one is cancelled). Hedged audio is
            what the second endpoint is sent while both run: it is exactly the audio billed
            twice, whichever of the two wins.
        hold_after_win: after a hedge won because the first endpoint was slow, the stream is
            not switched back to that endpoint for this many seconds (a slow endpoint is
            usually slow for a while, and every move replays audio). ``0``: switch back at the
            next utterance boundary. A failover or a re-route is never held.
        stats: the audio tallies and response times, shared by every session that shares
            this config (the sessions of one context share its ``session_config``), so the
            cap and the percentile hold across them.
    """

    after: float | None = attrs.field(default=None, validator=_positive_or_none)
    percentile: float = attrs.field(default=95.0, validator=_percent)
    min_samples: int = 20
    initial_after: float = attrs.field(default=1.0, validator=_positive_or_none)
    max_share: float = attrs.field(default=0.10, validator=_share)
    hold_after_win: float = attrs.field(default=30.0, validator=_not_negative)
    stats: HedgeStats = attrs.field(factory=HedgeStats, eq=False, repr=False)


class HedgeGate:
    """One session's view of its :class:`HedgeConfig`: the threshold per endpoint and the
    cost cap. Audio the session received is counted into the shared stats lazily (when a
    check needs it, and at the end of a stream), never per chunk."""

    def __init__(self, config: HedgeConfig) -> None:
        self.config = config
        self.stats = config.stats
        self._counted = 0

    def begin(self) -> None:
        """A new stream (its positions start at 0 again)."""
        self._counted = 0

    def count(self, received: int) -> None:
        """The stream has received ``received`` bytes so far."""
        if received > self._counted:
            self.stats.total_bytes += received - self._counted
            self._counted = received

    def threshold(self, endpoint: STTEndpoint) -> float:
        """Seconds without a result, after speech, before ``endpoint`` is hedged."""
        cfg = self.config
        if cfg.after is not None:
            return cfg.after
        if self.stats.samples(endpoint.id) < cfg.min_samples:
            return cfg.initial_after
        observed = self.stats.percentile(endpoint.id, cfg.percentile)
        assert observed is not None
        return observed

    def allows(self, nbytes: int, received: int) -> bool:
        """Whether ``nbytes`` more hedged audio keeps the hedged share within the cap (the
        stream has received ``received`` bytes)."""
        self.count(received)
        stats = self.stats
        return stats.hedged_bytes + nbytes <= self.config.max_share * stats.total_bytes

    def spend(self, nbytes: int) -> None:
        self.stats.hedged_bytes += nbytes
