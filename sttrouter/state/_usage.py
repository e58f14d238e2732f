"""Usage counters per endpoint: audio seconds, sessions and cost, for budgets to build on."""

from __future__ import annotations

from collections.abc import Callable

import attrs

__all__ = ["Usage", "UsageCounters"]


@attrs.frozen
class Usage:
    """What one endpoint was used for.

    Attributes:
        audio_seconds: seconds of audio sent to it.
        sessions: streams opened on it.
        cost: what that cost, in US dollars.
    """

    audio_seconds: float = 0.0
    sessions: int = 0
    cost: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.audio_seconds + other.audio_seconds,
            self.sessions + other.sessions,
            self.cost + other.cost,
        )

    def to_dict(self) -> dict[str, float | int]:
        return {"audio_seconds": self.audio_seconds, "sessions": self.sessions, "cost": self.cost}


class UsageCounters:
    """Endpoint id → its :class:`Usage`, counted up by :meth:`add`.

    In memory these are this process's counts; a shared store adds every increment to the
    fleet's counters as well and reads the fleet's totals back into :meth:`fleet`.

    Args:
        on_add: called as ``on_add(endpoint_id, usage)`` with every increment.
    """

    def __init__(self, *, on_add: Callable[[str, Usage], None] | None = None) -> None:
        self.on_add = on_add
        self._local: dict[str, Usage] = {}
        self._fleet: dict[str, Usage] = {}

    def add(
        self,
        endpoint_id: str,
        *,
        audio_seconds: float = 0.0,
        sessions: int = 0,
        cost: float = 0.0,
    ) -> None:
        """Count ``audio_seconds``, ``sessions`` and ``cost`` against ``endpoint_id``."""
        inc = Usage(audio_seconds, sessions, cost)
        self._local[endpoint_id] = self._local.get(endpoint_id, Usage()) + inc
        if self.on_add is not None:
            self.on_add(endpoint_id, inc)

    def local(self, endpoint_id: str) -> Usage:
        """This process's usage of ``endpoint_id``."""
        return self._local.get(endpoint_id, Usage())

    def fleet(self, endpoint_id: str) -> Usage:
        """Every process's usage of ``endpoint_id`` as last read (this process's alone when
        nothing is shared)."""
        return self._fleet.get(endpoint_id, self.local(endpoint_id))

    def set_fleet(self, endpoint_id: str, usage: Usage) -> None:
        """Note the fleet's totals for ``endpoint_id`` (read from a shared store)."""
        self._fleet[endpoint_id] = usage

    def endpoint_ids(self) -> tuple[str, ...]:
        return tuple(sorted({*self._local, *self._fleet}))

    def __repr__(self) -> str:
        return f"UsageCounters({self.endpoint_ids()!r})"
