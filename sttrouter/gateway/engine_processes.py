"""Engines in worker processes: the gateway's loop never waits for an engine's CPU work.

Some engines hold the GIL while they decode (pocketsphinx's ``process_raw`` does, for the
whole call), so running them in a thread still stalls the event loop: pongs, ``/health`` and
every other session wait. :class:`EngineProcesses` runs the engine of each session in one of
a fixed pool of worker processes (one per core by default) instead. The gateway's session
talks to it through :class:`ProcessService`, an ordinary :class:`~sttrouter.service.STTService`
that forwards audio in the engine's format and gets results back over a socket pair, with
flow control: a worker that falls behind stops reading, the gateway's writes wait, and its
session buffer fills, which stops reading the client's socket.

Messages are length-prefixed pickles: ``(op, session id, payload)``. A worker that dies fails
the streams it held (``StreamingFailed``); new sessions go to the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.endpoint import Location, STTEndpoint
from sttrouter.errors import StreamingFailed, STTError, UnsupportedOption
from sttrouter.gateway import protocol as gw
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult
from sttrouter.service import BaseSTTService, STTService

__all__ = ["EngineProcesses", "ProcessService"]

BackendMaker = Callable[[], Callable[[gw.StreamConfig], STTService]]
"""A picklable function (module level) that builds the backend inside a worker process."""

_HEADER = struct.Struct("!I")


def _pack(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
    message: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))
    return message


def _error_payload(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, UnsupportedOption):
        return ("unsupported", exc.option, exc.value, exc.endpoint_id)
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        return ("failed", f"{type(exc).__name__}: {exc}")
    return ("pickled", data)


def _error(payload: tuple[Any, ...]) -> STTError:
    kind = payload[0]
    if kind == "unsupported":
        return UnsupportedOption(payload[1], payload[2], endpoint_id=payload[3])
    if kind == "pickled":
        exc = pickle.loads(payload[1])
        if isinstance(exc, STTError):
            return exc
        return StreamingFailed(f"the engine failed: {type(exc).__name__}")
    return StreamingFailed(f"the engine failed: {payload[1]}")


# -- the worker process ---------------------------------------------------------------------------
def _worker_main(sock: socket.socket, make_backend: BackendMaker) -> None:
    asyncio.run(_worker(sock, make_backend))


async def _worker(sock: socket.socket, make_backend: BackendMaker) -> None:
    backend = make_backend()
    reader, writer = await asyncio.open_connection(sock=sock)
    services: dict[int, STTService] = {}
    pumps: dict[int, asyncio.Task[None]] = {}
    lock = asyncio.Lock()

    async def reply(*message: Any) -> None:
        async with lock:
            writer.write(_pack(message))
            await writer.drain()

    async def pump(sid: int, results: Any) -> None:
        try:
            async for r in results:
                await reply("result", sid, r)
        except STTError as exc:
            await reply("failed", sid, _error_payload(exc))

    async def start(sid: int, payload: Any) -> None:
        options, config = payload
        svc = backend(config)
        try:
            results = await svc.start_streaming(ENGINE_FORMAT, options)
        except Exception as exc:
            await reply("started", sid, _error_payload(exc))
            return
        services[sid] = svc
        pumps[sid] = asyncio.create_task(pump(sid, results))
        await reply("started", sid, None)

    async def probe(sid: int) -> None:
        try:
            await backend(gw.StreamConfig()).probe()
            await reply("probed", sid, None)
        except Exception as exc:
            await reply("probed", sid, _error_payload(exc))

    async def stop(sid: int) -> None:
        error = None
        svc = services.pop(sid, None)
        if svc is not None:
            try:
                await svc.stop_streaming()
            except Exception as exc:
                error = _error_payload(exc)
            with contextlib.suppress(BaseException):
                await pumps.pop(sid)
        await reply("stopped", sid, error)

    async def cancel(sid: int) -> None:
        svc = services.pop(sid, None)
        if svc is not None:
            await svc.cancel_streaming()
            task = pumps.pop(sid)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def handle(op: str, sid: int, payload: Any) -> None:
        svc = services.get(sid)
        if op == "audio":
            if svc is not None:
                with contextlib.suppress(STTError):  # the pump reports the stream's failure
                    await svc.send_audio(payload)
        elif op == "start":
            await start(sid, payload)
        elif op == "probe":
            await probe(sid)
        elif op == "finalize":
            if svc is not None:
                with contextlib.suppress(STTError):
                    await svc.finalize()
        elif op == "stop":
            await stop(sid)
        elif op == "cancel":
            await cancel(sid)

    try:
        while True:
            op, sid, payload = await _read(reader)
            await handle(op, sid, payload)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the gateway went away
    finally:
        for svc in services.values():
            with contextlib.suppress(Exception):
                await svc.cancel_streaming()
        writer.close()


# -- the gateway side -----------------------------------------------------------------------------
class _Worker:
    def __init__(self, process: Any, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()
        self.sessions: dict[int, ProcessService] = {}
        self.waiting: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self.task: asyncio.Task[None] | None = None
        self.dead = False

    async def connect(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(sock=self.sock)
            self.task = asyncio.get_running_loop().create_task(self._dispatch())

    async def send(self, *message: Any) -> None:
        if self.dead:
            raise StreamingFailed("the engine's worker process has died")
        await self.connect()
        assert self.writer is not None
        async with self.lock:
            self.writer.write(_pack(message))
            await self.writer.drain()

    async def call(self, op: str, answer: str, sid: int, payload: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[(answer, sid)] = future
        try:
            await self.send(op, sid, payload)
            return await future
        finally:
            self.waiting.pop((answer, sid), None)

    async def _dispatch(self) -> None:
        assert self.reader is not None
        try:
            while True:
                op, sid, payload = await _read(self.reader)
                if op == "result":
                    session = self.sessions.get(sid)
                    if session is not None:
                        await session.deliver(payload)
                elif op == "failed":
                    session = self.sessions.get(sid)
                    if session is not None:
                        session.engine_failed(_error(payload))
                else:
                    future = self.waiting.get((op, sid))
                    if future is not None and not future.done():
                        future.set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError, EOFError):
            pass
        self.dead = True
        failure = StreamingFailed("the engine's worker process has died")
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(failure)
        for session in list(self.sessions.values()):
            session.engine_failed(failure)

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        self.sock.close()
        self.process.join(timeout=5)
        if self.process.is_alive():  # pragma: no cover - a worker that ignores EOF
            self.process.kill()


class ProcessService(BaseSTTService):
    """One session's engine, running in a worker process of :class:`EngineProcesses`."""

    supported_options = frozenset({"language", "keywords", "prompt", "punctuate"})
    """The worker's engine decides: every option is forwarded, and refused there."""

    def __init__(self, pool: EngineProcesses, config: gw.StreamConfig) -> None:
        super().__init__(pool.endpoint)
        self.pool = pool
        self.config = config
        self.sid = next(pool.ids)
        self.worker: _Worker | None = None

    def check_options(self, options: StreamOptions) -> None:
        """The worker's engine checks the options when its stream starts."""

    async def probe(self) -> None:
        worker = self.pool.pick()
        error = await worker.call("probe", "probed", self.sid, None)
        if error is not None:
            raise _error(error)

    async def _open(self) -> None:
        worker = self.pool.pick()
        self.worker = worker
        worker.sessions[self.sid] = self
        error = await worker.call("start", "started", self.sid, (self.stream_options, self.config))
        if error is not None:
            del worker.sessions[self.sid]
            raise _error(error)

    async def _send(self, pcm: bytes) -> None:
        assert self.worker is not None
        await self.worker.send("audio", self.sid, pcm)

    async def _finalize(self) -> None:
        assert self.worker is not None
        await self.worker.send("finalize", self.sid, None)

    async def _finish(self) -> None:
        assert self.worker is not None
        try:
            error = await self.worker.call("stop", "stopped", self.sid, None)
        finally:
            self.worker.sessions.pop(self.sid, None)
        if error is not None:
            raise _error(error)

    async def _abort(self) -> None:
        worker = self.worker
        if worker is None or self.sid not in worker.sessions:
            return
        del worker.sessions[self.sid]
        with contextlib.suppress(STTError):
            await worker.send("cancel", self.sid, None)

    async def deliver(self, result: STTResult) -> None:
        await self._emit(result)

    def engine_failed(self, error: STTError) -> None:
        self._fail(error)


class EngineProcesses:
    """A backend whose sessions run in ``processes`` worker processes (least loaded first).

    Args:
        make_backend: a picklable, module-level function that builds the real backend;
            it runs in each worker process.
        processes: how many workers (one per core is the usual choice).
        endpoint: what the gateway-side services report as their endpoint.
    """

    def __init__(
        self, make_backend: BackendMaker, processes: int, endpoint: STTEndpoint | None = None
    ) -> None:
        if processes < 1:
            raise ValueError("EngineProcesses needs at least one process")
        self.endpoint = endpoint or STTEndpoint(
            id="engine-process",
            provider="offline",
            location=Location.ON_DEVICE,
            needs_network=False,
        )
        ctx = multiprocessing.get_context("spawn")
        self.ids = itertools.count(1)
        self.workers: list[_Worker] = []
        for i in range(processes):
            ours, theirs = socket.socketpair()
            proc = ctx.Process(
                target=_worker_main,
                args=(theirs, make_backend),
                name=f"sttrouter-engine-{i}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            self.workers.append(_Worker(proc, ours))

    def pick(self) -> _Worker:
        alive = [w for w in self.workers if not w.dead and w.process.is_alive()]
        if not alive:
            raise StreamingFailed("every engine worker process has died")
        return min(alive, key=lambda w: len(w.sessions))

    def __call__(self, config: gw.StreamConfig) -> STTService:
        return ProcessService(self, config)

    async def aclose(self) -> None:
        for worker in self.workers:
            await worker.aclose()
