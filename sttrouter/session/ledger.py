"""The usage ledger of a routed session: audio, replays, failures and cost per endpoint.

Replayed audio is billed again by the vendor, so it counts in ``audio_seconds`` (and is shown
apart in ``replayed_seconds``); so does audio sent to a hedge (shown apart in
``hedged_seconds``). The session's ``metrics.cost`` and ``session.cost`` both read
this ledger, so every export of session metrics sees what the endpoints really billed.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import attrs

from sttrouter.endpoint import STTEndpoint
from sttrouter.metrics import cost_for

__all__ = ["EndpointUsage", "LegUsage", "UsageLedger"]


@attrs.frozen
class EndpointUsage:
    """What one endpoint did for a session (replayed audio is billed again, so counted)."""

    endpoint_id: str
    streams: int
    audio_seconds: float
    replayed_seconds: float
    cost: Decimal
    failures: int
    hedged_seconds: float = 0.0
    """Of ``audio_seconds``, audio it carried as a hedge (beside another endpoint)."""


@attrs.frozen
class LegUsage:
    """The audio one endpoint stream carried: ``audio_seconds`` sent, of which
    ``replayed_seconds`` was replayed from the buffer and ``hedged_seconds`` sent while it
    was a hedge."""

    endpoint: STTEndpoint
    audio_seconds: float
    replayed_seconds: float
    hedged_seconds: float = 0.0


@attrs.define
class _Tally:
    cost_per_hour: Decimal
    streams: int = 0
    audio_seconds: float = 0.0
    replayed_seconds: float = 0.0
    failures: int = 0
    hedged_seconds: float = 0.0

    def add(self, leg: LegUsage) -> None:
        self.streams += 1
        self.audio_seconds += leg.audio_seconds
        self.replayed_seconds += leg.replayed_seconds
        self.hedged_seconds += leg.hedged_seconds

    def copy(self) -> _Tally:
        return attrs.evolve(self)


class UsageLedger:
    """Per-endpoint totals over a session's life (every stream it ran)."""

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}

    def _tally(self, endpoint: STTEndpoint) -> _Tally:
        tally = self._tallies.get(endpoint.id)
        if tally is None:
            tally = self._tallies[endpoint.id] = _Tally(endpoint.cost_per_hour)
        return tally

    def record_failure(self, endpoint: STTEndpoint) -> None:
        self._tally(endpoint).failures += 1

    def record_stream(self, leg: LegUsage) -> None:
        """A finished endpoint stream (closed, failed or left behind)."""
        self._tally(leg.endpoint).add(leg)

    def usage(self, open_legs: Iterable[LegUsage] = ()) -> dict[str, EndpointUsage]:
        """The totals, counting ``open_legs`` (streams still running) as they stand now."""
        tallies = {eid: t.copy() for eid, t in self._tallies.items()}
        for leg in open_legs:
            tally = tallies.get(leg.endpoint.id)
            if tally is None:
                tally = tallies[leg.endpoint.id] = _Tally(leg.endpoint.cost_per_hour)
            tally.add(leg)
        return {
            eid: EndpointUsage(
                eid,
                t.streams,
                t.audio_seconds,
                t.replayed_seconds,
                cost_for(t.cost_per_hour, t.audio_seconds),
                t.failures,
                t.hedged_seconds,
            )
            for eid, t in tallies.items()
        }

    def cost(self, open_legs: Iterable[LegUsage] = ()) -> Decimal:
        """What the session's audio cost across endpoints (replays included)."""
        return sum((u.cost for u in self.usage(open_legs).values()), Decimal(0))
