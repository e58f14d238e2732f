"""``sttrouter cost``: API pricing against self-hosting, projected over users, with break-even."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from decimal import Decimal

import attrs

from sttrouter.costs import (
    DEFAULT_API_PRICES,
    ApiPrice,
    BudgetLine,
    CostItem,
    CostReport,
    Scenario,
    SelfHosting,
    UsagePattern,
    budget_projection,
    load_scenario,
    money,
    parse_amount,
    project,
    tutoring_scenario,
)
from sttrouter.errors import ConfigError

__all__ = ["format_budgets", "format_table", "register", "run", "scenario_from_args"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "cost",
        help="compare per-hour API pricing with fixed monthly self-hosting",
        description=(
            "Project monthly speech-to-text cost for N users x sessions/week x minutes, per API "
            "price and for self-hosting, and the break-even hours per month. Flags override the "
            "scenario from --tutoring-scenario or --config."
        ),
    )
    base = p.add_mutually_exclusive_group()
    base.add_argument(
        "--tutoring-scenario",
        action="store_true",
        help="the UnaMentis tutoring scenario: 100 and 500 users x 3 sessions/week x 60 min, "
        "Deepgram at $0.26/h against a self-hosted GLM-ASR-Nano at $149/month",
    )
    # the flag's former name, kept working for one release
    base.add_argument(
        "--seed-scenario", dest="tutoring_scenario", action="store_true", help=argparse.SUPPRESS
    )
    base.add_argument("--config", metavar="FILE", help="a scenario TOML file (see docs/costs.md)")
    p.add_argument("--users", metavar="N[,N...]", help="user counts to project, comma-separated")
    p.add_argument("--sessions-per-week", metavar="X", help="sessions per user per week")
    p.add_argument("--minutes", metavar="X", help="minutes per session")
    p.add_argument(
        "--weeks-per-month",
        metavar="X",
        help="weeks per month (default 4.348; the tutoring scenario uses 4)",
    )
    p.add_argument(
        "--api",
        action="append",
        metavar="NAME=PRICE",
        help="an API and its price per hour of audio (repeatable; replaces the scenario's)",
    )
    p.add_argument(
        "--registry",
        metavar="FILE|builtin",
        help="take the API prices from a registry's endpoints (those with cost_per_hour > 0)",
    )
    p.add_argument(
        "--self-hosted",
        action="append",
        metavar="NAME=MONTHLY",
        help="a fixed monthly self-hosting cost item (repeatable; replaces the scenario's)",
    )
    p.add_argument(
        "--budgets",
        metavar="FILE",
        help="a registry file with [[budget]] tables: each budget against the scenario's "
        "spend per budget period, and how many users one tenant's budget covers",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _pairs(values: Sequence[str], flag: str) -> list[tuple[str, Decimal]]:
    out = []
    for value in values:
        name, sep, amount = value.partition("=")
        if not sep or not name.strip() or not amount.strip():
            raise ConfigError(f"{flag} {value!r} must look like NAME=AMOUNT, e.g. deepgram=0.258")
        out.append((name.strip(), parse_amount(amount, f"{flag} {name.strip()}")))
    return out


def _users(text: str) -> tuple[int, ...]:
    try:
        users = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--users {text!r} must be whole numbers separated by commas") from None
    if not users or min(users) < 0:
        raise ConfigError(f"--users {text!r} must be whole numbers >= 0")
    return users


def _registry_prices(source: str) -> list[ApiPrice]:
    from sttrouter.panel.registry import EndpointRegistry, default_registry

    registry = default_registry() if source == "builtin" else EndpointRegistry.load(source)
    prices = [ApiPrice(ep.id, ep.cost_per_hour) for ep in registry if ep.cost_per_hour > 0]
    if not prices:
        raise ConfigError(
            "no endpoint has a cost_per_hour above 0; nothing to compare with self-hosting",
            source=registry.source,
        )
    return prices


def _default_scenario() -> Scenario:
    return attrs.evolve(
        tutoring_scenario(),
        name="custom",
        usage=UsagePattern(Decimal(3), Decimal(60)),
        users=(100,),
        apis=DEFAULT_API_PRICES,
        notes=(),
    )


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario the flags describe: a base (tutoring scenario, config or defaults) with
    overrides."""
    if args.tutoring_scenario:
        scenario = tutoring_scenario()
    elif args.config:
        scenario = load_scenario(args.config)
    else:
        scenario = _default_scenario()
    usage = scenario.usage
    changes: dict[str, object] = {}
    for flag, field in (
        ("sessions_per_week", "sessions_per_week"),
        ("minutes", "minutes_per_session"),
        ("weeks_per_month", "weeks_per_month"),
    ):
        value = getattr(args, flag)
        if value is not None:
            amount = parse_amount(value, f"--{flag.replace('_', '-')}")
            usage = attrs.evolve(usage, **{field: amount})
    if usage != scenario.usage:
        changes["usage"] = usage
    if args.users:
        changes["users"] = _users(args.users)
    apis: list[ApiPrice] = []
    if args.registry:
        apis += _registry_prices(args.registry)
    if args.api:
        apis += [ApiPrice(n, a) for n, a in _pairs(args.api, "--api")]
    if apis:
        changes["apis"] = tuple(apis)
    if args.self_hosted:
        items = tuple(CostItem(n, a) for n, a in _pairs(args.self_hosted, "--self-hosted"))
        changes["self_hosting"] = SelfHosting("self-hosted", items)
    if changes:
        # a changed scenario is no longer the one its notes describe
        changes.setdefault("notes", ())
        scenario = attrs.evolve(scenario, **changes)  # type: ignore[arg-type]
    return scenario


def _fmt(value: Decimal | None, unit: str = "") -> str:
    if value is None:
        return "never"
    return f"{unit}{money(value):,}"


def format_table(report: CostReport) -> str:
    """The report as aligned plain-text tables."""
    s = report.scenario
    u = s.usage
    lines = [
        f"Scenario: {s.name}",
        f"Usage: {u.sessions_per_week} sessions/week x {u.minutes_per_session} min x "
        f"{money(u.weeks_per_month)} weeks/month = {money(u.hours_per_user)} h per user per month",
        "Self-hosting: "
        + " + ".join(f"{i.name} ${money(i.monthly):,}" for i in s.self_hosting.items)
        + f" = ${money(s.self_hosting.monthly):,}/month",
        "",
    ]
    header = ["users", "hours/month", *(f"{n} $/mo" for n, _ in report.rows[0].api_costs)]
    header += ["self-hosted $/mo", "cheapest"]
    body = [
        [
            f"{r.users:,}",
            _fmt(r.hours),
            *(_fmt(c) for _, c in r.api_costs),
            _fmt(r.self_hosting),
            r.cheapest,
        ]
        for r in report.rows
    ]
    lines += _grid(header, body)
    lines.append("")
    header = ["api", "$/hour", "break-even h/month", "break-even users"]
    body = [
        [
            a.name,
            str(a.cost_per_hour),
            _fmt(a.break_even_hours),
            "never" if a.break_even_users is None else f"{math.ceil(a.break_even_users):,}",
        ]
        for a in report.apis
    ]
    lines += _grid(header, body)
    lines.append("Below the break-even hours the API is cheaper; above them self-hosting is.")
    for note in s.notes:
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def _grid(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)]


def _budget_lines(args: argparse.Namespace, scenario: Scenario) -> tuple[BudgetLine, ...]:
    if not args.budgets:
        return ()
    from sttrouter.panel.registry import EndpointRegistry

    registry = EndpointRegistry.load(args.budgets)
    if not registry.budgets:
        raise ConfigError("no [[budget]] table in the file", source=registry.source)
    return budget_projection(scenario, registry.budgets)


def format_budgets(lines: Sequence[BudgetLine]) -> str:
    """Budgets against the scenario's spend, as an aligned table."""
    users = [u for u, _ in lines[0].rows]
    header = ["budget", "limit", "on_exhausted", "api", "per user", "users covered"]
    header += [f"{u:,} users" for u in users]
    body = []
    for line in lines:
        b = line.budget
        limit = f"${money(b.limit_usd):,}" if b.limit_usd is not None else f"{b.limit:g} h"
        unit = "$" if b.limit_usd is not None else ""
        cap = b.limit_usd if b.limit_usd is not None else Decimal(str(b.limit))
        body.append(
            [
                b.label,
                f"{limit}/{b.period.value}",
                b.on_exhausted.value,
                line.api,
                f"{unit}{money(line.per_user)}",
                "-" if line.users_covered is None else f"{line.users_covered:,}",
                *(f"{unit}{money(v):,}" + (" over" if v > cap else "") for _, v in line.rows),
            ]
        )
    out = ["Budgets (one tenant's spend per period at the scenario's average usage):"]
    return "\n".join([*out, *_grid(header, body)])


def run(args: argparse.Namespace) -> int:
    scenario = scenario_from_args(args)
    report = project(scenario)
    budgets = _budget_lines(args, scenario)
    if args.json:
        data = report.to_dict()
        if budgets:
            data["budgets"] = [line.to_dict() for line in budgets]
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(format_table(report))
        if budgets:
            print()
            print(format_budgets(budgets))
    return 0
