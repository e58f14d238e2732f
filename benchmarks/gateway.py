"""How many concurrent real-time sessions the gateway sustains, and the latency it adds.

Reports, in one run:

* (a) ``/health`` p99 while the offline engine is fully loaded (real-time sessions on every
  core);
* (b) server CPU per frame with the no-op engine against the bare ``websockets`` echo server
  at the same concurrency (and the ratio);
* (c) offline real-time sessions before the result p99 passes 1 s;
* (d) a client that sends a clip as fast as the socket takes it: frames dropped
  (``BUFFER_OVERFLOW``) and whether the transcript matches the real-time one.

Each session sends 100 ms PCM16 frames at real-time pace over ``/v1/audio/stream``. The gateway
runs in a subprocess (so it has a core of its own; the clients share the other one).

* no-op backend: the engine answers every frame at once with a partial naming the frame, so
  the round trip "frame sent → its partial received" is what the gateway (plus the socket and
  the client's own event loop) adds. Baseline, same run: a bare ``websockets`` echo server at
  the same concurrency, i.e. the cost of the socket and the client alone.
* offline backend: the built-in pocketsphinx engine on a committed speech clip (looped);
  latency is "the frame that ends a result was sent → the result arrived".

Run: ``.venv/bin/python benchmarks/gateway.py`` (about 2 minutes). ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FRAME = 3200  # 100 ms of 16 kHz PCM16
NOOP_PREFIX = '{"type":"partial","text":"'
P99_LIMIT_MS = 20.0


# -- server side (runs in the subprocess) ------------------------------------------------------
def _noop_backend() -> Any:
    from sttrouter.results import STTResult
    from sttrouter.service import BaseSTTService
    from sttrouter.testing import fake_endpoint

    class NoOp(BaseSTTService):
        """Answers each frame at once with a partial carrying the frame's number."""

        async def _open(self) -> None:
            self.n = 0

        async def _send(self, pcm: bytes) -> None:
            self.n += 1
            end = self.stream_seconds
            await self._emit(STTResult(str(self.n), False, start=max(0.0, end - 0.1), duration=0.1))

    endpoint = fake_endpoint("noop")
    return lambda config: NoOp(endpoint)


_SERVER_LAT: list[float] = []


def _instrument() -> None:
    """Inside the gateway process: time each frame from its arrival to its partial's send."""
    from sttrouter.gateway import protocol as gw
    from sttrouter.gateway import websocket as srv

    audio, send = srv._Session._audio, srv._Sender.send

    async def timed_audio(self: Any, pcm: bytes) -> None:
        self.sender.arrivals = getattr(self.sender, "arrivals", [])
        self.sender.arrivals.append(time.perf_counter())
        await audio(self, pcm)

    async def timed_send(self: Any, message: Any) -> None:
        await send(self, message)
        if isinstance(message, gw.Transcript) and message.text.isdigit():
            n = int(message.text)
            if n > 10:  # after the first second, like the client
                _SERVER_LAT.append(time.perf_counter() - self.arrivals[n - 1])

    srv._Session._audio = timed_audio  # type: ignore[method-assign]
    srv._Sender.send = timed_send  # type: ignore[method-assign]


async def _serve(kind: str, port: int) -> None:
    if kind == "echo":
        from websockets.asyncio.server import serve

        async def echo(ws: Any) -> None:
            async for msg in ws:
                await ws.send(msg if isinstance(msg, str) else str(len(msg)))

        async with serve(echo, "127.0.0.1", port, compression=None, max_queue=None):
            print("READY", flush=True)
            await asyncio.Future()
    from sttrouter.cli import build_parser
    from sttrouter.cli.serve import build_backend, build_config
    from sttrouter.gateway._runner import AppServer
    from sttrouter.gateway.server import GatewayConfig, GatewayServer

    if kind == "noop":
        backend = _noop_backend()
        _instrument()
    else:  # what `sttrouter serve --backend offline` runs: engines in worker processes
        import functools

        from sttrouter.cli.serve import engine_processes
        from sttrouter.gateway.engine_processes import EngineProcesses

        args = build_parser().parse_args(["serve", "--backend", kind])
        backend = EngineProcesses(
            functools.partial(build_backend, args), engine_processes(args) or 1
        )
    config = build_config(build_parser().parse_args(["serve", "--max-sessions", "5000"]), {})
    server = GatewayServer(backend, GatewayConfig(max_sessions=config.max_sessions))
    if kind == "noop":
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def stats(request: Any) -> Any:
            lat = sorted(_SERVER_LAT)
            _SERVER_LAT.clear()
            if not lat:
                return JSONResponse({"count": 0})
            pick = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
            return JSONResponse({"count": len(lat), "p50_ms": pick(0.5), "p99_ms": pick(0.99)})

        getattr(server.app, "app", server.app).router.routes.append(Route("/bench", stats))
    async with AppServer(server.app, port=port, backlog=4096):
        print("READY", flush=True)
        await asyncio.Future()


# -- client side -------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def server_process(kind: str) -> Any:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "READY" not in line:
        proc.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    try:
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _session(
    url: str,
    kind: str,
    pcm: bytes,
    seconds: float,
    warmup: float,
    lat: list[float],
    errors: list[str],
) -> None:
    from websockets.asyncio.client import connect

    from sttrouter.gateway import protocol as gw

    frames = max(1, int(seconds / 0.1))
    sent: dict[int, float] = {}  # frame number (1-based) -> send time
    start_measure = warmup / 0.1
    try:
        path = "" if kind == "echo" else "/v1/audio/stream"
        async with connect(url + path, compression=None, max_queue=None, open_timeout=60) as ws:
            if kind != "echo":
                await ws.send(gw.serialize(gw.Start()))
            await asyncio.sleep(random.random() * 0.1)  # spread the sessions' phases

            async def reader() -> None:
                replies = 0
                async for raw in ws:
                    now = time.perf_counter()
                    if kind == "echo":
                        replies += 1  # the echo answers frame k with its k-th reply
                        if replies > start_measure and replies in sent:
                            lat.append(now - sent[replies])
                        continue
                    if kind == "noop" and isinstance(raw, str) and raw.startswith(NOOP_PREFIX):
                        # the client's own cost is the bottleneck: read the frame number
                        # without a full JSON parse (the format is ours and fixed)
                        n = int(raw[len(NOOP_PREFIX) : raw.index('"', len(NOOP_PREFIX))])
                        if n > start_measure and n in sent:
                            lat.append(now - sent[n])
                        continue
                    msg = gw.parse_server(raw)
                    if isinstance(msg, gw.ErrorMessage):
                        errors.append(str(msg.code))
                        continue
                    assert isinstance(msg, gw.Transcript)
                    n = (
                        int(msg.text)
                        if kind == "noop"
                        else -(-(msg.timestamp_ms + msg.duration_ms) // 100)
                    )
                    n = min(max(n, 1), len(sent))
                    if n > start_measure and n in sent:
                        lat.append(now - sent[n])

            task = asyncio.create_task(reader())
            t0 = time.perf_counter()
            for i in range(frames):
                delay = t0 + i * 0.1 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                off = (i * FRAME) % len(pcm)
                frame = (pcm[off:] + pcm)[:FRAME]
                sent[i + 1] = time.perf_counter()
                await ws.send(frame)
            if kind == "echo":
                await asyncio.sleep(0.2)
                task.cancel()
            else:
                await ws.send(gw.serialize(gw.End()))
                await asyncio.wait_for(task, 60)
    except Exception as exc:  # a refused or dropped session counts as a failure
        errors.append(type(exc).__name__)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process and its live children (the engine worker
    processes) have used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += _cpu_seconds(int(child))
    return total


async def run_level(
    server: tuple[str, int], kind: str, sessions: int, seconds: float, pcm: bytes
) -> dict[str, Any]:
    url, pid = server
    lat: list[float] = []
    errors: list[str] = []
    cpu0 = _cpu_seconds(pid)
    await asyncio.gather(
        *(_session(url, kind, pcm, seconds, 1.0, lat, errors) for _ in range(sessions))
    )
    cpu = _cpu_seconds(pid) - cpu0
    frames = sessions * max(1, int(seconds / 0.1))
    lat.sort()
    p = (
        (lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))])
        if lat
        else (lambda q: float("nan"))
    )
    return {
        "sessions": sessions,
        "samples": len(lat),
        "p50_ms": p(0.5),
        "p99_ms": p(0.99),
        "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
        "errors": len(errors),
        "cpu_us_per_frame": 1e6 * cpu / frames,
        "server_cpu_share": cpu / seconds,
    }


async def health_under_load(
    server: tuple[str, int], sessions: int, seconds: float, pcm: bytes
) -> dict[str, Any]:
    """(a): poll ``/health`` every 50 ms while ``sessions`` real-time offline streams run."""
    import httpx

    url = server[0].replace("ws://", "http://") + "/health"
    times: list[float] = []
    done = asyncio.Event()

    async def poll() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not done.is_set():
                t = time.perf_counter()
                r = await client.get(url)
                assert r.status_code == 200
                times.append(time.perf_counter() - t)
                await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    load = await run_level(server, "offline", sessions, seconds, pcm)
    done.set()
    await poller
    times.sort()
    pick = lambda q: 1000 * times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return {"probes": len(times), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": 1000 * times[-1], "load": load}  # fmt: skip


async def fast_client(url: str, pcm: bytes) -> dict[str, Any]:
    """(d): one session that sends ``pcm`` in 100 ms frames without pacing."""
    from websockets.asyncio.client import connect

    from sttrouter.gateway import protocol as gw

    errors: list[str] = []
    finals: list[str] = []
    t0 = time.perf_counter()
    async with connect(url + "/v1/audio/stream", compression=None, max_queue=None) as ws:
        await ws.send(gw.serialize(gw.Start(gw.StreamConfig(interim_results=False))))

        async def reader() -> None:
            async for raw in ws:
                msg = gw.parse_server(raw)
                if isinstance(msg, gw.ErrorMessage):
                    errors.append(str(msg.code))
                elif isinstance(msg, gw.Transcript) and msg.is_final and msg.text:
                    finals.append(msg.text)

        task = asyncio.create_task(reader())
        for off in range(0, len(pcm), FRAME):
            await ws.send(pcm[off : off + FRAME])
        sent = time.perf_counter() - t0
        await ws.send(gw.serialize(gw.End()))
        await asyncio.wait_for(task, 300)
    return {
        "audio_s": len(pcm) / 32000,
        "send_s": sent,
        "total_s": time.perf_counter() - t0,
        "dropped": errors.count("BUFFER_OVERFLOW"),
        "errors": len(errors),
        "words": len(" ".join(finals).split()),
    }


async def _server_stats(ws_url: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as client:
        resp = await client.get(ws_url.replace("ws://", "http://") + "/bench")
        data: dict[str, Any] = resp.json()
        return data


def _speech() -> bytes:
    from sttrouter.audio import read_audio

    data, fmt = read_audio(ROOT / "examples" / "audio" / "long_16k.wav")
    assert fmt.sample_rate == 16000
    assert fmt.channels == 1
    return data


def _row(kind: str, r: dict[str, Any]) -> str:
    return (
        f"| {kind} | {r['sessions']} | {r['samples']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
        f"{r['cpu_us_per_frame']:.0f} | {r['server_cpu_share']:.2f} | {r['errors']} |"
    )


async def main(quick: bool) -> None:
    silence_pcm = bytes(FRAME * 10)
    speech = _speech()
    cores = os.cpu_count() or 1
    seconds = 3.0 if quick else 6.0
    levels = [50, 100] if quick else [100, 250, 500, 750, 1000]
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {cores} cores")

    print("\n(a) /health under full engine load (offline engine, real-time sessions)")
    with server_process("offline") as srv:
        busy = max(2, cores)
        h = await health_under_load(srv, busy, 8.0 if quick else 15.0, speech)
    print(
        f"{busy} sessions ({h['load']['server_cpu_share']:.2f} server cores busy): /health "
        f"p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, max {h['max_ms']:.1f} ms over "
        f"{h['probes']} probes (goal p99 <= 50 ms)"
    )

    print("\n(b) server CPU per frame: gateway with the no-op engine vs bare websockets echo")
    print(
        "| backend | sessions | samples | p50 ms | p99 ms | server CPU µs/frame "
        "| server cores busy | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    sustained = 0
    for level in levels:
        with server_process("echo") as srv:
            base = await run_level(srv, "echo", level, seconds, silence_pcm)
        print(_row("bare websockets echo (baseline)", base), flush=True)
        with server_process("noop") as srv:
            r = await run_level(srv, "noop", level, seconds, silence_pcm)
            inside = await _server_stats(srv[0])
        print(_row("gateway, no-op engine", r), flush=True)
        print(
            f"|   … measured inside the gateway (frame in → its partial written) | {level} | "
            f"{inside.get('count', 0)} | {inside.get('p50_ms', float('nan')):.1f} | "
            f"{inside.get('p99_ms', float('nan')):.1f} | | | |",
            flush=True,
        )
        ratios.append((level, r["cpu_us_per_frame"] / base["cpu_us_per_frame"]))
        if r["p99_ms"] <= P99_LIMIT_MS and r["errors"] == 0:
            sustained = max(sustained, level)
    print(
        "CPU per frame, gateway / echo: "
        + ", ".join(f"{x:.2f}x at {n}" for n, x in ratios)
        + " (goal <= 1.2x)"
    )
    print(f"no-op engine: {sustained} real-time sessions with p99 <= {P99_LIMIT_MS:g} ms")

    print("\n(c) offline real-time sessions before result p99 > 1 s")
    offline_levels = [1, 2] if quick else [1, 2, 3, 4, 6, 8]
    ok_offline = 0
    with server_process("offline") as srv:
        for level in offline_levels:
            r = await run_level(srv, "offline", level, 8.0 if quick else 12.0, speech)
            print(_row("gateway, offline engine (pocketsphinx)", r), flush=True)
            if r["errors"] == 0 and r["p99_ms"] <= 1000:
                ok_offline = level
            else:
                break
    print(
        f"offline engine: {ok_offline} concurrent real-time sessions with result p99 <= 1 s "
        f"({ok_offline / cores:.1f} per core)"
    )

    print("\n(d) a client faster than real time (offline engine)")
    clip = speech[: 32000 * (20 if quick else 60)]
    with server_process("offline") as srv:
        d = await fast_client(srv[0], clip)
    print(
        f"{d['audio_s']:.0f} s of audio sent in {d['send_s']:.1f} s, transcribed in "
        f"{d['total_s']:.1f} s: {d['dropped']} frames dropped (goal 0), {d['errors']} errors, "
        f"{d['words']} words"
    )
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", choices=["echo", "noop", "offline"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.port))
    else:
        asyncio.run(main(args.quick))
