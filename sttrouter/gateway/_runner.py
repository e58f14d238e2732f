"""Run an ASGI app with uvicorn inside the current event loop (tests, embedding, the CLI).

``async with AppServer(app) as server:`` binds ``127.0.0.1`` port 0 by default, so parallel
tests never collide, and ``server.http_url`` / ``server.ws_url`` say where it listens.
Embedded servers leave the process' signal handlers alone; the CLI passes
``handle_signals=True`` so Ctrl-C stops it gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from types import TracebackType
from typing import Any

from sttrouter.errors import MissingDependency

__all__ = ["AppServer"]


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependency("uvicorn", "server") from exc
    return uvicorn


class AppServer:
    """An ASGI app served by uvicorn on a socket this object binds.

    Args:
        app: the ASGI application.
        host: address to bind.
        port: port to bind; 0 picks a free one.
        ws_max_size: largest WebSocket message accepted (bytes); bigger ones close the socket
            with 1009.
        handle_signals: let uvicorn handle SIGINT/SIGTERM (the command line does).
        backlog: listen backlog (many concurrent connects in benchmarks).
        sock: an already bound socket to serve on (shared by worker processes); ``host``
            and ``port`` then only name it.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ws_max_size: int = 1 << 20,
        handle_signals: bool = False,
        backlog: int = 2048,
        sock: socket.socket | None = None,
    ) -> None:
        uvicorn = _uvicorn()
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="auto",
            http="h11",
            ws="websockets-sansio",
            ws_max_size=ws_max_size,
            ws_ping_interval=None,
            timeout_graceful_shutdown=2,
            backlog=backlog,
        )
        handle = handle_signals

        class _Server(uvicorn.Server):  # type: ignore[misc, name-defined]
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                if handle:
                    with super().capture_signals():
                        yield
                else:
                    yield

        self._server = _Server(self.config)
        self._socket: socket.socket | None = None
        self._given = sock
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; returns once the server accepts connections."""
        if self._given is not None:
            sock = self._given
        else:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
            self._socket = sock
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it stopped
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.005)

    async def serve_forever(self) -> None:
        """Run until the server exits (a signal, or :meth:`stop` from elsewhere)."""
        if self._task is None:
            await self.start()
        assert self._task is not None
        await self._task

    async def stop(self) -> None:
        """Stop accepting, close open connections, wait until done."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None
            if self._socket is not None:
                self._socket.close()

    async def __aenter__(self) -> AppServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
