"""Small helpers the cloud adapters share: URL schemes and WAV wrapping. Pure, no I/O."""

from __future__ import annotations

import io
import wave
from urllib.parse import urlsplit, urlunsplit

from sttrouter.audio import AudioConverter, AudioFormat, Encoding

__all__ = ["http_and_ws", "to_wav"]

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
