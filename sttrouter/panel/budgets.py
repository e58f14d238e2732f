"""Cost budgets per tenant and period, and what routing does when one runs low or out.

A :class:`Budget` caps one tenant's spend (``tenant = "*"``: every tenant, each on its own
counter) per UTC hour, day or month, in US dollars or in hours of priced audio (audio sent to
endpoints whose ``cost_per_hour`` is above zero; free endpoints never count). A
:class:`BudgetBook` keeps the spend in :class:`SpendCounters` — in memory here, or a shared store
so every replica of a backend adds to the same counters — and tells the router where a tenant
stands:

- policy rules may match on the remaining share (``budget_below = 0.2``: less than 20 % left);
- at the limit, a ``free_only`` budget makes decisions leave every priced endpoint out with
  reason ``budget_exhausted`` (the chain falls to free ones), and a ``refuse`` budget makes
  :meth:`BudgetBook.check` raise :class:`~sttrouter.errors.BudgetExceeded` for new sessions.

Spend is metered while streams run: a :class:`BudgetMeter` reads a session's usage ledger at
every decision the session asks for (its start, each failover and each utterance boundary), and
the book samples every live meter of a tenant whenever that tenant's standing is read and the
last such sweep is ``sample_interval`` seconds old (so a stream's last utterance is counted
soon after it ends, and a long utterance before it ends).

Running streams are never cut, so the overspend is bounded by the streams already running when
the limit is crossed: under ``free_only`` each of them spends at most until its next utterance
boundary (where it moves to a free endpoint); under ``refuse`` each spends until it ends.
Across replicas the bound grows by what the replicas spend while their view of the shared
counters catches up.

In a registry file::

    [[budget]]
    tenant = "*"                 # every tenant, each its own budget
    period = "day"               # hour, day or month (UTC)
    limit_usd = "5.00"           # or limit_audio_hours = 10
    on_exhausted = "free_only"   # or "refuse"
"""

from __future__ import annotations

import datetime as dt
import enum
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import attrs

from sttrouter.errors import BudgetExceeded, ConfigError

__all__ = [
    "Budget",
    "BudgetBook",
    "BudgetMeter",
    "BudgetStatus",
    "BudgetView",
    "InMemorySpend",
    "OnExhausted",
    "Period",
    "Spend",
    "SpendCounters",
    "Standing",
    "budgets_from_dicts",
]

_UTC = dt.UTC


class Period(enum.StrEnum):
    """A budget's period, in UTC."""

    HOUR = "hour"
    DAY = "day"
    MONTH = "month"

    def start(self, at: dt.datetime) -> dt.datetime:
        """The start of the period that holds ``at``."""
        at = at.astimezone(_UTC)
        if self is Period.HOUR:
            return at.replace(minute=0, second=0, microsecond=0)
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return day if self is Period.DAY else day.replace(day=1)

    def end(self, at: dt.datetime) -> dt.datetime:
        """The start of the next period (when the budget resets)."""
        start = self.start(at)
        if self is Period.HOUR:
            return start + dt.timedelta(hours=1)
        if self is Period.DAY:
            return start + dt.timedelta(days=1)
        return (start + dt.timedelta(days=32)).replace(day=1)

    def key(self, at: dt.datetime) -> str:
        """The counter key of the period that holds ``at`` (``day:2026-12-02``)."""
        fmt = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d", "month": "%Y-%m"}[self.value]
        return f"{self.value}:{self.start(at).strftime(fmt)}"


class OnExhausted(enum.StrEnum):
    """What happens at a budget's limit."""

    FREE_ONLY = "free_only"
    """Priced endpoints are left out of decisions (``budget_exhausted``); free ones serve."""
    REFUSE = "refuse"
    """New sessions are refused with :class:`~sttrouter.errors.BudgetExceeded`."""


@attrs.frozen
class Spend:
    """Money and priced audio spent."""

    cost: Decimal = Decimal(0)
    audio_seconds: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.cost + other.cost, self.audio_seconds + other.audio_seconds)

    def __sub__(self, other: Spend) -> Spend:
        return Spend(self.cost - other.cost, self.audio_seconds - other.audio_seconds)

    def __bool__(self) -> bool:
        return bool(self.cost) or bool(self.audio_seconds)


class SpendCounters(Protocol):
    """Where spend is counted, by key (``<tenant>/<period key>``).

    :class:`InMemorySpend` is the default; a shared store implements the same two methods so
    every replica adds to one set of counters (``add`` must not wait on the network: publish in
    the background; ``get`` reads the local view of the fleet's totals).
    """

    def add(self, key: str, spend: Spend) -> None: ...

    def get(self, key: str) -> Spend: ...


class InMemorySpend:
    """Spend counters of this process."""

    def __init__(self) -> None:
        self._spent: dict[str, Spend] = {}

    def add(self, key: str, spend: Spend) -> None:
        self._spent[key] = self._spent.get(key, Spend()) + spend

    def get(self, key: str) -> Spend:
        return self._spent.get(key, Spend())

    def keys(self) -> tuple[str, ...]:
        return tuple(sorted(self._spent))


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"limit_usd {value!r} is not a number", field="limit_usd") from None


def _hours(value: Any) -> float | None:
    return None if value is None else float(value)


@attrs.frozen
class Budget:
    """One spending cap.

    Attributes:
        tenant: the tenant key it caps; ``"*"`` caps every tenant, each on its own counter.
        period: hour, day or month (UTC).
        limit_usd: the cap in US dollars (give this or ``limit_audio_hours``).
        limit_audio_hours: the cap in hours of priced audio.
        on_exhausted: ``free_only`` (priced endpoints left out) or ``refuse`` (new sessions
            refused).
        name: shown in statuses and errors (default ``<tenant>/<period>``).
    """

    tenant: str
    period: Period = attrs.field(converter=Period)
    limit_usd: Decimal | None = attrs.field(default=None, converter=_decimal)
    limit_audio_hours: float | None = attrs.field(default=None, converter=_hours)
    on_exhausted: OnExhausted = attrs.field(default=OnExhausted.FREE_ONLY, converter=OnExhausted)
    name: str = ""

    def __attrs_post_init__(self) -> None:
        if (self.limit_usd is None) == (self.limit_audio_hours is None):
            raise ConfigError("a budget needs exactly one of limit_usd and limit_audio_hours")
        limit = self.limit_usd if self.limit_usd is not None else self.limit_audio_hours
        if limit is None or limit <= 0:
            raise ConfigError(f"a budget's limit must be above 0, got {limit}", field="limit")
        if not self.tenant:
            raise ConfigError("a budget needs a tenant (or '*')", field="tenant")

    @property
    def label(self) -> str:
        return self.name or f"{self.tenant}/{self.period.value}"

    @property
    def unit(self) -> str:
        return "usd" if self.limit_usd is not None else "audio_hours"

    @property
    def limit(self) -> float:
        return float(self.limit_usd if self.limit_usd is not None else self.limit_audio_hours or 0)

    def applies(self, tenant: str) -> bool:
        return self.tenant == "*" or self.tenant == tenant

    def amount(self, spend: Spend) -> float:
        """``spend`` in this budget's unit."""
        if self.limit_usd is not None:
            return float(spend.cost)
        return spend.audio_seconds / 3600

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tenant": self.tenant, "period": self.period.value}
        if self.name:
            d["name"] = self.name
        if self.limit_usd is not None:
            d["limit_usd"] = str(self.limit_usd)
        else:
            d["limit_audio_hours"] = self.limit_audio_hours
        d["on_exhausted"] = self.on_exhausted.value
        return d


_BUDGET_KEYS = frozenset(
    {"tenant", "period", "limit_usd", "limit_audio_hours", "on_exhausted", "name"}
)


def budgets_from_dicts(items: Any, *, source: str = "<dict>") -> tuple[Budget, ...]:
    """``[[budget]]`` tables, validated; errors name the file, the budget and the field."""
    if not isinstance(items, list):
        raise ConfigError("write each budget as a [[budget]] table", source=source, field="budget")
    out = []
    for i, item in enumerate(items):
        where = f"budget[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError("a budget must be a table", source=source, field=where)
        for key in item:
            if key not in _BUDGET_KEYS:
                raise ConfigError(
                    f"unknown key (known: {', '.join(sorted(_BUDGET_KEYS))})",
                    source=source,
                    field=f"{where}.{key}",
                )
        for key, choices in (("period", Period), ("on_exhausted", OnExhausted)):
            if key in item and item[key] not in {c.value for c in choices}:
                raise ConfigError(
                    f"{item[key]!r} is not one of {', '.join(c.value for c in choices)}",
                    source=source,
                    field=f"{where}.{key}",
                )
        if "period" not in item:
            raise ConfigError("a budget needs a period", source=source, field=f"{where}.period")
        try:
            out.append(Budget(**{"tenant": "*", **item}))
        except (ConfigError, TypeError, ValueError) as exc:
            message = exc.message if isinstance(exc, ConfigError) else str(exc)
            raise ConfigError(message, source=source, field=where) from None
    return tuple(out)


@attrs.frozen
class BudgetStatus:
    """Where one budget of one tenant stands now."""

    budget: Budget
    tenant: str
    spent: float
    resets_at: dt.datetime

    @property
    def remaining(self) -> float:
        """The share of the limit left, 0..1 (to 1e-9, so 0.8 of 1.0 spent leaves 0.2)."""
        return max(0.0, round(1.0 - self.spent / self.budget.limit, 9))

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.budget.limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.label,
            "tenant": self.tenant,
            "period": self.budget.period.value,
            "unit": self.budget.unit,
            "limit": self.budget.limit,
            "spent": round(self.spent, 6),
            "remaining": round(self.remaining, 6),
            "exhausted": self.exhausted,
            "on_exhausted": self.budget.on_exhausted.value,
            "resets_at": self.resets_at.isoformat(),
        }

    def describe(self) -> str:
        b = self.budget
        unit = "US$" if b.unit == "usd" else "audio h"
        state = f"exhausted ({b.on_exhausted.value})" if self.exhausted else "ok"
        return (
            f"budget {b.label} for {self.tenant}: {self.spent:.4g} of {b.limit:g} {unit} spent "
            f"this {b.period.value}, {self.remaining:.0%} left, {state}; "
            f"resets {self.resets_at:%Y-%m-%d %H:%M} UTC"
        )


@attrs.frozen
class Standing:
    """One tenant's budgets together, as a router reads them.

    Attributes:
        tenant: the tenant.
        statuses: every budget that applies.
        remaining: the tightest remaining share (0..1); ``None`` when no budget applies.
        free_only: a ``free_only`` budget is exhausted: priced endpoints are left out.
        refused: a ``refuse`` budget is exhausted: new sessions are refused.
    """

    tenant: str
    statuses: tuple[BudgetStatus, ...] = ()

    @property
    def remaining(self) -> float | None:
        return min((s.remaining for s in self.statuses), default=None)

    @property
    def free_only(self) -> bool:
        return any(
            s.exhausted and s.budget.on_exhausted is OnExhausted.FREE_ONLY for s in self.statuses
        )

    @property
    def refused(self) -> bool:
        return any(
            s.exhausted and s.budget.on_exhausted is OnExhausted.REFUSE for s in self.statuses
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "remaining": self.remaining,
            "free_only": self.free_only,
            "refused": self.refused,
            "budgets": [s.to_dict() for s in self.statuses],
        }


class BudgetView(Protocol):
    """What a router asks about the budget of the session it decides for."""

    def standing(self) -> Standing: ...


class _TenantView:
    def __init__(self, book: BudgetBook, tenant: str) -> None:
        self.book, self.tenant = book, tenant

    def standing(self) -> Standing:
        return self.book.standing(self.tenant)


class _UsageRow(Protocol):
    @property
    def cost(self) -> Decimal: ...

    @property
    def audio_seconds(self) -> float: ...


class BudgetBook:
    """Budgets and the spend against them.

    Args:
        budgets: the caps.
        counters: where spend is counted (default: in this process).
        wall: the wall-clock time in seconds since the epoch (default ``time.time``): periods
            are calendar hours, days and months in UTC.
    """

    def __init__(
        self,
        budgets: Iterable[Budget] = (),
        *,
        counters: SpendCounters | None = None,
        wall: Callable[[], float] | None = None,
        sample_interval: float = 1.0,
    ) -> None:
        self.budgets = tuple(budgets)
        self.counters: SpendCounters = counters if counters is not None else InMemorySpend()
        self._wall = wall or time.time
        self.sample_interval = sample_interval
        self._live: dict[str, dict[int, BudgetMeter]] = {}
        self._swept: dict[str, float] = {}

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._wall(), _UTC)

    def applying(self, tenant: str) -> tuple[Budget, ...]:
        return tuple(b for b in self.budgets if b.applies(tenant))

    def record(self, tenant: str, spend: Spend) -> None:
        """Add ``spend`` to the tenant's counter of every period its budgets use."""
        if not spend:
            return
        now = self._now()
        for period in {b.period for b in self.applying(tenant)}:
            self.counters.add(f"{tenant}/{period.key(now)}", spend)

    def spent(self, tenant: str, period: Period) -> Spend:
        return self.counters.get(f"{tenant}/{period.key(self._now())}")

    def standing(self, tenant: str) -> Standing:
        """Every budget of ``tenant`` as it stands now (live meters sampled first, at most once
        per ``sample_interval``)."""
        live = self._live.get(tenant)
        if live:
            t = self._wall()
            if t - self._swept.get(tenant, -float("inf")) >= self.sample_interval:
                self._swept[tenant] = t
                for meter in list(live.values()):
                    meter.sample()
        now = self._now()
        statuses = []
        for b in self.applying(tenant):
            spend = self.counters.get(f"{tenant}/{b.period.key(now)}")
            statuses.append(BudgetStatus(b, tenant, b.amount(spend), b.period.end(now)))
        return Standing(tenant, tuple(statuses))

    def check(self, tenant: str) -> Standing:
        """Where ``tenant`` stands; raises :class:`~sttrouter.errors.BudgetExceeded` when a
        ``refuse`` budget of it is exhausted (call it before opening a session)."""
        standing = self.standing(tenant)
        if standing.refused:
            status = next(
                s
                for s in standing.statuses
                if s.exhausted and s.budget.on_exhausted is OnExhausted.REFUSE
            )
            raise BudgetExceeded(
                status.describe(),
                tenant=tenant,
                budget=status.budget.label,
                resets_at=status.resets_at.timestamp(),
            )
        return standing

    def view(self, tenant: str) -> BudgetView:
        """The tenant's standing for a router (``Router.decide(budget=...)``)."""
        return _TenantView(self, tenant)

    def meter(
        self,
        tenant: str,
        usage: Callable[[], Mapping[str, _UsageRow]] | None = None,
        active: Callable[[], bool] | None = None,
    ) -> BudgetMeter:
        """A meter adding what ``usage()`` (a session's ``usage``) grows by to ``tenant``;
        ``active()`` says whether its stream still runs (``session.is_streaming``)."""
        meter = BudgetMeter(self, tenant, usage, active)
        if usage is not None:
            self.attach(meter)
        return meter

    def attach(self, meter: BudgetMeter) -> None:
        """Sample ``meter`` with the tenant's other live meters until its stream has ended."""
        self._live.setdefault(meter.tenant, {})[id(meter)] = meter

    def detach(self, meter: BudgetMeter) -> None:
        live = self._live.get(meter.tenant)
        if live is not None:
            live.pop(id(meter), None)
            if not live:
                del self._live[meter.tenant]

    def live_meters(self, tenant: str) -> int:
        return len(self._live.get(tenant, ()))


class BudgetMeter:
    """Adds what a session's usage ledger grows by to its tenant's spend.

    ``usage`` returns per-endpoint rows with ``cost`` and ``audio_seconds`` (a routed session's
    :meth:`~sttrouter.RoutedSession.usage`, which counts running streams as they stand); rows
    with a cost count as priced audio. Call :meth:`sample` whenever spend should be up to date
    (a router bound with this meter samples before every decision; the book samples its live
    meters when a standing is read). Once a sample finds the stream ended (``active()`` false
    after it was seen true), the meter leaves the book's live set; a later sample puts it back.
    """

    def __init__(
        self,
        book: BudgetBook,
        tenant: str,
        usage: Callable[[], Mapping[str, _UsageRow]] | None = None,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.book, self.tenant, self.usage, self.active = book, tenant, usage, active
        self.metered = Spend()
        self._seen_active = False

    def sample(self) -> Spend:
        """Record the growth since the last sample; returns the total metered so far."""
        if self.usage is None:
            return self.metered
        rows = self.usage().values()
        total = Spend(
            sum((r.cost for r in rows), Decimal(0)),
            sum(r.audio_seconds for r in rows if r.cost > 0),
        )
        self.book.record(self.tenant, total - self.metered)
        self.metered = total
        if self.active is None or self.active():
            self._seen_active = True
            self.book.attach(self)
        elif self._seen_active:
            self._seen_active = False
            self.book.detach(self)
        return total
