"""A decision service: the app backend tells the phone which speech engine to use.

``POST /decide`` with the device's state as JSON; the answer is sttrouter's ``Decision``: the
ordered chain of endpoints to try and, for every endpoint left out, why::

    $ python examples/decision_service.py --port 8080 &
    $ curl -s localhost:8080/decide -d '{"device": "iPhone18,2", "ram_gb": 12,
    >      "network": "connected", "thermal": "serious", "language": "en"}'
    {"conditions": {"tier": "ultra", ...}, "chain": ["glm-server", "deepgram", ...],
     "verdicts": [{"endpoint": "glm-local", "rank": null, "reason": "too_hot", ...}, ...]}

Request fields (all optional): ``tier`` (or ``device`` + ``ram_gb`` to detect it), ``network``,
``thermal``, ``memory_gb``, ``language``, ``streaming``. A bad value is answered with 400 and a
message naming the field. Deciding is pure and memoised, so the service answers in
microseconds; API keys are checked for presence in this server's environment only.

Run it: ``python examples/decision_service.py [--config endpoints.toml] [--policy policy.toml]
[--host 127.0.0.1] [--port 8080]`` (needs the ``server`` extra: starlette, uvicorn).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sttrouter import (
    Conditions,
    ConfigError,
    DeviceTier,
    EndpointRegistry,
    NetworkStatus,
    Policy,
    Router,
    ThermalState,
    default_registry,
)
from sttrouter.panel import tier_for_apple_device

_FIELDS = frozenset(
    {"tier", "device", "ram_gb", "network", "thermal", "memory_gb", "language", "streaming"}
)


def _enum(kind: Any, data: Mapping[str, Any], field: str, default: Any) -> Any:
    value = data.get(field, default)
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ConfigError(f"{value!r} is not one of {choices}", field=field) from None


def _number(data: Mapping[str, Any], field: str) -> float | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{value!r} must be a number >= 0", field=field)
    return float(value)


def conditions_from_request(data: Mapping[str, Any]) -> tuple[Conditions, str | None, bool]:
    """Conditions, language and streaming from a request body; ConfigError names the field."""
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown field; use {sorted(_FIELDS)}", field=unknown[0])
    ram_gb = _number(data, "ram_gb")
    if "device" in data:
        if "tier" in data:
            raise ConfigError("give either tier or device, not both", field="device")
        if not isinstance(data["device"], str):
            raise ConfigError("must be an Apple identifier such as 'iPhone18,2'", field="device")
        tier = tier_for_apple_device(data["device"], ram_gb)
    else:
        tier = _enum(DeviceTier, data, "tier", DeviceTier.PRO_MAX)
    conditions = Conditions(
        tier=tier,
        network=_enum(NetworkStatus, data, "network", NetworkStatus.CONNECTED),
        thermal=_enum(ThermalState, data, "thermal", ThermalState.NOMINAL),
        memory_gb=_number(data, "memory_gb"),
    )
    language = data.get("language")
    if language is not None and not isinstance(language, str):
        raise ConfigError("must be a BCP-47 code such as 'en' or 'zh-CN'", field="language")
    streaming = data.get("streaming", True)
    if not isinstance(streaming, bool):
        raise ConfigError("must be true or false", field="streaming")
    return conditions, language, streaming


def create_app(router: Router, environ: Mapping[str, str] | None = None) -> Starlette:
    """The ASGI app: ``POST /decide`` and ``GET /healthz``."""

    async def decide(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as exc:
            return JSONResponse({"error": f"body is not JSON: {exc.msg}"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        try:
            conditions, language, streaming = conditions_from_request(body)
        except ConfigError as exc:
            return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)
        decision = router.decide(
            conditions, language=language, streaming=streaming, environ=environ
        )
        return JSONResponse(decision.to_dict())

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "endpoints": [e.id for e in router.registry]})

    return Starlette(
        routes=[Route("/decide", decide, methods=["POST"]), Route("/healthz", healthz)]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sttrouter decision service: POST /decide")
    parser.add_argument("--config", help="endpoint registry TOML (default: built-in)")
    parser.add_argument("--policy", help="policy TOML (default: built-in)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    args = parser.parse_args(argv)
    registry = EndpointRegistry.load(args.config) if args.config else default_registry()
    router = Router(registry, Policy.load(args.policy) if args.policy else None)

    import uvicorn

    uvicorn.run(create_app(router), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
