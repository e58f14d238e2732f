"""The failure ledger: which endpoint failed last, when, how, and whether it is unusable."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from sttrouter.clock import SYSTEM_CLOCK, Clock

__all__ = ["FailureLedger", "FailureRecord"]


@attrs.frozen
class FailureRecord:
    """The last failure of one endpoint.

    Attributes:
        endpoint_id: whose failure.
        at: clock time of the last failure.
        message: what went wrong (an error message; never audio, text or a key).
        permanent: the last failure makes the endpoint unusable until it works again (a rejected
            key, no quota, a bad configuration), as opposed to one that may pass (a refused
            connection, a 5xx, a stall).
        count: failures since the endpoint last worked.
    """

    endpoint_id: str
    at: float
    message: str
    permanent: bool = False
    count: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "at": self.at,
            "message": self.message,
            "permanent": self.permanent,
            "count": self.count,
        }


class FailureLedger:
    """Endpoint id → its last :class:`FailureRecord`, for every endpoint that has failed.

    Args:
        clock: stamps each record.
        on_record: called with every new record (a shared store publishes from here).
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        on_record: Callable[[FailureRecord], None] | None = None,
    ) -> None:
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.on_record = on_record
        self._records: dict[str, FailureRecord] = {}

    def record(self, endpoint_id: str, message: str, *, permanent: bool = False) -> FailureRecord:
        """Note a failure of ``endpoint_id`` now."""
        old = self._records.get(endpoint_id)
        count = 1 if old is None else old.count + 1
        rec = FailureRecord(endpoint_id, self.clock.now(), message, permanent, count)
        self._records[endpoint_id] = rec
        if self.on_record is not None:
            self.on_record(rec)
        return rec

    def apply(self, record: FailureRecord) -> None:
        """Take a record another process made (``on_record`` is not called)."""
        self._records[record.endpoint_id] = record

    def succeeded(self, endpoint_id: str) -> None:
        """The endpoint worked again: it is no longer unusable and its count starts over (the
        time and message of its last failure stay on record)."""
        old = self._records.get(endpoint_id)
        if old is not None and (old.permanent or old.count):
            self._records[endpoint_id] = attrs.evolve(old, permanent=False, count=0)

    def forget(self, endpoint_id: str) -> None:
        """Drop the endpoint's record (after its configuration was fixed)."""
        self._records.pop(endpoint_id, None)

    def last(self, endpoint_id: str) -> FailureRecord | None:
        return self._records.get(endpoint_id)

    def records(self) -> dict[str, FailureRecord]:
        return dict(self._records)

    def unusable(self) -> dict[str, str]:
        """Endpoint id → message, for endpoints whose last failure was permanent."""
        return {eid: r.message for eid, r in self._records.items() if r.permanent}

    def failed_within(self, endpoint_id: str, seconds: float) -> bool:
        """Whether ``endpoint_id`` failed less than ``seconds`` ago."""
        rec = self._records.get(endpoint_id)
        return rec is not None and self.clock.now() - rec.at < seconds

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"FailureLedger({sorted(self._records)!r})"
