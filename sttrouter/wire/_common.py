"""Small helpers the cloud adapters share: option readers, URL schemes, WAV wrapping.

Pure, no I/O. Option readers raise :class:`~sttrouter.errors.ConfigError` naming the option
and the bad value.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sttrouter.audio import AudioConverter, AudioFormat, Encoding
from sttrouter.errors import ConfigError

__all__ = ["as_bool", "as_int", "http_and_ws", "positive_number", "to_wav"]


def as_bool(name: str, value: Any) -> bool:
    """``True``/``False`` or the strings ``true``/``false`` (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"option {name} must be true or false, got {value!r}", field=name)


def as_int(name: str, value: Any) -> int:
    """A non-negative integer (or its string)."""
    if isinstance(value, bool):
        raise ConfigError(f"option {name} must be an integer, got {value!r}", field=name)
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name} must be an integer, got {value!r}", field=name) from None
    if out < 0:
        raise ConfigError(f"option {name} must not be negative, got {out}", field=name)
    return out


def positive_number(options: Mapping[str, Any], name: str, default: float) -> float:
    """``options[name]`` as a positive float (``default`` when absent)."""
    value = options.get(name, default)
    if isinstance(value, bool):
        raise ConfigError(f"option {name} must be a number, got {value!r}", field=name)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name} must be a number, got {value!r}", field=name) from None
    if not out > 0:
        raise ConfigError(f"option {name} must be positive, got {out}", field=name)
    return out


_WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def http_and_ws(base_url: str) -> tuple[str, str]:
    """``(http_root, ws_root)`` for a base URL given with either scheme, no trailing slash."""
    parts = urlsplit(base_url.rstrip("/"))
    http = urlunsplit((_HTTP[parts.scheme], parts.netloc, parts.path, "", ""))
    ws = urlunsplit((_WS[parts.scheme], parts.netloc, parts.path, "", ""))
    return http, ws


def to_wav(data: bytes, fmt: AudioFormat) -> bytes:
    """Wrap raw PCM in a WAV container (float PCM is converted to 16-bit first)."""
    if fmt.encoding is not Encoding.PCM_S16LE:
        target = AudioFormat(fmt.sample_rate, fmt.channels, Encoding.PCM_S16LE)
        data = AudioConverter(fmt, target).convert(data)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(fmt.channels)
        w.setsampwidth(2)
        w.setframerate(fmt.sample_rate)
        w.writeframes(data)
    return buf.getvalue()
