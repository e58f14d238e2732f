"""Circuit breakers: take an endpoint out of rotation after repeated failures.

One :class:`CircuitBreaker` per endpoint::

    CLOSED ──N failures within `window`──▶ OPEN ──`cool_down` passes──▶ HALF_OPEN
      ▲                                     ▲                              │
      └────────── the trial succeeds ───────┼──────── the trial fails ─────┘

In ``HALF_OPEN`` exactly one caller at a time gets a trial (:meth:`CircuitBreaker.try_acquire`);
everyone else is refused until the trial reports :meth:`~CircuitBreaker.record_success` or
:meth:`~CircuitBreaker.record_failure` (or gives it back with
:meth:`~CircuitBreaker.release`). A permanent error (bad key, no quota) opens the breaker at
once (:meth:`~CircuitBreaker.trip`). All time comes from the injected clock.

:class:`BreakerBoard` holds one breaker per endpoint id and is a health view for
``Router.decide(..., health=board)``: ``board.is_available(endpoint_id)``.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from sttrouter.clock import SYSTEM_CLOCK, Clock
from sttrouter.errors import ConfigError

__all__ = [
    "BreakerBoard",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "FailureListener",
    "StateListener",
]

log = logging.getLogger("sttrouter.resilience")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    """Traffic flows; failures are counted."""
    OPEN = "open"
    """Traffic is refused until the cool-down has passed."""
    HALF_OPEN = "half_open"
    """One trial at a time decides whether to close again."""


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attr.name} must be positive, got {value!r}", field=attr.name)


@attrs.frozen
class BreakerConfig:
    """Thresholds of a breaker (UnaMentis' defaults: 5 failures, 30 s reset).

    Attributes:
        failure_threshold: failures within ``window`` that open the breaker.
        window: seconds over which failures are counted.
        cool_down: seconds an open breaker waits before allowing a trial.
    """

    failure_threshold: int = attrs.field(default=5, validator=_positive)
    window: float = attrs.field(default=60.0, validator=_positive)
    cool_down: float = attrs.field(default=30.0, validator=_positive)


StateListener = Callable[[str, BreakerState, BreakerState], None]
"""``listener(endpoint_id, old_state, new_state)``."""

FailureListener = Callable[[str, str, bool], None]
"""``listener(endpoint_id, reason, permanent)``: every failure a breaker is told of;
``permanent`` when it tripped the breaker at once (:meth:`CircuitBreaker.trip`)."""


class CircuitBreaker:
    """The breaker of one endpoint.

    Args:
        endpoint_id: whose breaker this is (for logs and listeners).
        config: thresholds.
        clock: time source.
        on_change: called on every state change.
        on_failure: called on every failure reported (counted or tripping).
    """

    def __init__(
        self,
        endpoint_id: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        on_change: StateListener | None = None,
        on_failure: FailureListener | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.config = config or BreakerConfig()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._on_change = on_change
        self._on_failure = on_failure
        self._state = BreakerState.CLOSED
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._trial = False
        self.last_reason: str | None = None
        self.permanent = False
        """Whether the breaker was last opened by a permanent error (:meth:`trip`)."""
        self.trial_gate: Callable[[str], bool] | None = None
        """Asked ``trial_gate(endpoint_id)`` before a half-open trial is taken: a store shared
        between processes answers whether this process owns the endpoint's one trial."""

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.endpoint_id!r}, state={self.state.value})"

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose cool-down passed reads ``HALF_OPEN``)."""
        if (
            self._state is BreakerState.OPEN
            and self.clock.now() - self._opened_at >= self.config.cool_down
        ):
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def failures(self) -> int:
        """Failures counted in the current window."""
        self._expire(self.clock.now())
        return len(self._failures)

    @property
    def remaining(self) -> float:
        """Seconds of cool-down left while open (0 otherwise)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.config.cool_down - (self.clock.now() - self._opened_at))

    def is_available(self) -> bool:
        """Whether :meth:`try_acquire` would succeed now (does not take the trial)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._trial and self._gate()
        )

    def try_acquire(self) -> bool:
        """Ask to use the endpoint. In ``HALF_OPEN`` this takes the one trial."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial and self._gate():
            self._trial = True
            return True
        return False

    def apply(
        self,
        state: BreakerState,
        *,
        reason: str = "",
        remaining: float = 0.0,
        permanent: bool = False,
    ) -> None:
        """Take a state another process decided: ``OPEN`` with ``remaining`` seconds of
        cool-down left (and its reason), or ``CLOSED``. Listeners hear the change as usual; the
        failure listener does not (the failure was recorded where it happened)."""
        self._trial = False
        self._failures.clear()
        if state is BreakerState.OPEN:
            self.last_reason = reason or self.last_reason
            self.permanent = permanent
            self._opened_at = self.clock.now() - max(0.0, self.config.cool_down - remaining)
            self._set(BreakerState.OPEN)
        elif state is BreakerState.CLOSED:
            self.permanent = False
            self._set(BreakerState.CLOSED)

    def _gate(self) -> bool:
        return self.trial_gate is None or self.trial_gate(self.endpoint_id)

    def release(self) -> None:
        """Give back a half-open trial without a verdict (the caller went away)."""
        self._trial = False

    def record_success(self) -> None:
        """The endpoint worked: a half-open breaker closes."""
        self._trial = False
        if self.state is not BreakerState.CLOSED:
            self._failures.clear()
            self._set(BreakerState.CLOSED)

    def record_failure(self, reason: str = "") -> None:
        """The endpoint failed: count it; a half-open trial failing reopens at once."""
        now = self.clock.now()
        self.last_reason = reason or self.last_reason
        if self._on_failure is not None:
            self._on_failure(self.endpoint_id, reason, False)
        state = self.state
        self._trial = False
        if state is BreakerState.HALF_OPEN:
            self.permanent = False
            self._open(now)
            return
        if state is BreakerState.OPEN:
            return
        self._expire(now)
        self._failures.append(now)
        if len(self._failures) >= self.config.failure_threshold:
            self.permanent = False
            self._open(now)

    def trip(self, reason: str = "") -> None:
        """Open now, whatever the count (permanent errors: auth, quota)."""
        self.last_reason = reason or self.last_reason
        if self._on_failure is not None:
            self._on_failure(self.endpoint_id, reason, True)
        self._trial = False
        self.permanent = True
        self._open(self.clock.now())

    def reset(self) -> None:
        """Close and forget every failure (after the endpoint's config was fixed)."""
        self._failures.clear()
        self._trial = False
        self.permanent = False
        self._set(BreakerState.CLOSED)

    # -- internals ----------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        horizon = now - self.config.window
        while self._failures and self._failures[0] <= horizon:
            self._failures.popleft()

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._failures.clear()
        self._set(BreakerState.OPEN)

    def _set(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        log.info(
            "breaker %s: %s -> %s%s",
            self.endpoint_id,
            old.value,
            new.value,
            f" ({self.last_reason})" if new is BreakerState.OPEN and self.last_reason else "",
        )
        if self._on_change is not None:
            self._on_change(self.endpoint_id, old, new)


class BreakerBoard:
    """One :class:`CircuitBreaker` per endpoint id, created on first use.

    Share one board between all sessions of a process so that what one session learns about an
    endpoint protects the others. It is a health view: ``Router.decide(..., health=board)``
    skips endpoints whose breaker is open.

    Args:
        config: thresholds for every breaker.
        clock: time source.
        on_change: called as ``on_change(endpoint_id, old, new)`` on every state change.
        on_failure: called as ``on_failure(endpoint_id, reason, permanent)`` on every failure.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        on_change: StateListener | None = None,
        on_failure: FailureListener | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._on_change = on_change
        self._on_failure = on_failure
        self._breakers: dict[str, CircuitBreaker] = {}
        self.trial_gate: Callable[[str], bool] | None = None
        """Given to every breaker (see :attr:`CircuitBreaker.trial_gate`)."""

    def breaker(self, endpoint_id: str) -> CircuitBreaker:
        b = self._breakers.get(endpoint_id)
        if b is None:
            b = CircuitBreaker(
                endpoint_id,
                self.config,
                clock=self.clock,
                on_change=self._on_change,
                on_failure=self._on_failure,
            )
            b.trial_gate = self.trial_gate
            self._breakers[endpoint_id] = b
        return b

    __getitem__ = breaker

    def is_available(self, endpoint_id: str) -> bool:
        """True unless the endpoint's breaker refuses traffic now."""
        b = self._breakers.get(endpoint_id)
        return b is None or b.is_available()

    def states(self) -> dict[str, BreakerState]:
        return {eid: b.state for eid, b in self._breakers.items()}
