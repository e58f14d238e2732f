"""Routing policy as data: ordered rules, first match wins.

A :class:`Rule` matches on sets of device tiers, network states and thermal states (``None``
matches any) and, with ``budget_below``, on the share of the session's budget that is left
(``budget_below = 0.2``: less than 20 % left; a session without a budget never matches such a
rule), and yields an ordered preference of *selectors*, plus selectors to exclude.

Selectors, resolved against a registry when a router compiles the policy:

=====================  ==========================================================================
``"<endpoint id>"``    that endpoint (an exact id always wins over the forms below); a pool's
                       id names all its replicas
``"provider:<kind>"``  every endpoint of that provider kind (``provider:deepgram``)
``"location:<loc>"``   every endpoint at that location (``location:on_device``)
``"<kind>"``           a plain provider kind, when no endpoint has that id
``"<location>"``       a plain location name, when it is neither an id nor a kind
``"*"``                every endpoint not named so far
=====================  ==========================================================================

When a selector matches several endpoints they are ordered by :func:`tie_break_key`: cheapest
first, then lowest expected latency, then highest reliability, then registration order. An
endpoint selected twice keeps its first place. A selector that matches nothing is not an
error (one policy serves many registries).

Endpoints the chosen rule does not name are *appended* after the preferred ones (in tie-break
order) when ``Policy.unlisted`` is ``"append"`` (the default), or left out with reason
``not_in_policy`` when it is ``"exclude"``. Endpoints matched by the rule's ``exclude``
selectors are always left out with ``not_in_policy``. The offline engine (provider ``offline``)
is the last resort: whatever the rule says, a usable offline endpoint is always in the chain,
and always last.

File format::

    unlisted = "append"            # or "exclude"

    [[rule]]
    name = "ultra-on-device"
    tiers = ["ultra"]              # leave out to match any tier
    thermals = ["nominal", "fair"]
    prefer = ["location:on_device", "provider:glm_server", "provider:deepgram", "location:cloud"]
    exclude = []

    [[rule]]
    name = "budget-low"
    budget_below = 0.2             # less than 20 % of the tenant's budget left
    prefer = ["location:self_hosted", "location:on_device"]
"""

from __future__ import annotations

import enum
import itertools
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from sttrouter.endpoint import Location, STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.panel import _toml
from sttrouter.panel.device import DeviceTier, NetworkStatus, ThermalState

__all__ = [
    "DEFAULT_POLICY_TOML",
    "Policy",
    "Rule",
    "Unlisted",
    "default_policy",
    "resolve_selector",
    "tie_break_key",
]

Combo = tuple[DeviceTier, NetworkStatus, ThermalState]
ALL_COMBOS: tuple[Combo, ...] = tuple(itertools.product(DeviceTier, NetworkStatus, ThermalState))
"""All 48 tier × network × thermal combinations."""


class Unlisted(enum.StrEnum):
    """What happens to endpoints the chosen rule does not name."""

    APPEND = "append"
    EXCLUDE = "exclude"


def _enum_set(enum_type: type[Any], value: Iterable[Any] | str | None) -> frozenset[Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return frozenset(enum_type(v) for v in value)


def _tiers(value: Iterable[Any] | str | None) -> frozenset[DeviceTier] | None:
    return _enum_set(DeviceTier, value)


def _networks(value: Iterable[Any] | str | None) -> frozenset[NetworkStatus] | None:
    return _enum_set(NetworkStatus, value)


def _thermals(value: Iterable[Any] | str | None) -> frozenset[ThermalState] | None:
    return _enum_set(ThermalState, value)


def _share(_inst: object, _attr: object, value: float | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1
    ):
        raise ConfigError(f"budget_below must lie in (0, 1], got {value!r}", field="budget_below")


def _rules(value: Iterable[Rule]) -> tuple[Rule, ...]:
    return tuple(value)


def _selectors(value: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    out = tuple(str(v) for v in value)
    for sel in out:
        prefix, sep, rest = sel.partition(":")
        if sep and prefix == "location" and rest not in {loc.value for loc in Location}:
            raise ConfigError(
                f"selector {sel!r}: unknown location; use one of "
                + ", ".join(loc.value for loc in Location),
                field="prefer",
            )
        if not sel or (sep and not rest):
            raise ConfigError(f"selector {sel!r} is empty", field="prefer")
    return out


@attrs.frozen
class Rule:
    """One routing rule.

    Attributes:
        name: shown in decisions (``Decision.rule``).
        tiers: tiers it matches; ``None`` matches any.
        networks: network states it matches; ``None`` matches any.
        thermals: thermal states it matches; ``None`` matches any.
        prefer: ordered selectors (see the module docstring).
        exclude: selectors for endpoints this rule forbids (reason ``not_in_policy``).
        budget_below: match only while less than this share (0..1) of the session's budget
            is left; ``None`` matches whatever the budget.
    """

    name: str
    tiers: frozenset[DeviceTier] | None = attrs.field(default=None, converter=_tiers)
    networks: frozenset[NetworkStatus] | None = attrs.field(default=None, converter=_networks)
    thermals: frozenset[ThermalState] | None = attrs.field(default=None, converter=_thermals)
    prefer: tuple[str, ...] = attrs.field(default=(), converter=_selectors)
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_selectors)
    budget_below: float | None = attrs.field(default=None, validator=_share)

    def matches(
        self,
        tier: DeviceTier,
        network: NetworkStatus,
        thermal: ThermalState,
        remaining: float | None = None,
    ) -> bool:
        """Whether the rule applies; ``remaining`` is the budget share left (``None``: no
        budget)."""
        if self.budget_below is not None and (
            remaining is None or not remaining < self.budget_below
        ):
            return False
        return (
            (self.tiers is None or tier in self.tiers)
            and (self.networks is None or network in self.networks)
            and (self.thermals is None or thermal in self.thermals)
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        for key, members, order in (
            ("tiers", self.tiers, DeviceTier),
            ("networks", self.networks, NetworkStatus),
            ("thermals", self.thermals, ThermalState),
        ):
            if members is not None:
                d[key] = [m.value for m in order if m in members]
        d["prefer"] = list(self.prefer)
        if self.exclude:
            d["exclude"] = list(self.exclude)
        if self.budget_below is not None:
            d["budget_below"] = self.budget_below
        return d


def tie_break_key(ep: STTEndpoint, index: int) -> tuple[Decimal, float, float, int]:
    """Order among endpoints a selector matches: cost, latency, -reliability, registration."""
    return (ep.cost_per_hour, ep.expected_latency_ms, -ep.reliability_score, index)


def resolve_selector(selector: str, endpoints: Sequence[STTEndpoint]) -> list[int]:
    """Indices (into ``endpoints``) a selector names, in tie-break order."""
    by_id = [i for i, ep in enumerate(endpoints) if ep.id == selector or ep.pool == selector]
    if by_id:
        return by_id
    prefix, sep, rest = selector.partition(":")
    if selector == "*":
        hits = list(range(len(endpoints)))
    elif sep and prefix == "provider":
        hits = [i for i, ep in enumerate(endpoints) if ep.provider == rest]
    elif sep and prefix == "location":
        hits = [i for i, ep in enumerate(endpoints) if ep.location.value == rest]
    else:
        hits = [i for i, ep in enumerate(endpoints) if ep.provider == selector]
        if not hits:
            hits = [i for i, ep in enumerate(endpoints) if ep.location.value == selector]
    return sorted(hits, key=lambda i: tie_break_key(endpoints[i], i))


_RULE_KEYS = frozenset(
    {"name", "tiers", "networks", "thermals", "prefer", "exclude", "budget_below"}
)
_LIST_KEYS = ("tiers", "networks", "thermals", "prefer", "exclude")


@attrs.frozen
class Policy:
    """Ordered rules, first match wins.

    Attributes:
        rules: the rules, in order.
        unlisted: what to do with endpoints the chosen rule does not name.
        name: shown by the CLI.
    """

    rules: tuple[Rule, ...] = attrs.field(converter=_rules)
    unlisted: Unlisted = attrs.field(default=Unlisted.APPEND, converter=Unlisted)
    name: str = "custom"

    def rule_for(
        self,
        tier: DeviceTier,
        network: NetworkStatus,
        thermal: ThermalState,
        remaining: float | None = None,
    ) -> Rule | None:
        """The first rule that matches (a scan; routers use :meth:`table` instead);
        ``remaining``: the budget share left, ``None`` without a budget."""
        for rule in self.rules:
            if rule.matches(tier, network, thermal, remaining):
                return rule
        return None

    def budget_bands(self) -> tuple[float, ...]:
        """The distinct ``budget_below`` thresholds, ascending: a router compiles the policy
        once per band between them."""
        return tuple(sorted({r.budget_below for r in self.rules if r.budget_below is not None}))

    def table(self) -> dict[Combo, Rule | None]:
        """The matching rule for each of the 48 combinations, computed once."""
        return {combo: self.rule_for(*combo) for combo in ALL_COMBOS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unlisted": self.unlisted.value,
            "rule": [r.to_dict() for r in self.rules],
        }

    def dumps(self) -> str:
        return _toml.dumps(self.to_dict(), header=f"sttrouter routing policy: {self.name}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Policy:
        """Build from ``{"unlisted": ..., "rule": [{...}, ...]}``; errors name the rule."""
        for key in data:
            if key not in ("rule", "unlisted", "name"):
                raise ConfigError(
                    "unknown top-level key; a policy file holds unlisted, name and [[rule]]",
                    source=source,
                    field=key,
                )
        items = data.get("rule", [])
        if not isinstance(items, list):
            raise ConfigError("write each rule as a [[rule]] table", source=source, field="rule")
        rules = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            rules.append(_rule_from_dict(item, i, source, seen))
        unlisted = data.get("unlisted", "append")
        if unlisted not in {u.value for u in Unlisted}:
            raise ConfigError(
                f"{unlisted!r} is not one of append, exclude", source=source, field="unlisted"
            )
        name = data.get("name", os.path.basename(source) if source != "<dict>" else "custom")
        return cls(tuple(rules), unlisted=unlisted, name=str(name))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        data, source = _toml.load_file(path)
        return cls.from_dict(data, source=source)


def _rule_from_dict(item: Any, index: int, source: str, seen: set[str]) -> Rule:
    where = f"rule[{index}]"
    if not isinstance(item, Mapping):
        raise ConfigError("a rule must be a table", source=source, field=where)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("every rule needs a name", source=source, field=f"{where}.name")
    where = f"rule {name!r}"
    if name in seen:
        raise ConfigError("duplicate rule name", source=source, field=f"{where}.name")
    seen.add(name)
    for key, value in item.items():
        if key not in _RULE_KEYS:
            raise ConfigError(
                f"unknown key (known: {', '.join(sorted(_RULE_KEYS))})",
                source=source,
                field=f"{where}.{key}",
            )
        if key in _LIST_KEYS and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(
                f"must be a list of strings, got {value!r}", source=source, field=f"{where}.{key}"
            )
    for key, enum_type in (
        ("tiers", DeviceTier),
        ("networks", NetworkStatus),
        ("thermals", ThermalState),
    ):
        for v in item.get(key, ()):
            if v not in {m.value for m in enum_type}:
                raise ConfigError(
                    f"{v!r} is not one of {', '.join(m.value for m in enum_type)}",
                    source=source,
                    field=f"{where}.{key}",
                )
    try:
        return Rule(**item)
    except ConfigError as exc:
        msg = exc.message.removeprefix(f"field {exc.field!r}: ")
        raise ConfigError(msg, source=source, field=f"{where}.{exc.field}") from None


DEFAULT_POLICY_TOML = """\
# The default policy: UnaMentis' selectSTTService() with its holes fixed.
#
#   UnaMentis' GLM-ASR integration plan, first match wins:
#     (ultra, _, nominal)      -> on-device GLM
#     (ultra, _, serious)      -> GLM server
#     (pro_max, connected, _)  -> GLM server
#     (_, disconnected, _)     -> Apple speech (offline)
#     default                  -> Deepgram
#
#   holes fixed here (see docs/routing.md):
#     1. (ultra, disconnected, serious) went to the GLM server with no network -> offline engine.
#     2. (ultra, *, fair) had no on-device path (Deepgram, or offline when disconnected)
#        -> on-device GLM stays first at fair heat.
#     3. nothing in the table keeps an on-device engine out of a chain when the phone is hot
#        -> every hot rule excludes location:on_device (the offline engine is the exception).
#     4. (ultra, *, critical) fell to Deepgram while serious went to the free GLM server
#        -> critical is treated like serious.
#     5. one service, no fallback -> every rule yields an ordered chain; network endpoints are
#        dropped when disconnected, and the offline engine is always last.
unlisted = "append"

[[rule]]
name = "offline-cool"
networks = ["disconnected"]
thermals = ["nominal", "fair"]
prefer = ["location:on_device"]

[[rule]]
name = "offline-hot"
networks = ["disconnected"]
thermals = ["serious", "critical"]
prefer = []
exclude = ["location:on_device"]

[[rule]]
name = "ultra-on-device"
tiers = ["ultra"]
thermals = ["nominal", "fair"]
prefer = ["location:on_device", "provider:glm_server", "provider:deepgram", "location:cloud"]

[[rule]]
name = "ultra-hot-server"
tiers = ["ultra"]
thermals = ["serious", "critical"]
prefer = ["provider:glm_server", "provider:deepgram", "location:cloud"]
exclude = ["location:on_device"]

[[rule]]
name = "pro-max-server"
tiers = ["pro_max"]
networks = ["connected"]
thermals = ["nominal", "fair"]
prefer = ["provider:glm_server", "provider:deepgram", "location:cloud"]

[[rule]]
name = "pro-max-server-hot"
tiers = ["pro_max"]
networks = ["connected"]
thermals = ["serious", "critical"]
prefer = ["provider:glm_server", "provider:deepgram", "location:cloud"]
exclude = ["location:on_device"]

[[rule]]
name = "cloud-hot"
thermals = ["serious", "critical"]
prefer = ["provider:deepgram", "provider:glm_server", "location:cloud"]
exclude = ["location:on_device"]

[[rule]]
name = "cloud"
prefer = ["provider:deepgram", "provider:glm_server", "location:cloud"]
"""


def default_policy() -> Policy:
    """UnaMentis' ``selectSTTService()`` as data, holes fixed (:data:`DEFAULT_POLICY_TOML`)."""
    policy = Policy.from_dict(tomllib.loads(DEFAULT_POLICY_TOML), source="<default policy>")
    return attrs.evolve(policy, name="default")
