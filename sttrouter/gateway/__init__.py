"""The streaming gateway behind ``sttrouter serve`` (extra ``server``).

* :mod:`sttrouter.gateway.protocol` — UnaMentis' ``/v1/audio/stream`` messages (pure; the
  ``glm_server`` adapter's gateway mode uses it too, which is why this package imports nothing
  on its own);
* :mod:`sttrouter.gateway.server` — :class:`~sttrouter.gateway.server.GatewayServer`, the ASGI app
  (built in :mod:`~sttrouter.gateway.app`, with the OpenAI-compatible HTTP endpoint in
  :mod:`~sttrouter.gateway.http` and the streaming session in :mod:`~sttrouter.gateway.websocket`);
* :mod:`sttrouter.gateway.metrics` — its Prometheus counters;
* ``sttrouter.gateway._runner.AppServer`` — runs an ASGI app with uvicorn in the current loop.
"""
