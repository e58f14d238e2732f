"""Cost budgets: periods, the book, policy rules on the remaining share, budget_exhausted,
refusal, and spend metered from a running session's usage ledger."""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from sttrouter.errors import BudgetExceeded, ConfigError, ErrorKind
from sttrouter.events import RouteEventKind
from sttrouter.panel import Conditions, EndpointRegistry, Policy, Router, Rule, SkipReason
from sttrouter.panel.budgets import (
    Budget,
    BudgetBook,
    InMemorySpend,
    OnExhausted,
    Period,
    Spend,
    budgets_from_dicts,
)
from sttrouter.resilience import RetryPolicy
from sttrouter.session import RoutedSession
from sttrouter.testing import FakeClock, FakeSTTService, fake_endpoint, synthetic_speech
from tests.session_kit import check_coverage, drive

T0 = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC).timestamp()


def test_periods_are_utc_calendar_hours_days_and_months() -> None:
    at = dt.datetime(2026, 12, 31, 23, 30, 5, tzinfo=dt.UTC)
    assert Period.HOUR.key(at) == "hour:2026-12-31T23"
    assert Period.DAY.key(at) == "day:2026-12-31"
    assert Period.MONTH.key(at) == "month:2026-12"
    assert Period.HOUR.end(at) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert Period.DAY.end(at) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert Period.MONTH.end(at) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    feb = dt.datetime(2027, 2, 10, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    assert Period.MONTH.end(feb) == dt.datetime(2027, 3, 1, tzinfo=dt.UTC)


def test_a_budget_needs_one_positive_limit() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        Budget("acme", "day")
    with pytest.raises(ConfigError, match="exactly one"):
        Budget("acme", "day", limit_usd=1, limit_audio_hours=1)
    with pytest.raises(ConfigError, match="above 0"):
        Budget("acme", "day", limit_usd=0)
    with pytest.raises(ConfigError, match="not a number"):
        Budget("acme", "day", limit_usd="lots")
    with pytest.raises(ConfigError, match="tenant"):
        Budget("", "day", limit_usd=1)
    b = Budget("*", "hour", limit_audio_hours=2, on_exhausted="refuse")
    assert (b.label, b.unit, b.limit) == ("*/hour", "audio_hours", 2.0)
    assert b.amount(Spend(Decimal(1), 1800.0)) == 0.5


@pytest.mark.parametrize(
    ("items", "words"),
    [
        ({"tenant": "a"}, "write each budget"),
        ([5], "must be a table"),
        ([{"period": "day", "limit_usd": 1, "cap": 2}], "unknown key"),
        ([{"period": "week", "limit_usd": 1}], "'week' is not one of hour, day, month"),
        ([{"period": "day", "limit_usd": 1, "on_exhausted": "x"}], "free_only, refuse"),
        ([{"limit_usd": 1}], "needs a period"),
        ([{"period": "day"}], "exactly one"),
    ],
)
def test_bad_budget_tables_name_the_problem(items: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        budgets_from_dicts(items, source="b.toml")


def test_budgets_load_from_the_registry_file_and_dump_back(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        '[[endpoint]]\nid = "a"\nprovider = "fake"\n\n'
        '[[budget]]\nperiod = "day"\nlimit_usd = "5.00"\n\n'
        '[[budget]]\nname = "acme-monthly"\ntenant = "acme"\nperiod = "month"\n'
        'limit_audio_hours = 100\non_exhausted = "refuse"\n'
    )
    reg = EndpointRegistry.load(path)
    day, month = reg.budgets
    assert (day.tenant, day.period, day.limit_usd) == ("*", Period.DAY, Decimal("5.00"))
    assert (month.label, month.on_exhausted) == ("acme-monthly", OnExhausted.REFUSE)
    assert EndpointRegistry.from_dict(reg.to_dict()).budgets == reg.budgets
    assert "[[budget]]" in reg.dumps()


def _book(*budgets: Budget, clock: FakeClock | None = None, **kw: object) -> BudgetBook:
    clock = clock or FakeClock()
    return BudgetBook(budgets, wall=lambda: T0 + clock.now(), **kw)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_book_counts_per_tenant_and_period_and_resets_with_the_period() -> None:
    clock = FakeClock()
    book = _book(
        Budget("*", "hour", limit_usd="1.00"),
        Budget("acme", "day", limit_audio_hours=1, on_exhausted="refuse"),
        clock=clock,
    )
    book.record("acme", Spend(Decimal("0.25"), 900.0))
    book.record("other", Spend(Decimal("0.75"), 0.0))
    book.record("acme", Spend())  # nothing to count
    acme = book.standing("acme")
    assert [round(s.remaining, 6) for s in acme.statuses] == [0.75, 0.75]
    assert acme.remaining == 0.75
    assert not acme.free_only
    assert not acme.refused
    assert book.standing("other").remaining == 0.25  # each tenant its own hourly counter
    assert book.standing("nobody").statuses[0].spent == 0
    assert book.spent("acme", Period.DAY) == Spend(Decimal("0.25"), 900.0)
    book.record("acme", Spend(Decimal("0.80"), 2800.0))
    acme = book.standing("acme")
    assert acme.free_only
    assert acme.refused
    assert acme.remaining == 0.0
    with pytest.raises(BudgetExceeded) as caught:
        book.check("acme")
    err = caught.value
    assert (err.tenant, err.budget, err.kind) == ("acme", "acme/day", ErrorKind.CALLER)
    assert err.resets_at == dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    assert "1.028 of 1 audio h spent this day" in str(err)
    assert book.check("other").tenant == "other"
    assert acme.to_dict()["budgets"][0]["exhausted"] is True
    await clock.advance(1800)  # a new hour, a new day, a new month
    assert book.check("acme").remaining == 1.0


def test_replicas_sharing_counters_add_up() -> None:
    shared = InMemorySpend()
    budget = Budget("acme", "day", limit_usd="1.00")
    one, two = _book(budget, counters=shared), _book(budget, counters=shared)
    one.record("acme", Spend(Decimal("0.6")))
    two.record("acme", Spend(Decimal("0.6")))
    assert one.standing("acme").free_only
    assert two.standing("acme").free_only
    assert shared.keys() == ("acme/day:2026-12-31",)


def _registry() -> EndpointRegistry:
    return EndpointRegistry(
        [
            fake_endpoint("cloud", cost_per_hour="3.6", expected_latency_ms=5),
            fake_endpoint("free", expected_latency_ms=50),
        ]
    )


CLOUD_FIRST = Policy([Rule("cloud-first", prefer=["cloud"])])


def test_a_spent_free_only_budget_leaves_priced_endpoints_out() -> None:
    book = _book(Budget("acme", "day", limit_usd="1.00"))
    router = Router(_registry(), CLOUD_FIRST)
    assert router.decide(Conditions(), budget=book.view("acme")).chain_ids == ("cloud", "free")
    book.record("acme", Spend(Decimal("1.00")))
    d = router.decide(Conditions(), budget=book.view("acme"))
    assert d.chain_ids == ("free",)
    assert d.skipped() == {"cloud": SkipReason.BUDGET_EXHAUSTED}
    assert "has spent its budget" in (d.describe("cloud") or "")
    assert "budget acme/day for acme: 1 of 1 US$ spent this day, 0% left" in d.explain()
    assert d.to_dict()["budget"]["free_only"] is True
    # a refusing budget never changes the chain: it refuses new sessions instead
    refusing = _book(Budget("acme", "day", limit_usd="1.00", on_exhausted="refuse"))
    refusing.record("acme", Spend(Decimal("2")))
    assert router.decide(Conditions(), budget=refusing.view("acme")).chain_ids == (
        "cloud",
        "free",
    )


def test_policy_rules_can_match_on_the_remaining_budget() -> None:
    policy = Policy(
        [
            Rule("nearly-out", budget_below=0.2, prefer=["free"]),
            Rule("low", budget_below=0.5, prefer=["free", "cloud"]),
            Rule("normal", prefer=["cloud"]),
        ]
    )
    assert policy.budget_bands() == (0.2, 0.5)
    book = _book(Budget("acme", "day", limit_usd="1.00"))
    router = Router(_registry(), policy)
    view = book.view("acme")
    seen = []
    for spend in ("0.4", "0.1", "0.2", "0.1"):  # remaining 0.6, 0.5, 0.3, 0.2 (spent 0.8)
        book.record("acme", Spend(Decimal(spend)))
        d = router.decide(Conditions(), budget=view)
        seen.append((d.rule, d.chain_ids))
    assert seen == [
        ("normal", ("cloud", "free")),
        ("normal", ("cloud", "free")),
        ("low", ("free", "cloud")),
        ("low", ("free", "cloud")),
    ]
    book.record("acme", Spend(Decimal("0.05")))
    assert router.decide(Conditions(), budget=view).rule == "nearly-out"
    # without a budget, no budget rule matches
    assert router.decide(Conditions()).rule == "normal"
    c = Conditions()
    assert router.plan(c.tier, c.network, c.thermal)[0] == "normal"
    assert Rule("x", budget_below=0.3).to_dict()["budget_below"] == 0.3
    with pytest.raises(ConfigError, match="budget_below"):
        Rule("x", budget_below=1.5)
    loaded = Policy.from_dict({"rule": [{"name": "x", "budget_below": 0.25, "prefer": []}]})
    assert loaded.rules[0].budget_below == 0.25


@pytest.mark.anyio
async def test_spend_is_metered_while_the_stream_runs_and_the_limit_moves_it_to_free() -> None:
    clock = FakeClock()
    # the cloud endpoint costs 3.6 US$/h = 0.001 US$ per second: the budget buys 2 s, and
    # each utterance (3 words and a gap) lasts 0.8 s
    book = _book(Budget("acme", "hour", limit_usd="0.002"), clock=clock)
    bound = Router(_registry(), CLOUD_FIRST).bind(budget=book.view("acme"))
    session = RoutedSession(
        router=bound,
        service_factory=lambda ep: FakeSTTService(ep, clock=clock),
        clock=clock,
        retry=RetryPolicy(attempts=1),
    )
    meter = book.meter("acme", session.usage)
    bound.before = meter.sample
    speech = synthetic_speech((3, 3, 3, 3))
    spent_at_boundaries: list[float] = []
    run = await drive(
        clock,
        session,
        speech,
        before_chunk=lambda i, sent: spent_at_boundaries.append(
            float(book.spent("acme", Period.HOUR).cost)
        ),
    )
    check_coverage(speech, run, ["cloud", "free"])
    assert max(spent_at_boundaries) > 0  # metered while the stream ran, not only at its end
    moves = [e for e in run.events if e.endpoint_id == "free"]
    assert moves
    assert moves[0].kind is RouteEventKind.SWITCHED_BACK
    meter.sample()
    spent = book.spent("acme", Period.HOUR)
    # the limit was crossed at an utterance boundary; the stream moved there: the overspend
    # is at most one utterance of the one stream running when the limit was crossed
    assert Decimal("0.002") <= spent.cost <= Decimal("0.002") + Decimal("0.0008")
    assert spent.audio_seconds == pytest.approx(float(spent.cost) * 1000)
    assert {r.endpoint_id for r in run.finals[-2:]} == {"free"}
    assert meter.sample() == meter.metered  # nothing new
    assert BudgetBook().meter("x").sample() == Spend()


@pytest.mark.anyio
async def test_a_context_refuses_meters_and_routes_a_tenant_by_its_budgets() -> None:
    from sttrouter.context import RoutingContext

    clock = FakeClock()
    book = _book(
        Budget("acme", "hour", limit_usd="0.002"),
        Budget("acme", "day", limit_usd="0.004", on_exhausted="refuse"),
        clock=clock,
        sample_interval=0.5,
    )
    context = RoutingContext(
        Router(_registry(), CLOUD_FIRST),
        clock=clock,
        service_factory=lambda ep: FakeSTTService(ep, clock=clock),
        retry=RetryPolicy(attempts=1),
        budgets=book,
    )
    assert context.decide(tenant="acme").chain_ids == ("cloud", "free")
    session = context.session(tenant="acme")
    speech = synthetic_speech((3, 3, 3, 3))
    run = await drive(clock, session, speech)
    check_coverage(speech, run, ["cloud", "free"])
    assert run.finals[-1].endpoint_id == "free"  # the hourly free_only budget ran out
    assert context.decide(tenant="acme").skipped() == {"cloud": SkipReason.BUDGET_EXHAUSTED}
    assert context.decide(tenant="other").chain_ids == ("cloud", "free")
    # the stream has ended: the next look at the tenant's standing meters what was left and
    # lets the meter go
    await clock.advance(1)
    spent = book.standing("acme").statuses[0].spent
    assert spent == float(session.cost)
    assert book.live_meters("acme") == 0
    # another session spends the rest of the day's budget, which refuses new sessions
    book.record("acme", Spend(Decimal("0.002")))
    with pytest.raises(BudgetExceeded, match="acme/day"):
        context.session(tenant="acme")
    assert context.session().chain[0].id == "cloud"  # no tenant, no budget


def _doc_blocks(heading: str) -> list[str]:
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "routing.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [m.strip() for m in re.findall(r"```toml\n(.*?)```", section, flags=re.S)]


def test_the_toml_in_the_routing_docs_loads(tmp_path: Path) -> None:
    import textwrap

    (pools,) = _doc_blocks("Endpoint pools")
    reg = EndpointRegistry.from_dict(tomllib.loads(pools), source="docs")
    assert [ep.id for ep in reg] == ["glm#1", "glm#2", "glm-big#1", "glm-big-spare"]
    registry, rules = _doc_blocks("Cost budgets")
    reg = EndpointRegistry.from_dict(tomllib.loads(registry), source="docs")
    assert [b.label for b in reg.budgets] == ["*/day", "acme-monthly"]
    policy = Policy.from_dict(tomllib.loads(textwrap.dedent(rules)))
    book = BudgetBook(reg.budgets)
    router = Router(reg, policy)
    assert router.decide(Conditions(), budget=book.view("acme")).rule == "cloud"
    book.record("acme", Spend(Decimal("4.5")))
    assert router.decide(Conditions(), budget=book.view("acme")).rule == "budget-low"
