"""``sttrouter serve``: the streaming gateway (``/v1/audio/stream``) in front of a backend.

Examples::

    sttrouter serve --backend offline --port 8080
    sttrouter serve --backend openai --backend-url http://gpu-box:8000 --backend-model glm-asr
    STTROUTER_GATEWAY_TOKEN=s3cret sttrouter serve --backend glm-local --host 0.0.0.0

The token is read from an environment variable (``--token-env``, default
``STTROUTER_GATEWAY_TOKEN``), never from the command line, where ``ps`` would show it.
Needs the ``server`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

import attrs

from sttrouter._builtin_endpoints import offline_endpoint
from sttrouter.endpoint import ConnectionConfig, Location, STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.gateway import protocol as gw
from sttrouter.gateway.server import Backend, GatewayConfig, GatewayServer
from sttrouter.service import STTService

__all__ = ["build_backend", "build_config", "register", "run"]

BACKENDS = ("offline", "openai", "glm-local", "fake")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the streaming STT gateway (/v1/audio/stream, /v1/audio/transcriptions)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks one)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="offline",
        help="engine behind the gateway: the built-in offline engine, an OpenAI-compatible "
        "GLM-ASR server (vLLM/SGLang), GLM-ASR in-process, or a fake (demos, benchmarks)",
    )
    p.add_argument("--backend-url", help="OpenAI-compatible server URL (--backend openai)")
    p.add_argument("--backend-model", help="served model name, or GLM model path/repo")
    p.add_argument("--backend-key-env", help="environment variable holding the backend's API key")
    p.add_argument(
        "--interim-interval",
        type=float,
        default=None,
        help="seconds of audio between interim re-decodes (openai, glm-local backends)",
    )
    p.add_argument(
        "--token-env",
        default="STTROUTER_GATEWAY_TOKEN",
        help="environment variable holding the clients' bearer token (unset: no auth)",
    )
    p.add_argument("--max-sessions", type=int, default=100)
    p.add_argument("--max-buffer-seconds", type=float, default=10.0)
    p.add_argument(
        "--max-buffer-wait-seconds",
        type=float,
        default=1.0,
        help="how long a frame may wait for buffer room before BUFFER_OVERFLOW",
    )
    p.add_argument("--max-frame-seconds", type=float, default=gw.MAX_FRAME_SECONDS)
    p.add_argument("--max-message-bytes", type=int, default=1 << 20)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> GatewayConfig:
    env = os.environ if environ is None else environ
    token = env.get(args.token_env) or None
    if args.max_sessions < 1:
        raise ConfigError("--max-sessions must be at least 1")
    if not 0 < args.max_frame_seconds <= 10:
        raise ConfigError("--max-frame-seconds must lie in (0, 10]")
    if args.max_buffer_seconds <= 0:
        raise ConfigError("--max-buffer-seconds must be positive")
    return GatewayConfig(
        token=token,
        max_sessions=args.max_sessions,
        max_buffer_seconds=args.max_buffer_seconds,
        max_buffer_wait_seconds=max(0.0, args.max_buffer_wait_seconds),
        max_frame_seconds=args.max_frame_seconds,
        max_message_bytes=args.max_message_bytes,
        model=args.backend_model or f"sttrouter-{args.backend}",
    )


def build_backend(args: argparse.Namespace) -> Backend:
    """The per-session service factory for ``--backend``."""
    from sttrouter.providers import create_service

    kind = args.backend
    if kind == "fake":
        from sttrouter.testing import FakeSTTService

        return lambda config: FakeSTTService()
    if kind == "offline":
        endpoint = offline_endpoint()
        return lambda config: create_service(endpoint)
    if kind == "glm-local":
        options: dict[str, Any] = {}
        if args.backend_model:
            options["model"] = args.backend_model
        if args.interim_interval is not None:
            options["interim_interval"] = args.interim_interval
        endpoint = STTEndpoint(
            id="glm-local",
            provider="glm_local",
            location=Location.LOCAL_SERVER,
            needs_network=False,
            connection=ConnectionConfig(options=options),
        )
        return lambda config: create_service(endpoint)
    if not args.backend_url:
        raise ConfigError("--backend openai needs --backend-url (the vLLM/SGLang server)")
    opts: dict[str, Any] = {"mode": "openai"}
    if args.backend_model:
        opts["model"] = args.backend_model
    if args.interim_interval is not None:
        opts["interim_interval"] = args.interim_interval
    endpoint = STTEndpoint(
        id="glm-server",
        provider="glm_server",
        location=Location.SELF_HOSTED,
        connection=ConnectionConfig(
            base_url=args.backend_url, api_key_env=args.backend_key_env, options=opts
        ),
    )
    return _openai_backend(endpoint)


class _OpenAIBackend:
    """GLM-ASR server sessions sharing one HTTP connection pool (closed by ``aclose``)."""

    def __init__(self, endpoint: STTEndpoint) -> None:
        self.endpoint = endpoint
        self._client: Any = None

    def __call__(self, config: gw.StreamConfig) -> STTService:
        import httpx

        from sttrouter.providers.glm_server import GLMServerSTTService

        if self._client is None:
            key = self.endpoint.connection.api_key()
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(30.0, connect=10.0),
                limits=httpx.Limits(max_connections=64),
            )
        ep = self.endpoint
        if config.language:
            conn = ep.connection
            ep = attrs.evolve(
                ep,
                connection=attrs.evolve(
                    conn, options={**conn.options, "language": config.language}
                ),
            )
        return GLMServerSTTService(ep, http_client=self._client)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _openai_backend(endpoint: STTEndpoint) -> Backend:
    return _OpenAIBackend(endpoint)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = GatewayServer(build_backend(args), build_config(args))
    asyncio.run(_serve(server, args))
    return 0


async def _serve(server: GatewayServer, args: argparse.Namespace) -> None:
    from sttrouter.gateway._runner import AppServer

    app_server = AppServer(
        server.app,
        host=args.host,
        port=args.port,
        ws_max_size=server.config.max_message_bytes,
        handle_signals=True,
    )
    await app_server.start()
    auth = "bearer token required" if server.config.token else "NO AUTH (set --token-env)"
    logging.getLogger("sttrouter.gateway").warning(
        "sttrouter gateway on %s (backend %s, %s): WS %s/v1/audio/stream",
        app_server.http_url,
        args.backend,
        auth,
        app_server.ws_url,
    )
    await app_server.serve_forever()
