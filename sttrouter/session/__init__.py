"""``RoutedSession``: one stream over a chain of endpoints, with failover that loses no audio.

The package is a thin orchestrator (:mod:`~sttrouter.session.routed`) over pure pieces: the
timeline (re-basing, de-duplication, withheld empty finals), the candidate walk shared by
failover and switch-back, legs with an explicit state enum, and a usage ledger.

A routed session is itself an :class:`~sttrouter.service.STTService`. It opens the first
endpoint of its chain that the circuit breakers, health view and admission control allow,
forwards the caller's audio to it and keeps a bounded **replay buffer** of the audio since the
last final. When that endpoint fails — an error or close, a connect timeout, a stall (speech
sent, no result within ``stall_timeout``), a run of empty finals over speech, a malformed
message, an in-band auth/quota rejection after the socket opened — the session closes it,
opens the next endpoint, replays the buffer as fast as the engine accepts it, and goes live.

The failover invariants and how this package keeps them:

1. *No audio is lost.* Every byte the caller sends goes into the buffer first; the buffer is
   trimmed only up to the end of a delivered final. A new endpoint starts at the buffer's
   start, so it hears everything that has no final yet. If no endpoint is left, the caller
   gets :class:`~sttrouter.errors.NoEndpointAvailable` whose ``uncovered`` names the audio
   without a final.
2. *Re-basing and de-duplication.* Endpoint ``k``'s stream starts at session time ``offset_k``;
   its results are shifted by it. A final that lies in already-finalised time is dropped; one
   that straddles the watermark is trimmed (words whose midpoint is before it are removed).
   Results of a failed or retired endpoint are ignored from the moment it is given up, so its
   partials are superseded by the new endpoint's.
3. *Silent failures count* (see above).
4. *Breakers, health, switch-back.* Failures feed a shared :class:`BreakerBoard`; permanent
   errors open the breaker at once and mark the endpoint unusable for this session. At each
   end of utterance the session checks whether a higher-priority endpoint is usable again (or
   whether :meth:`RoutedSession.update_conditions` changed the decision) and moves there,
   replaying the few milliseconds since the boundary.
5. *Load.* An :class:`AdmissionController` shared between sessions limits concurrent streams
   per endpoint; a stream waits in a bounded queue up to a deadline, then spills to the next.
6. *Quiet failures count.* Every result passes the sanity check (finite, ordered, within the
   audio sent); a span with speech that a final skips, or that gets no final within
   ``final_timeout`` (interims do not count), is replayed — on the same endpoint first, then
   another — or, when two endpoints find no words in it, counted as covered; with nobody left
   to replay it, it is reported in ``uncovered`` (:mod:`~sttrouter.session.delivery`). An
   engine that calls the session's validated audio bad has failed, not the caller.

Overflow: if no final arrives for ``replay_seconds`` (default 30 s) the oldest audio is dropped
from the buffer and an ``overflow`` event is emitted. That audio has already been sent to the
live endpoint, so nothing is lost unless that endpoint then fails before finalising it; in that
case the span is reported as an ``overflow`` event with its ``interval`` and appended to
:attr:`RoutedSession.uncovered`, and the stream continues on the next endpoint;
``stop_streaming`` then raises :class:`~sttrouter.errors.NoEndpointAvailable` naming the first
lost span (unless ``SessionConfig.raise_on_lost_audio`` is off).
"""

from sttrouter.session.config import Decider, SessionConfig
from sttrouter.session.ledger import EndpointUsage
from sttrouter.session.routed import RoutedSession, StreamState

__all__ = ["Decider", "EndpointUsage", "RoutedSession", "SessionConfig", "StreamState"]
