"""JSON message pieces the vendor wire modules share. Pure: no I/O.

Deepgram's and AssemblyAI's streaming protocols are both JSON objects tagged by ``type``:
reading one, reading a numeric field, the catch-all for types a newer server may send, and the
client's control messages are the same for both.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from sttrouter.errors import MalformedResponse

__all__ = ["ClientMessage", "Unknown", "load_object", "number", "parse_client_message"]


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
    """A numeric field (booleans refused), or ``default`` when absent and one is given."""
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedResponse(f"{vendor} message field {key!r} is {value!r}, not a number")
    return float(value)


def parse_client_message(text: str | bytes, vendor: str, known: Collection[str]) -> ClientMessage:
    """Parse a client control message; an unknown or missing ``type`` is malformed."""
    obj = load_object(text, f"{vendor} client message")
    kind = obj.get("type")
    if kind not in known:
        raise MalformedResponse(f"unknown {vendor} client message type {kind!r}")
    return ClientMessage(str(kind), {k: v for k, v in obj.items() if k != "type"})
