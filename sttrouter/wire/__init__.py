"""Pure wire codecs, one module per protocol: no asyncio, sockets or HTTP clients.

- :mod:`~sttrouter.wire.deepgram` — Deepgram's live-listen JSON messages;
- :mod:`~sttrouter.wire.assemblyai` — AssemblyAI's v3 streaming messages;
- :mod:`~sttrouter.wire.openai` — the OpenAI transcription API (multipart, JSON, SSE);
- :mod:`~sttrouter.wire.gateway` — the ``/v1/audio/stream`` gateway protocol;
- :mod:`~sttrouter.wire.errors` — the one table from vendor status and close codes to errors.

Engine adapters, the gateway server and the fake servers of :mod:`sttrouter.testing` all
import these, so a client and its fake cannot drift apart.
"""
