"""The contract every engine adapter and the routed session fulfil.

:class:`STTService` is the protocol (a port of UnaMentis' Swift ``STTServiceProtocol``).
:class:`BaseSTTService` owns everything that is not engine-specific: the state machine, the
bounded result channel, input validation and conversion, latency/cost metrics, background tasks
and error translation. An adapter writes four hooks, and a fifth where the engine can be
told to finalise::

    async def _open(self) -> None            # connect; raise an STTError when it cannot
    async def _send(self, pcm: bytes) -> None  # audio already in self.engine_format
    async def _finish(self) -> None          # flush, emit the last results, close
    async def _abort(self) -> None           # close now
    async def _finalize(self) -> None        # force the current utterance's final

The stream's :class:`~sttrouter.options.StreamOptions` are in ``self.stream_options`` during
``_open``; the options an adapter honours are listed in ``supported_options`` (data, checked
by the base class before ``_open``, which raises
:class:`~sttrouter.errors.UnsupportedOption` for the rest).

and reports results with ``await self._emit(result)`` (times on its own stream's timeline,
0 = first sample of this stream) and failures with ``self._fail(error)``. Long-running receive
loops are started with ``self._spawn(coro)``; an exception escaping one fails the stream.
"""

from __future__ import annotations

from sttrouter.service._base import BaseSTTService
from sttrouter.service._batch import iter_chunks, load_input, stream_transcribe
from sttrouter.service._channel import ResultChannel
from sttrouter.service._contract import AudioInput, AudioStream, ServiceFactory, STTService

__all__ = [
    "AudioInput",
    "AudioStream",
    "BaseSTTService",
    "ResultChannel",
    "STTService",
    "ServiceFactory",
    "iter_chunks",
    "load_input",
    "stream_transcribe",
]
