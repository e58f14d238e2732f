"""A backend WebSocket relay: the phone streams audio in, transcripts stream back out.

One ``RoutingContext`` per process, one routed session per connection. The app's first message
says what the device is like; the relay asks the context for a session under those conditions
and relays audio through it, so a failing engine is replaced mid-sentence without losing audio
and without the app noticing more than a ``route`` message.

The context is built once, at start-up, because what one connection learns must protect the
others: every session it makes shares its circuit breakers (an engine that rejects our key for
one connection is skipped by the next one's decision), its health views, and its admission
limits (``max_concurrent_sessions`` counts streams across all connections, not per connection).

Protocol (JSON text frames, binary audio frames)::

    app -> relay   {"tier": "pro_max", "network": "connected", "thermal": "nominal",
                    "language": "en"}                        # first message; or "device" +
                                                             # "ram_gb" instead of "tier"
    relay -> app   {"type": "ready", "chain": ["glm-server", "deepgram", "offline"]}
    app -> relay   <binary: 16 kHz mono s16le PCM, any chunk size (100 ms recommended)>
    app -> relay   {"type": "conditions", "thermal": "serious"}   # any time: re-route at
                                                                  # the next utterance boundary
    relay -> app   {"type": "partial" | "final", "text": "...", "start": 1.2, "duration": 0.8,
                    "is_end_of_utterance": true, "endpoint": "glm-server"}
    relay -> app   {"type": "route", "kind": "failover", "endpoint": "deepgram",
                    "previous_endpoint": "glm-server", "reason": "..."}
    app -> relay   {"type": "end"}                 # flush: the last finals, then the relay closes
    relay -> app   {"type": "error", "message": "..."}   # then close 1011 (or 1008 for a bad hello)

Nothing here logs audio or text. Run it::

    python examples/relay_server.py --config examples/endpoints.toml --port 8765

Needs ``websockets`` (a core dependency) and the extras of the engines your registry uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from sttrouter import (
    ENGINE_FORMAT,
    Conditions,
    ConfigError,
    DeviceTier,
    NetworkStatus,
    Policy,
    RouteEvent,
    RoutingContext,
    STTError,
    STTResult,
    ThermalState,
    default_registry,
)
from sttrouter.panel import tier_for_apple_device

log = logging.getLogger("relay")

_HELLO_FIELDS = frozenset({"tier", "device", "ram_gb", "network", "thermal", "language"})


def conditions_from(data: Mapping[str, Any], base: Conditions | None = None) -> Conditions:
    """Conditions from a hello or ``conditions`` message; unset fields keep ``base``'s."""
    base = base or Conditions()
    unknown = sorted(set(data) - _HELLO_FIELDS - {"type"})
    if unknown:
        raise ConfigError(f"unknown field; use {sorted(_HELLO_FIELDS)}", field=unknown[0])
    try:
        if "device" in data:
            ram = data.get("ram_gb")
            tier = tier_for_apple_device(str(data["device"]), float(ram) if ram else None)
        else:
            tier = DeviceTier(data.get("tier", base.tier))
        return Conditions(
            tier=tier,
            network=NetworkStatus(data.get("network", base.network)),
            thermal=ThermalState(data.get("thermal", base.thermal)),
            memory_gb=base.memory_gb,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad device state: {exc}") from None


def result_message(r: STTResult) -> str:
    return json.dumps(
        {
            "type": "final" if r.is_final else "partial",
            "text": r.transcript,
            "start": round(r.start, 3),
            "duration": round(r.duration, 3),
            "is_end_of_utterance": r.is_end_of_utterance,
            "endpoint": r.endpoint_id,
        }
    )


def route_message(e: RouteEvent) -> str:
    return json.dumps(
        {
            "type": "route",
            "kind": e.kind.value,
            "endpoint": e.endpoint_id,
            "previous_endpoint": e.previous_endpoint_id,
            "reason": e.reason,
            "audio_time": round(e.audio_time, 3),
        }
    )


async def relay(ws: ServerConnection, context: RoutingContext) -> None:
    """Serve one app connection with a session of the process-wide ``context``."""
    try:
        hello = json.loads(await ws.recv())
        if not isinstance(hello, dict):
            raise ConfigError("the first message must be a JSON object with the device state")
        conditions = conditions_from(hello)
        language = hello.get("language")
    except (ConfigError, json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        await ws.send(json.dumps({"type": "error", "message": f"bad hello: {exc}"}))
        await ws.close(1008, "bad hello")
        return
    session = context.session(conditions, language=language if isinstance(language, str) else None)
    try:
        async with session.stream(ENGINE_FORMAT) as stream:
            await ws.send(json.dumps({"type": "ready", "chain": [e.id for e in session.chain]}))

            async def results_out() -> None:
                async for r in stream:
                    await ws.send(result_message(r))

            async def events_out() -> None:
                async for e in session.events():
                    await ws.send(route_message(e))

            async with asyncio.TaskGroup() as tg:
                out = tg.create_task(results_out())
                events = tg.create_task(events_out())
                async for msg in ws:
                    if isinstance(msg, bytes):
                        await stream.send(msg)
                        continue
                    control = json.loads(msg)
                    if control.get("type") == "end":
                        break
                    if control.get("type") == "conditions":
                        session.update_conditions(conditions_from(control, session.conditions))
                await stream.stop()
                await out
                events.cancel()
        await ws.close(1000, "done")
    except* STTError as group:
        error = group.exceptions[0]
        log.warning("session failed: %s", type(error).__name__)
        await _send_error(ws, str(error))
    except* (ConfigError, json.JSONDecodeError) as group:
        await _send_error(ws, str(group.exceptions[0]))
    except* ConnectionClosed:
        await session.cancel_streaming()  # the app went away: stop billing now


async def _send_error(ws: ServerConnection, message: str) -> None:
    try:
        await ws.send(json.dumps({"type": "error", "message": message}))
        await ws.close(1011, "transcription failed")
    except ConnectionClosed:
        pass


async def start(context: RoutingContext, host: str = "127.0.0.1", port: int = 0) -> Server:
    """Start the relay; ``port=0`` picks a free port (``server.sockets[0].getsockname()``)."""
    return await serve(lambda ws: relay(ws, context), host, port, max_size=2**20)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sttrouter WebSocket relay")
    parser.add_argument("--config", help="endpoint registry TOML (default: built-in)")
    parser.add_argument("--policy", help="policy TOML (default: built-in)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    # once per process: every connection's session shares its breakers, health and limits
    if args.config:
        context = RoutingContext.from_toml(args.config, policy=args.policy)
    else:
        policy = Policy.load(args.policy) if args.policy else None
        context = RoutingContext(default_registry(), policy=policy)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        server = await start(context, args.host, args.port)
        host, port = server.sockets[0].getsockname()[:2]
        print(f"relay listening on ws://{host}:{port}", flush=True)
        await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
