"""JSON message pieces the vendor wire modules share. Pure: no I/O.

Deepgram's and AssemblyAI's streaming protocols are both JSON objects tagged by ``type``:
reading one, reading a numeric field, the catch-all for types a newer server may send, and the
client's control messages are the same for both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from sttrouter.errors import MalformedResponse

__all__ = [
    "ClientMessage",
    "Unknown",
    "flag",
    "load_object",
    "number",
    "parse_client_message",
    "seconds",
]


@attrs.frozen
class Unknown:
    """A message whose ``type`` the wire module does not know (newer servers send more)."""

    type: str
    raw: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ClientMessage:
    """A client control message: its ``type`` and the other fields."""

    type: str
    fields: Mapping[str, Any] = attrs.field(factory=dict)


def load_object(data: str | bytes | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """Parse one JSON object (a mapping passes through); anything else is malformed."""
    if isinstance(data, Mapping):
        return data
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedResponse(f"{what} is not JSON: {str(data)[:80]!r}") from exc
    if not isinstance(obj, dict):
        raise MalformedResponse(f"{what} is not a JSON object: {str(data)[:80]!r}")
    return obj


def number(obj: Mapping[str, Any], key: str, vendor: str, default: float | None = None) -> float:
    """A finite numeric field (booleans refused), or ``default`` when absent and one is given.

    NaN and the infinities are malformed: an engine that sends them is broken, and the value
    would poison every sum and comparison downstream.
    """
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedResponse(f"{vendor} message field {key!r} is {value!r}, not a number")
    out = float(value)
    if not math.isfinite(out):
        raise MalformedResponse(f"{vendor} message field {key!r} is {value!r}, not finite")
    return out


def seconds(obj: Mapping[str, Any], key: str, vendor: str, default: float | None = None) -> float:
    """A time or a duration: a finite number that is not negative (``"duration": -50`` is
    malformed, not a result to deliver)."""
    out = number(obj, key, vendor, default)
    if out < 0:
        raise MalformedResponse(f"{vendor} message field {key!r} is {out!r}, a negative time")
    return out


def flag(obj: Mapping[str, Any], key: str, vendor: str, default: bool = False) -> bool:
    """A boolean field; absent (or null) is ``default``. Anything else — the string
    ``"false"``, a number — is malformed rather than guessed at (``bool("false")`` is true)."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise MalformedResponse(f"{vendor} message field {key!r} is {value!r}, not a boolean")
    return value


def parse_client_message(text: str | bytes, vendor: str, known: Collection[str]) -> ClientMessage:
    """Parse a client control message; an unknown or missing ``type`` is malformed."""
    obj = load_object(text, f"{vendor} client message")
    kind = obj.get("type")
    if kind not in known:
        raise MalformedResponse(f"unknown {vendor} client message type {kind!r}")
    return ClientMessage(str(kind), {k: v for k, v in obj.items() if k != "type"})
