"""Which endpoints of the chain may take a session's stream now: one walk for failover and
switch-back alike.

Pure: it reads what the session knows (endpoints unusable for it, when each last failed) and
asks the shared availability view (breakers and health) and admission control through plain
callables. Availability is checked once: when the chain came from a router that already
applied the view, the walk trusts that filtering (the caller decides again just before
walking), and asks the view itself only for a fixed chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from sttrouter.endpoint import STTEndpoint

__all__ = ["Candidate", "Standing", "candidates"]


@attrs.frozen
class Candidate:
    """One endpoint of the walk, and why it may not be opened now (``None``: it may)."""

    endpoint: STTEndpoint
    skip: str | None = None

    @property
    def usable(self) -> bool:
        return self.skip is None


@attrs.frozen
class Standing:
    """What a session knows about the endpoints it has used.

    Attributes:
        unusable: endpoint id -> why it can never serve this session (a permanent error, an
            option it cannot honour, a factory that cannot build it).
        failed_at: endpoint id -> session-clock time of its last failure.
        now: the session clock now.
        retry_failed_after: an endpoint that failed is tried again only after this long.
    """

    unusable: Mapping[str, str]
    failed_at: Mapping[str, float]
    now: float
    retry_failed_after: float

    def skip_reason(self, endpoint_id: str, *, include_recent_failures: bool) -> str | None:
        why = self.unusable.get(endpoint_id)
        if why is not None:
            return f"unusable for this session: {why}"
        failed = self.failed_at.get(endpoint_id)
        if (
            not include_recent_failures
            and failed is not None
            and self.now - failed < self.retry_failed_after
        ):
            return "failed in this session"
        return None

    def recently_failed(self, chain: Sequence[STTEndpoint]) -> bool:
        """Some endpoint of ``chain`` failed in this session and may be tried again."""
        return any(ep.id in self.failed_at and ep.id not in self.unusable for ep in chain)


def candidates(
    chain: Sequence[STTEndpoint],
    standing: Standing,
    *,
    available: Callable[[str], bool] | None,
    has_capacity: Callable[[STTEndpoint], bool] | None = None,
    above: str | None = None,
    include_recent_failures: bool = False,
) -> list[Candidate]:
    """Walk ``chain`` best first.

    Args:
        chain: the endpoints, best first.
        standing: the session's own record of its endpoints.
        available: the availability view (breakers and health); ``None`` when the chain
            comes from a router that already applied it.
        has_capacity: when given, an endpoint at its concurrency limit is skipped (a
            switch-back never queues; a failover waits in the queue instead).
        above: stop at this endpoint, or at the first replica of its pool (a switch-back
            looks only above the serving one, and never hops between replicas of one pool).
        include_recent_failures: a later sweep of the chain retries endpoints that failed in
            this session (breakers and health still decide).
    """
    out: list[Candidate] = []
    pool = next((ep.pool for ep in chain if ep.id == above), None) if above else None
    for ep in chain:
        if ep.id == above or (pool is not None and ep.pool == pool):
            break
        why = standing.skip_reason(ep.id, include_recent_failures=include_recent_failures)
        if why is None and available is not None and not available(ep.id):
            why = "circuit open or unhealthy"
        if why is None and has_capacity is not None and not has_capacity(ep):
            why = "at its concurrency limit"
        out.append(Candidate(ep, why))
    return out
