"""``sttrouter serve``: the streaming gateway (``/v1/audio/stream``) in front of a backend.

Examples::

    sttrouter serve --config endpoints.toml --port 8080 --workers 4
    sttrouter serve --backend offline --port 8080
    sttrouter serve --backend openai --backend-url http://gpu-box:8000 --backend-model glm-asr
    STTROUTER_GATEWAY_TOKEN=s3cret sttrouter serve --backend glm-local --host 0.0.0.0

``--config`` routes: each worker process builds one RoutingContext from the registry and
every connection or request gets its own routed session (failover without loss, breakers,
admission and switch-back, shared by the worker's sessions). Model names: ``sttrouter``
(routed) and every endpoint id (that endpoint alone). ``--backend`` is the shortcut for a
one-endpoint gateway.

``--workers N`` forks N processes that share the listening socket. Every limit
(``--max-sessions``, ``--max-requests``, breakers, admission) is per worker: N workers
serve up to N times ``--max-sessions``.

The token is read from an environment variable (``--token-env``, default
``STTROUTER_GATEWAY_TOKEN``), never from the command line, where ``ps`` would show it.
Needs the ``server`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import logging
import multiprocessing
import os
import signal
import socket
from typing import Any

import attrs

from sttrouter._builtin_endpoints import offline_endpoint
from sttrouter.endpoint import ConnectionConfig, Location, STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.gateway import protocol as gw
from sttrouter.gateway.server import Backend, GatewayConfig, GatewayServer
from sttrouter.service import STTService

__all__ = ["build_backend", "build_config", "build_server", "register", "run"]

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
        "--config",
        metavar="REGISTRY_TOML",
        help="route over the endpoints of this registry file (instead of one --backend)",
    )
    p.add_argument("--policy", metavar="POLICY_TOML", help="routing policy for --config")
    p.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow a plain http:// --backend-url on a host that is not loopback "
        "(a private network you trust)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the socket; every limit is per worker (default 1)",
    )
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
    p.add_argument("--max-sessions", type=int, default=100, help="streaming sessions per worker")
    p.add_argument(
        "--max-requests",
        type=int,
        default=None,
        help="HTTP transcriptions at once per worker (default: 2 per core); more get 503",
    )
    p.add_argument(
        "--engine-processes",
        type=int,
        default=None,
        help="run each session's engine in one of N worker processes, so an engine that holds "
        "the GIL (pocketsphinx) never stalls the server (default: one per core for "
        "--backend offline, 0 otherwise)",
    )
    p.add_argument(
        "--engine-threads",
        type=int,
        default=None,
        help="threads for engines' blocking work per worker (default: one per core)",
    )
    p.add_argument(
        "--max-buffer-seconds",
        type=float,
        default=10.0,
        help="audio a session may have waiting for the engine; beyond it the socket is not "
        "read (TCP slows the client)",
    )
    p.add_argument(
        "--max-buffer-wait-seconds",
        type=float,
        default=10.0,
        help="how long the engine may take no audio at all with the buffer full before a "
        "frame is dropped with BUFFER_OVERFLOW",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send its start message (default 10)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds a started session may receive nothing before it is ended (default 60)",
    )
    p.add_argument(
        "--max-session-seconds",
        type=float,
        default=4 * 3600.0,
        help="longest a session may stay open (default 4 h)",
    )
    p.add_argument("--max-frame-seconds", type=float, default=gw.MAX_FRAME_SECONDS)
    p.add_argument("--max-message-bytes", type=int, default=1 << 20)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not log a JSON line per request (sttrouter.gateway.access)",
    )
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
    for flag in ("start_timeout", "idle_timeout", "max_session_seconds"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    extra: dict[str, Any] = {}
    if args.max_requests is not None:
        if args.max_requests < 1:
            raise ConfigError("--max-requests must be at least 1")
        extra["max_requests"] = args.max_requests
    if args.engine_threads is not None:
        if args.engine_threads < 1:
            raise ConfigError("--engine-threads must be at least 1")
        extra["engine_threads"] = args.engine_threads
    model = "sttrouter" if args.config else args.backend_model or f"sttrouter-{args.backend}"
    return GatewayConfig(
        token=token,
        max_sessions=args.max_sessions,
        max_buffer_seconds=args.max_buffer_seconds,
        max_buffer_wait_seconds=max(0.0, args.max_buffer_wait_seconds),
        max_frame_seconds=args.max_frame_seconds,
        max_message_bytes=args.max_message_bytes,
        model=model,
        start_timeout_seconds=args.start_timeout,
        idle_timeout_seconds=args.idle_timeout,
        max_session_seconds=args.max_session_seconds,
        **extra,
    )


def _serve_fake() -> Backend:
    """``--backend fake``: the test fake with bounded memory (it keeps no copy of the audio,
    and a run of words with no pause is cut every 64 words), for demos and benchmarks."""
    from sttrouter.testing import FakeSTTService

    class ServeFake(FakeSTTService):
        async def _send(self, pcm: bytes) -> None:
            await super()._send(pcm)
            self.received.clear()
            if len(getattr(self, "_utt_words", ())) > 64:
                await self._finalize()

    return lambda config: ServeFake()


class _ContextBackend:
    """Routed sessions of one :class:`~sttrouter.RoutingContext` (``chain``: one endpoint)."""

    def __init__(self, context: Any, chain: tuple[str, ...] | None = None) -> None:
        self.context = context
        self.chain = chain

    def __call__(self, config: gw.StreamConfig) -> STTService:
        session: STTService = self.context.session(language=config.language, chain=self.chain)
        return session

    def state_status(self) -> dict[str, Any]:
        """The routing state store's status (for ``/ready``): a shared store that cannot reach
        its server says so here while routing goes on from the local view."""
        status: dict[str, Any] = self.context.state.status()
        return status

    async def aclose(self) -> None:
        await self.context.aclose()


def build_server(args: argparse.Namespace, config: GatewayConfig) -> GatewayServer:
    """The gateway for ``args``: a routed one for ``--config``, else one ``--backend``.

    Call it in the worker process: a ``--config`` gateway builds its RoutingContext here."""
    if not args.config:
        processes = engine_processes(args)
        if processes:
            from sttrouter.gateway.engine_processes import EngineProcesses

            pool = EngineProcesses(functools.partial(build_backend, args), processes)
            return GatewayServer(pool, config)
        return GatewayServer(build_backend(args), config)
    from sttrouter.context import RoutingContext

    context = RoutingContext.from_toml(args.config, policy=args.policy)
    routed = _ContextBackend(context)
    models: dict[str, Backend] = {
        ep.id: _ContextBackend(context, (ep.id,)) for ep in context.registry
    }
    return GatewayServer(routed, config, models=models)


def engine_processes(args: argparse.Namespace) -> int:
    """How many engine worker processes ``args`` asks for (0: engines run in this one)."""
    n = getattr(args, "engine_processes", None)
    if n is None:
        return (os.cpu_count() or 1) if args.backend == "offline" and not args.config else 0
    if n < 0:
        raise ConfigError("--engine-processes must be 0 or more")
    return int(n)


def build_backend(args: argparse.Namespace) -> Backend:
    """The per-session service factory for ``--backend``."""
    from sttrouter.providers import create_service

    kind = args.backend
    if kind == "fake":
        return _serve_fake()
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
            base_url=args.backend_url,
            api_key_env=args.backend_key_env,
            options=opts,
            allow_insecure=bool(getattr(args, "allow_insecure", False)),
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
    if args.no_access_log:
        logging.getLogger("sttrouter.gateway.access").setLevel(logging.WARNING)
    config = build_config(args)
    engine_processes(args)  # fail here, once, on a bad backend or registry
    if args.config:
        build_server(args, config)
    else:
        build_backend(args)
    sock = bind(args.host, args.port)
    if args.workers == 1:
        asyncio.run(_serve(build_server(args, config), args, sock))
        return 0
    return _run_workers(args, config, sock)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (shared by every worker).

    Raises:
        ConfigError: the address is in use or cannot be bound (one line, no traceback).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use; stop the other server or pick "
                "another --port",
                field="port",
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", field="port") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _worker(args: argparse.Namespace, config: GatewayConfig, sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers with SIGTERM
    asyncio.run(_serve(build_server(args, config), args, sock))


def _run_workers(args: argparse.Namespace, config: GatewayConfig, sock: socket.socket) -> int:
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_worker, args=(args, config, sock), name=f"sttrouter-worker-{i}")
        for i in range(args.workers)
    ]
    for proc in procs:
        proc.start()

    def stop(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()
    sock.close()
    stopped = (0, -signal.SIGTERM, -signal.SIGINT)  # a worker ends by the signal it was sent
    return max((0 if proc.exitcode in stopped else 1) for proc in procs)


async def _serve(
    server: GatewayServer, args: argparse.Namespace, sock: socket.socket | None = None
) -> None:
    from sttrouter.gateway._runner import AppServer

    app_server = AppServer(
        server.app,
        host=args.host,
        port=args.port,
        ws_max_size=server.config.max_message_bytes,
        handle_signals=True,
        sock=sock,
    )
    await app_server.start()
    auth = "bearer token required" if server.config.token else "NO AUTH (set --token-env)"
    backend = f"registry {args.config}" if args.config else f"backend {args.backend}"
    logging.getLogger("sttrouter.gateway").warning(
        "sttrouter gateway on %s (%s, %s, pid %d): WS %s/v1/audio/stream",
        app_server.http_url,
        backend,
        auth,
        os.getpid(),
        app_server.ws_url,
    )
    await app_server.serve_forever()
