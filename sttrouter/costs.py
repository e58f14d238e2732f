"""Cost model: hourly API pricing against fixed monthly self-hosting.

Pure arithmetic on :class:`~decimal.Decimal` (no floats, no I/O). A :class:`Scenario` holds a
usage pattern (sessions per user per week, minutes per session), the user counts to project,
the per-hour API prices to compare, and the fixed monthly cost of self-hosting. :func:`project`
turns it into a :class:`CostReport`: monthly hours and costs per user count, and the break-even
point — the monthly hours of audio above which the fixed self-hosting cost is cheaper::

    break_even_hours = self_hosting_monthly / api_cost_per_hour

:func:`tutoring_scenario` is the UnaMentis tutoring scenario from the cost analysis of its
GLM-ASR plan (100 users × 3 sessions/week × 60 min, Deepgram at $0.26/h, a RunPod T4 plus
bandwidth at $149/month). That analysis states the break-even as "~57 hours/month"; its own
numbers give 149 / 0.26 = 573.08 hours/month.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import attrs

from sttrouter.errors import ConfigError
from sttrouter.panel.budgets import Budget, Period

__all__ = [
    "DEFAULT_API_PRICES",
    "WEEKS_PER_MONTH",
    "ApiPrice",
    "ApiSummary",
    "BudgetLine",
    "CostItem",
    "CostReport",
    "ProjectionRow",
    "Scenario",
    "SelfHosting",
    "UsagePattern",
    "break_even_hours",
    "budget_projection",
    "load_scenario",
    "money",
    "parse_amount",
    "project",
    "scenario_from_dict",
    "tutoring_scenario",
]

WEEKS_PER_MONTH: Final = Decimal("365.25") / Decimal(84)
"""An average calendar month in weeks (365.25 / 7 / 12 ≈ 4.348). The tutoring scenario uses 4."""

_CENT: Final = Decimal("0.01")


def money(value: Decimal) -> Decimal:
    """``value`` rounded half-up to two decimal places (cents, or hundredths of an hour)."""
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def parse_amount(value: Any, field: str, source: str | None = None) -> Decimal:
    """``value`` (number or numeric string) as a ``Decimal`` >= 0, or a :class:`ConfigError`
    naming ``source`` and ``field``."""
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a number", source=source, field=field)
    try:
        result = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ConfigError(f"{value!r} is not a number", source=source, field=field) from None
    if not result.is_finite():
        raise ConfigError(f"{value!r} is not a finite number", source=source, field=field)
    if result < 0:
        raise ConfigError(f"must not be negative, got {value}", source=source, field=field)
    return result


def _to_decimal(value: Any) -> Decimal:
    return parse_amount(value, "amount")


def _positive(_inst: object, attr: attrs.Attribute[Any], value: Decimal) -> None:
    if value <= 0:
        raise ConfigError(f"{attr.name} must be greater than 0, got {value}", field=attr.name)


def _check_name(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise ConfigError(f"{attr.name} must not be empty", field=attr.name)


@attrs.frozen
class ApiPrice:
    """A pay-per-hour engine: ``cost_per_hour`` of audio (``Decimal``, currency units)."""

    name: str = attrs.field(validator=_check_name)
    cost_per_hour: Decimal = attrs.field(converter=_to_decimal)

    def monthly(self, hours: Decimal) -> Decimal:
        """What ``hours`` of audio a month cost."""
        return self.cost_per_hour * hours


@attrs.frozen
class CostItem:
    """One fixed monthly line of self-hosting (a GPU rented 24/7, bandwidth, ...)."""

    name: str = attrs.field(validator=_check_name)
    monthly: Decimal = attrs.field(converter=_to_decimal)


def _items(value: Iterable[CostItem]) -> tuple[CostItem, ...]:
    return tuple(value)


@attrs.frozen
class SelfHosting:
    """Self-hosted engines: a fixed monthly cost, whatever the hours transcribed.

    The cost stays fixed only while the servers carry the peak load (UnaMentis targets 20–30
    concurrent sessions per T4); add a server as another item when they do not.
    """

    name: str = attrs.field(validator=_check_name)
    items: tuple[CostItem, ...] = attrs.field(converter=_items)

    @items.validator
    def _check_items(self, _attr: object, value: tuple[CostItem, ...]) -> None:
        if not value:
            raise ConfigError("self-hosting needs at least one cost item", field="self_hosted")

    @property
    def monthly(self) -> Decimal:
        return sum((item.monthly for item in self.items), Decimal(0))


@attrs.frozen
class UsagePattern:
    """How much one user transcribes."""

    sessions_per_week: Decimal = attrs.field(converter=_to_decimal)
    minutes_per_session: Decimal = attrs.field(converter=_to_decimal)
    weeks_per_month: Decimal = attrs.field(
        default=WEEKS_PER_MONTH, converter=_to_decimal, validator=_positive
    )

    @property
    def hours_per_user(self) -> Decimal:
        """Hours of audio one user sends in a month."""
        return self.sessions_per_week * self.minutes_per_session * self.weeks_per_month / 60

    def hours(self, users: int) -> Decimal:
        """Hours of audio ``users`` users send in a month."""
        return self.hours_per_user * users


def _users(value: Iterable[int]) -> tuple[int, ...]:
    out = tuple(value)
    for n in out:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"user counts must be whole numbers >= 0, got {n!r}", field="users")
    return out


def _apis(value: Iterable[ApiPrice]) -> tuple[ApiPrice, ...]:
    return tuple(value)


def _notes(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class Scenario:
    """Everything a projection needs.

    Attributes:
        name: shown in the report.
        usage: the per-user usage pattern.
        users: the user counts to project (one row each).
        apis: per-hour engines to compare.
        self_hosting: the fixed-cost alternative.
        notes: remarks printed with the report.
    """

    name: str
    usage: UsagePattern
    users: tuple[int, ...] = attrs.field(converter=_users)
    apis: tuple[ApiPrice, ...] = attrs.field(converter=_apis)
    self_hosting: SelfHosting
    notes: tuple[str, ...] = attrs.field(default=(), converter=_notes)

    def __attrs_post_init__(self) -> None:
        if not self.users:
            raise ConfigError("give at least one user count", field="users")
        if not self.apis:
            raise ConfigError("give at least one API price to compare against", field="api")
        names = [a.name for a in self.apis]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"API names must be unique, repeated: {dupes}", field="api")


def break_even_hours(self_hosting_monthly: Decimal, api_cost_per_hour: Decimal) -> Decimal | None:
    """Monthly hours of audio above which self-hosting is cheaper than the API.

    ``None`` when the API is free (self-hosting never breaks even).
    """
    if api_cost_per_hour <= 0:
        return None
    return self_hosting_monthly / api_cost_per_hour


@attrs.frozen
class ApiSummary:
    """An API's break-even point against the scenario's self-hosting."""

    name: str
    cost_per_hour: Decimal
    break_even_hours: Decimal | None
    break_even_users: Decimal | None
    """Users of the scenario's pattern whose hours reach the break-even point."""


@attrs.frozen
class ProjectionRow:
    """Monthly figures for one user count."""

    users: int
    hours: Decimal
    api_costs: tuple[tuple[str, Decimal], ...]
    self_hosting: Decimal

    @property
    def cheapest(self) -> str:
        """The cheapest option's name (an API name or ``"self_hosting"``; ties go to the API)."""
        best_name, best = min(self.api_costs, key=lambda kv: kv[1])
        return best_name if best <= self.self_hosting else "self_hosting"

    def savings(self, api: str) -> Decimal:
        """What self-hosting saves per month against ``api`` (negative: it costs more)."""
        return dict(self.api_costs)[api] - self.self_hosting

    def savings_percent(self, api: str) -> Decimal | None:
        cost = dict(self.api_costs)[api]
        return None if cost == 0 else self.savings(api) / cost * 100


@attrs.frozen
class CostReport:
    """The result of :func:`project`."""

    scenario: Scenario
    apis: tuple[ApiSummary, ...]
    rows: tuple[ProjectionRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; amounts are strings rounded to cents (hours to hundredths)."""
        s = self.scenario
        return {
            "scenario": s.name,
            "usage": {
                "sessions_per_week": str(s.usage.sessions_per_week),
                "minutes_per_session": str(s.usage.minutes_per_session),
                "weeks_per_month": str(money(s.usage.weeks_per_month)),
                "hours_per_user_per_month": str(money(s.usage.hours_per_user)),
            },
            "self_hosting": {
                "name": s.self_hosting.name,
                "items": [
                    {"name": i.name, "monthly": str(money(i.monthly))} for i in s.self_hosting.items
                ],
                "monthly": str(money(s.self_hosting.monthly)),
            },
            "apis": [
                {
                    "name": a.name,
                    "cost_per_hour": str(a.cost_per_hour),
                    "break_even_hours_per_month": _opt(a.break_even_hours),
                    "break_even_users": _opt(a.break_even_users),
                }
                for a in self.apis
            ],
            "projections": [
                {
                    "users": r.users,
                    "hours_per_month": str(money(r.hours)),
                    "api_costs": {name: str(money(c)) for name, c in r.api_costs},
                    "self_hosting": str(money(r.self_hosting)),
                    "cheapest": r.cheapest,
                    "savings": {name: str(money(r.savings(name))) for name, _ in r.api_costs},
                }
                for r in self.rows
            ],
            "notes": list(s.notes),
        }


def _opt(value: Decimal | None) -> str | None:
    return None if value is None else str(money(value))


def project(scenario: Scenario) -> CostReport:
    """Monthly hours and costs for each user count, and each API's break-even point."""
    fixed = scenario.self_hosting.monthly
    per_user = scenario.usage.hours_per_user
    summaries = []
    for api in scenario.apis:
        hours = break_even_hours(fixed, api.cost_per_hour)
        users = None if hours is None or per_user == 0 else hours / per_user
        summaries.append(ApiSummary(api.name, api.cost_per_hour, hours, users))
    rows = []
    for n in scenario.users:
        hours = scenario.usage.hours(n)
        rows.append(
            ProjectionRow(
                users=n,
                hours=hours,
                api_costs=tuple((a.name, a.monthly(hours)) for a in scenario.apis),
                self_hosting=fixed,
            )
        )
    return CostReport(scenario, tuple(summaries), tuple(rows))


# -- built-in figures --------------------------------------------------------------------------

DEFAULT_API_PRICES: Final[tuple[ApiPrice, ...]] = (
    ApiPrice("deepgram-nova-3", Decimal("0.258")),
    ApiPrice("assemblyai", Decimal("0.37")),
)
"""Streaming list prices per hour from UnaMentis' provider table."""

_TUTORING_SELF_HOSTING: Final = SelfHosting(
    "GLM-ASR-Nano self-hosted",
    (CostItem("RunPod T4 (24/7)", Decimal(144)), CostItem("Bandwidth (~50 GB)", Decimal(5))),
)


def tutoring_scenario() -> Scenario:
    """The UnaMentis tutoring scenario (100 users × 3 sessions/week × 60 min, Deepgram Nova-3
    at $0.26/h against GLM-ASR-Nano self-hosted for $149/month), its break-even corrected."""
    return Scenario(
        name="UnaMentis tutoring: 100 active users, Deepgram Nova-3 vs self-hosted GLM-ASR-Nano",
        usage=UsagePattern(Decimal(3), Decimal(60), weeks_per_month=Decimal(4)),
        users=(100, 500),
        apis=(ApiPrice("deepgram-nova-3", Decimal("0.26")),),
        self_hosting=_TUTORING_SELF_HOSTING,
        notes=(
            "The UnaMentis cost analysis states the break-even as '~57 hours/month'; its own "
            "numbers give 149 / 0.26 = 573.08 hours/month (a factor of 10 off).",
            "The UnaMentis cost analysis counts 4 weeks a month; a calendar month has about "
            "4.35 (--weeks-per-month 4.348 gives 1,304 h for 100 users).",
            "At 12 h per user per month, break-even is about 48 users; with one 60–90 min "
            "session every day it is about 13–19 daily users, not the '~10' the analysis says.",
        ),
    )


seed_scenario = tutoring_scenario
"""Former name of :func:`tutoring_scenario`, kept for one release."""


# -- configuration -----------------------------------------------------------------------------

_TOP_KEYS: Final = frozenset({"name", "usage", "users", "api", "self_hosted", "notes"})
_USAGE_KEYS: Final = frozenset({"sessions_per_week", "minutes_per_session", "weeks_per_month"})


def scenario_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Scenario:
    """Build a scenario from its TOML form (see ``docs/costs.md``).

    Example::

        name = "my app"
        users = [100, 500]
        [usage]
        sessions_per_week = 3
        minutes_per_session = 60
        [api]                  # name = price per hour of audio
        deepgram-nova-3 = "0.258"
        [self_hosted]          # name = fixed monthly cost
        "RunPod T4 (24/7)" = 144
        bandwidth = 5

    Missing ``api`` uses :data:`DEFAULT_API_PRICES`; missing ``self_hosted`` uses the tutoring
    scenario's $149/month (a RunPod T4 around the clock plus bandwidth). Decimal amounts may be
    given as strings to avoid binary rounding.
    """
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown keys {unknown}; use {sorted(_TOP_KEYS)}", source=source, field=unknown[0]
        )
    usage_raw = data.get("usage", {})
    if not isinstance(usage_raw, Mapping):
        raise ConfigError("must be a table", source=source, field="usage")
    bad = sorted(set(usage_raw) - _USAGE_KEYS)
    if bad:
        raise ConfigError(
            f"unknown keys {bad}; use {sorted(_USAGE_KEYS)}", source=source, field=f"usage.{bad[0]}"
        )
    for key in ("sessions_per_week", "minutes_per_session"):
        if key not in usage_raw:
            raise ConfigError("is required", source=source, field=f"usage.{key}")
    usage = UsagePattern(
        parse_amount(usage_raw["sessions_per_week"], "usage.sessions_per_week", source),
        parse_amount(usage_raw["minutes_per_session"], "usage.minutes_per_session", source),
        parse_amount(
            usage_raw.get("weeks_per_month", WEEKS_PER_MONTH), "usage.weeks_per_month", source
        ),
    )
    users_raw = data.get("users", ())
    if isinstance(users_raw, int):
        users_raw = [users_raw]
    if not isinstance(users_raw, list | tuple):
        raise ConfigError(
            f"must be a number or a list, got {users_raw!r}", source=source, field="users"
        )
    apis: tuple[ApiPrice, ...] = DEFAULT_API_PRICES
    if "api" in data:
        apis = tuple(
            ApiPrice(name, parse_amount(price, f"api.{name}", source))
            for name, price in _table(data["api"], "api", source).items()
        )
    self_hosting = _TUTORING_SELF_HOSTING
    if "self_hosted" in data:
        self_hosting = SelfHosting(
            "self-hosted",
            tuple(
                CostItem(name, parse_amount(cost, f"self_hosted.{name}", source))
                for name, cost in _table(data["self_hosted"], "self_hosted", source).items()
            ),
        )
    notes = data.get("notes", ())
    try:
        return Scenario(
            name=str(data.get("name", Path(source).stem)),
            usage=usage,
            users=tuple(users_raw),
            apis=apis,
            self_hosting=self_hosting,
            notes=(notes,) if isinstance(notes, str) else tuple(str(n) for n in notes),
        )
    except ConfigError as exc:
        raise ConfigError(exc.message, source=source, field=exc.field) from None


def _table(value: Any, field: str, source: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError("must be a non-empty table of name = amount", source=source, field=field)
    return value


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario from a TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(p)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(p)) from exc
    return scenario_from_dict(data, source=str(p))


@attrs.frozen
class BudgetLine:
    """A budget against a scenario's usage at one API price.

    Attributes:
        budget: the budget (it caps one tenant).
        api: the API whose price is projected (``"audio"`` for a budget in audio hours).
        per_user: one user's spend per budget period, in the budget's unit (US$ or hours).
        users_covered: how many users one tenant's budget covers (``None``: no spend).
        rows: ``(users, spend per period)`` for each user count of the scenario.
    """

    budget: Budget
    api: str
    per_user: Decimal
    users_covered: int | None
    rows: tuple[tuple[int, Decimal], ...]

    def to_dict(self) -> dict[str, Any]:
        limit = self.budget.limit_usd or Decimal(str(self.budget.limit))
        return {
            **self.budget.to_dict(),
            "api": self.api,
            "per_user": str(money(self.per_user)),
            "users_covered": self.users_covered,
            "projected": [
                {"users": u, "spend": str(money(v)), "over": v > limit} for u, v in self.rows
            ],
        }


def _period_share(period: Period, weeks_per_month: Decimal) -> Decimal:
    """An average period's share of a month at ``weeks_per_month``."""
    if period is Period.MONTH:
        return Decimal(1)
    days = weeks_per_month * 7
    return 1 / days if period is Period.DAY else 1 / (days * 24)


def budget_projection(scenario: Scenario, budgets: Iterable[Budget]) -> tuple[BudgetLine, ...]:
    """Each budget against the scenario's average spend per budget period: per API price for a
    budget in US$, in priced audio hours for one in audio hours."""
    lines = []
    usage = scenario.usage
    for budget in budgets:
        hours = usage.hours_per_user * _period_share(budget.period, usage.weeks_per_month)
        prices = (
            [(a.name, a.cost_per_hour) for a in scenario.apis]
            if budget.limit_usd is not None
            else [("audio", Decimal(1))]
        )
        limit = budget.limit_usd or Decimal(str(budget.limit))
        for name, price in prices:
            per_user = hours * price
            covered = int(limit / per_user) if per_user > 0 else None
            rows = tuple((u, per_user * u) for u in scenario.users)
            lines.append(BudgetLine(budget, name, per_user, covered, rows))
    return tuple(lines)
