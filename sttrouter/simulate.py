"""Session traces and the decisions a router makes along them.

A trace (TOML) describes one session: its length, the starting conditions, timed condition
changes, and faults to inject. Here the decisions are replayed (which chain, and why, for each
stretch of constant conditions); executing the faults against a routed session is the job of
the session simulator built on top of :func:`decision_timeline`.

Trace format::

    name = "90-minute tutoring session"
    duration = "90m"               # "1h30m", "5400", "1:30:00" or a number of seconds
    language = "en"                # optional
    streaming = true               # optional, default true

    [initial]
    tier = "ultra"                 # or device = "iPhone18,2" (+ ram_gb = 12) to detect it
    network = "connected"
    thermal = "nominal"
    # memory_gb = 6

    [[change]]
    at = "40m"
    thermal = "serious"
    note = "device heats up"       # optional, shown in the output

    [[fault]]                      # parsed and reported; executed by the routed session
    endpoint = "glm-server"        # an endpoint, one replica of a pool ("glm#2"), or a pool
                                   # ("glm": every replica at once)
    kind = "outage"                # outage | stall | latency
    at = "50m"
    duration = "3m"                # optional: until the end of the session
    seconds = 0.8                  # latency: added seconds (required); stall: silence after
                                   # that many seconds of a stream (optional)

Times are seconds from the session start.
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.panel import _toml
from sttrouter.panel.device import (
    Conditions,
    DeviceTier,
    NetworkStatus,
    ThermalState,
    tier_for_apple_device,
)
from sttrouter.panel.registry import EndpointRegistry
from sttrouter.panel.router import Decision, HealthView, Router

__all__ = [
    "ConditionChange",
    "FaultSpec",
    "FaultType",
    "Trace",
    "decision_timeline",
    "format_time",
    "parse_duration",
]

_UNIT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: Any, *, field: str = "duration", source: str | None = None) -> float:
    """Seconds from ``90``, ``"90m"``, ``"1h30m"``, ``"2m30s"``, ``"250ms"`` or ``"1:30:00"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        parsed = _parse_text(text)
        if parsed is None:
            raise ConfigError(
                f'{value!r} is not a duration; write seconds (90), units ("40m", '
                '"1h30m", "2m30s") or a clock ("1:30:00")',
                source=source,
                field=field,
            )
        seconds = parsed
    else:
        raise ConfigError(f"{value!r} is not a duration", source=source, field=field)
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"{value!r} must be a finite time >= 0", source=source, field=field)
    return seconds


def _parse_text(text: str) -> float | None:
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}(\.\d+)?", text):
        total = 0.0
        for part in text.split(":"):
            total = total * 60 + float(part)
        return total
    pos = 0
    total = 0.0
    for m in _UNIT_RE.finditer(text):
        if text[pos : m.start()].strip():
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        return None
    return total


def format_time(seconds: float) -> str:
    """``5400`` → ``"1:30:00"``, ``75.5`` → ``"1:15.5"``."""
    whole = int(seconds)
    frac = seconds - whole
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    tail = f"{s:02d}" + (f"{frac:.3f}"[1:].rstrip("0") if frac > 1e-9 else "")
    return f"{h}:{m:02d}:{tail}" if h else f"{m}:{tail}"


class FaultType(enum.StrEnum):
    """What a declared fault does to its endpoint."""

    OUTAGE = "outage"
    """Connections are refused / the endpoint is down."""
    STALL = "stall"
    """Audio is accepted, no result comes back."""
    LATENCY = "latency"
    """Results come back ``seconds`` late."""


@attrs.frozen
class ConditionChange:
    """At ``at`` seconds, the fields that are not ``None`` change."""

    at: float
    tier: DeviceTier | None = None
    network: NetworkStatus | None = None
    thermal: ThermalState | None = None
    memory_gb: float | None = None
    note: str = ""

    def apply(self, c: Conditions) -> Conditions:
        changes: dict[str, Any] = {}
        for name in ("tier", "network", "thermal", "memory_gb"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = value
        return attrs.evolve(c, **changes)


@attrs.frozen
class FaultSpec:
    """A fault the session simulator injects into one endpoint.

    Attributes:
        endpoint: the endpoint id.
        kind: outage, stall or latency.
        at: start, seconds from the session start.
        duration: how long it lasts; ``None`` until the end of the session.
        seconds: latency: the added delay; stall: seconds of stream before it goes silent.
    """

    endpoint: str
    kind: FaultType
    at: float
    duration: float | None = None
    seconds: float | None = None

    def end(self, session_end: float) -> float:
        return session_end if self.duration is None else min(session_end, self.at + self.duration)

    def overlaps(self, start: float, end: float, session_end: float) -> bool:
        return self.at < end and self.end(session_end) > start

    def describe(self, session_end: float) -> str:
        span = "until the end" if self.duration is None else f"for {format_time(self.duration)}"
        extra = "" if self.seconds is None else f" ({self.seconds:g} s)"
        return f"{self.endpoint} {self.kind.value}{extra} at {format_time(self.at)} {span}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "kind": self.kind.value,
            "at": self.at,
            "duration": self.duration,
            "seconds": self.seconds,
        }


@attrs.frozen
class Trace:
    """A parsed session trace. Build with :meth:`load`, :meth:`loads` or :meth:`from_dict`."""

    name: str
    duration: float
    initial: Conditions
    changes: tuple[ConditionChange, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    language: str | None = None
    streaming: bool = True
    source: str = "<dict>"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        data, source = _toml.load_file(path)
        return cls.from_dict(data, source=source)

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> Trace:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=source) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Trace:
        return _trace_from_dict(data, source)

    def intervals(self) -> list[tuple[float, float, Conditions, tuple[str, ...]]]:
        """Stretches of constant conditions: ``(start, end, conditions, notes of the changes
        that started it)``. Changes at the same time are applied in file order."""
        out: list[tuple[float, float, Conditions, tuple[str, ...]]] = []
        current = self.initial
        start = 0.0
        notes: list[str] = []
        for change in self.changes:
            if change.at > start:
                out.append((start, change.at, current, tuple(notes)))
                start, notes = change.at, []
            current = change.apply(current)
            if change.note:
                notes.append(change.note)
        if self.duration > start or not out:
            out.append((start, self.duration, current, tuple(notes)))
        return out

    def conditions_at(self, t: float) -> Conditions:
        current = self.initial
        for change in self.changes:
            if change.at > t:
                break
            current = change.apply(current)
        return current

    def faults_during(self, start: float, end: float) -> tuple[FaultSpec, ...]:
        return tuple(f for f in self.faults if f.overlaps(start, end, self.duration))

    def faults_for(self, endpoint: STTEndpoint) -> tuple[FaultSpec, ...]:
        """The faults that hit ``endpoint``: those naming it, and those naming its pool (an
        outage of every replica at once)."""
        return tuple(
            f
            for f in self.faults
            if f.endpoint == endpoint.id
            or (endpoint.pool is not None and f.endpoint == endpoint.pool)
        )

    def check_endpoints(self, registry: EndpointRegistry) -> None:
        """Raise :class:`ConfigError` if a fault names neither a registered endpoint nor a
        pool."""
        pools = {ep.pool for ep in registry if ep.pool is not None}
        for i, fault in enumerate(self.faults):
            if fault.endpoint not in registry and fault.endpoint not in pools:
                known = ", ".join(ep.id for ep in registry)
                raise ConfigError(
                    f"fault[{i}] names an endpoint that is not registered (known: {known})",
                    source=self.source,
                    endpoint=fault.endpoint,
                    field=f"fault[{i}].endpoint",
                )


def _check_keys(item: Mapping[str, Any], allowed: frozenset[str], source: str, where: str) -> None:
    for key in item:
        if key not in allowed:
            raise ConfigError(
                f"unknown key (known: {', '.join(sorted(allowed))})",
                source=source,
                field=f"{where}.{key}" if where else key,
            )


def _enum(enum_type: type[Any], value: Any, source: str, field: str) -> Any:
    if value is None:
        return None
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(m.value for m in enum_type)
        raise ConfigError(
            f"{value!r} is not one of {choices}", source=source, field=field
        ) from None


def _number(value: Any, source: str, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"must be a number >= 0, got {value!r}", source=source, field=field)
    return float(value)


_TOP = frozenset({"name", "duration", "language", "streaming", "initial", "change", "fault"})
_INITIAL = frozenset({"tier", "network", "thermal", "memory_gb", "device", "ram_gb"})
_CHANGE = frozenset({"at", "tier", "network", "thermal", "memory_gb", "note"})
_FAULT = frozenset({"endpoint", "kind", "at", "duration", "seconds"})


def _table_list(data: Mapping[str, Any], key: str, source: str) -> list[Mapping[str, Any]]:
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise ConfigError(f"write each entry as a [[{key}]] table", source=source, field=key)
    return items


def _trace_from_dict(data: Mapping[str, Any], source: str) -> Trace:
    _check_keys(data, _TOP, source, "")
    if "duration" not in data:
        raise ConfigError("a trace needs a session duration", source=source, field="duration")
    duration = parse_duration(data["duration"], field="duration", source=source)
    if duration <= 0:
        raise ConfigError("the session must last longer than 0 s", source=source, field="duration")
    language = data.get("language")
    if language is not None and not isinstance(language, str):
        raise ConfigError("must be a string", source=source, field="language")
    streaming = data.get("streaming", True)
    if not isinstance(streaming, bool):
        raise ConfigError("must be true or false", source=source, field="streaming")
    init = data.get("initial", {})
    if not isinstance(init, Mapping):
        raise ConfigError("write [initial] as a table", source=source, field="initial")
    _check_keys(init, _INITIAL, source, "initial")
    tier = _enum(DeviceTier, init.get("tier"), source, "initial.tier")
    if tier is None and "device" in init:
        if not isinstance(init["device"], str):
            raise ConfigError("must be a string", source=source, field="initial.device")
        tier = tier_for_apple_device(
            init["device"], _number(init.get("ram_gb"), source, "initial.ram_gb")
        )
    initial = Conditions(
        tier=tier or DeviceTier.PRO_MAX,
        network=_enum(NetworkStatus, init.get("network"), source, "initial.network")
        or NetworkStatus.CONNECTED,
        thermal=_enum(ThermalState, init.get("thermal"), source, "initial.thermal")
        or ThermalState.NOMINAL,
        memory_gb=_number(init.get("memory_gb"), source, "initial.memory_gb"),
    )
    changes = []
    for i, item in enumerate(_table_list(data, "change", source)):
        where = f"change[{i}]"
        _check_keys(item, _CHANGE, source, where)
        if "at" not in item:
            raise ConfigError("every change needs at", source=source, field=f"{where}.at")
        at = parse_duration(item["at"], field=f"{where}.at", source=source)
        if at > duration:
            raise ConfigError(
                f"at {format_time(at)} is after the session ends ({format_time(duration)})",
                source=source,
                field=f"{where}.at",
            )
        note = item.get("note", "")
        if not isinstance(note, str):
            raise ConfigError("must be a string", source=source, field=f"{where}.note")
        change = ConditionChange(
            at=at,
            tier=_enum(DeviceTier, item.get("tier"), source, f"{where}.tier"),
            network=_enum(NetworkStatus, item.get("network"), source, f"{where}.network"),
            thermal=_enum(ThermalState, item.get("thermal"), source, f"{where}.thermal"),
            memory_gb=_number(item.get("memory_gb"), source, f"{where}.memory_gb"),
            note=note,
        )
        changes.append(change)
    changes.sort(key=lambda c: c.at)  # stable: same-time changes keep file order
    faults = [
        _fault(item, i, duration, source)
        for i, item in enumerate(_table_list(data, "fault", source))
    ]
    name = data.get("name", os.path.basename(source))
    return Trace(
        name=str(name),
        duration=duration,
        initial=initial,
        changes=tuple(changes),
        faults=tuple(faults),
        language=language,
        streaming=streaming,
        source=source,
    )


def _fault(item: Mapping[str, Any], i: int, duration: float, source: str) -> FaultSpec:
    where = f"fault[{i}]"
    _check_keys(item, _FAULT, source, where)
    endpoint = item.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise ConfigError(
            "every fault needs an endpoint id", source=source, field=f"{where}.endpoint"
        )
    if "kind" not in item:
        raise ConfigError(
            "every fault needs a kind: outage, stall or latency",
            source=source,
            endpoint=endpoint,
            field=f"{where}.kind",
        )
    kind = _enum(FaultType, item["kind"], source, f"{where}.kind")
    at = parse_duration(item.get("at", 0), field=f"{where}.at", source=source)
    if at >= duration:
        raise ConfigError(
            f"starts at {format_time(at)}, not before the session ends ({format_time(duration)})",
            source=source,
            endpoint=endpoint,
            field=f"{where}.at",
        )
    length = None
    if "duration" in item:
        length = parse_duration(item["duration"], field=f"{where}.duration", source=source)
        if length <= 0:
            raise ConfigError(
                "must be longer than 0 s",
                source=source,
                endpoint=endpoint,
                field=f"{where}.duration",
            )
    seconds = _number(item.get("seconds"), source, f"{where}.seconds")
    if kind is FaultType.LATENCY and not seconds:
        raise ConfigError(
            "a latency fault needs seconds = <added delay>",
            source=source,
            endpoint=endpoint,
            field=f"{where}.seconds",
        )
    if kind is FaultType.OUTAGE and seconds is not None:
        raise ConfigError(
            "an outage takes no seconds; give its length with duration",
            source=source,
            endpoint=endpoint,
            field=f"{where}.seconds",
        )
    return FaultSpec(endpoint, kind, at, length, seconds)


def decision_timeline(
    trace: Trace,
    router: Router,
    *,
    health: HealthView | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[tuple[float, float, Decision]]:
    """The router's decision for each stretch of constant conditions of ``trace``.

    Returns:
        ``[(start, end, decision), ...]`` covering ``0 .. trace.duration`` without gaps.
    """
    return [
        (
            start,
            end,
            router.decide(
                conditions,
                language=trace.language,
                streaming=trace.streaming,
                health=health,
                environ=environ,
            ),
        )
        for start, end, conditions, _notes in trace.intervals()
    ]
