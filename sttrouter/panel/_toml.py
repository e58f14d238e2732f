"""Read TOML config files with errors that name the file, and write the small TOML subset our
configs use (``tomllib`` only reads).

The writer handles tables, arrays of tables, strings, booleans, integers, floats, ``Decimal``
(written as a string, so no precision is lost) and arrays of scalars. That is all an endpoint,
policy or trace file holds.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from sttrouter.errors import ConfigError

__all__ = ["dumps", "load_file"]


def load_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; return ``(data, source)`` where ``source`` names the file in errors."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            return tomllib.load(f), source
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=source) from None


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _str(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE.match(key) else _str(key)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, Decimal):
        return _str(str(value))
    if isinstance(value, str):
        return _str(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(isinstance(v, Mapping) for v in value)
    )


def _table(path: tuple[str, ...], data: Mapping[str, Any], out: list[str]) -> None:
    tables = []
    for key, value in data.items():
        if _is_table(value) or _is_table_array(value):
            tables.append((key, value))
        elif value is not None:
            out.append(f"{_key(key)} = {_scalar(value)}")
    for key, value in tables:
        sub = (*path, _key(key))
        if _is_table(value):
            out.append("")
            out.append(f"[{'.'.join(sub)}]")
            _table(sub, value, out)
        else:
            for item in value:
                out.append("")
                out.append(f"[[{'.'.join(sub)}]]")
                _table(sub, item, out)


def dumps(data: Mapping[str, Any], *, header: str = "") -> str:
    """Serialise ``data`` as TOML. ``None`` values are left out (TOML has no null)."""
    out: list[str] = [f"# {line}".rstrip() for line in header.splitlines()]
    _table((), data, out)
    return "\n".join(out).lstrip("\n") + "\n"
