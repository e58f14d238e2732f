"""The cost model: the UnaMentis tutoring scenario's numbers, the corrected break-even, config
and the CLI."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttrouter.cli import main
from sttrouter.costs import (
    DEFAULT_API_PRICES,
    WEEKS_PER_MONTH,
    ApiPrice,
    CostItem,
    Scenario,
    SelfHosting,
    UsagePattern,
    break_even_hours,
    load_scenario,
    money,
    project,
    scenario_from_dict,
    tutoring_scenario,
)
from sttrouter.errors import ConfigError

# -- the UnaMentis tutoring scenario -------------------------------------------------------------


def test_tutoring_scenario_reproduces_the_analysis_numbers() -> None:
    report = project(tutoring_scenario())
    hundred, five_hundred = report.rows
    # "100 users x 3 sessions/week x 60 min/session = 1,200 hours/mo"
    assert hundred.users == 100
    assert hundred.hours == Decimal(1200)
    # "1,200 hours x $0.26/hour = $312/month"
    assert dict(hundred.api_costs) == {"deepgram-nova-3": Decimal("312.00")}
    # "$144 + $5 = $149/month"
    assert hundred.self_hosting == Decimal(149)
    # "SAVINGS: $163/month (52% reduction)"
    assert hundred.savings("deepgram-nova-3") == Decimal(163)
    assert round(hundred.savings_percent("deepgram-nova-3") or 0) == 52
    # "At 500 users: $1,560/mo (Deepgram) vs $149/mo (GLM) = 90% savings"
    assert five_hundred.hours == Decimal(6000)
    assert dict(five_hundred.api_costs)["deepgram-nova-3"] == Decimal(1560)
    assert round(five_hundred.savings_percent("deepgram-nova-3") or 0) == 90
    assert hundred.cheapest == five_hundred.cheapest == "self_hosting"


def test_tutoring_break_even_is_573_hours_not_57() -> None:
    (summary,) = project(tutoring_scenario()).apis
    assert summary.break_even_hours is not None
    assert money(summary.break_even_hours) == Decimal("573.08")
    assert summary.break_even_hours > 570  # the analysis's text says ~57: a factor of 10 off
    # at 12 h per user per month that is 47.76 users, so 48 are needed
    assert summary.break_even_users is not None
    assert money(summary.break_even_users) == Decimal("47.76")
    assert any("573.08" in note and "57 hours" in note for note in tutoring_scenario().notes)


def test_below_break_even_the_api_is_cheaper() -> None:
    scenario = tutoring_scenario()
    # 47 users x 12 h = 564 h < 573 h: Deepgram is cheaper; 48 users = 576 h: self-hosting
    row47, row48 = project(_with_users(scenario, (47, 48))).rows
    assert row47.cheapest == "deepgram-nova-3"
    assert row48.cheapest == "self_hosting"
    assert row47.savings("deepgram-nova-3") < 0 < row48.savings("deepgram-nova-3")


def _with_users(scenario: Scenario, users: tuple[int, ...]) -> Scenario:
    return Scenario(scenario.name, scenario.usage, users, scenario.apis, scenario.self_hosting)


# -- the arithmetic ------------------------------------------------------------------------------


def test_usage_pattern_hours() -> None:
    usage = UsagePattern(Decimal(3), Decimal(90), weeks_per_month=Decimal(4))
    assert usage.hours_per_user == Decimal(18)
    assert usage.hours(10) == Decimal(180)
    assert UsagePattern(1, 60).weeks_per_month == WEEKS_PER_MONTH
    assert money(WEEKS_PER_MONTH) == Decimal("4.35")


def test_free_api_never_breaks_even() -> None:
    assert break_even_hours(Decimal(149), Decimal(0)) is None
    scenario = Scenario(
        "free",
        UsagePattern(1, 60),
        (10,),
        (ApiPrice("apple", 0),),
        SelfHosting("gpu", (CostItem("t4", 144),)),
    )
    report = project(scenario)
    assert report.apis[0].break_even_hours is None
    assert report.apis[0].break_even_users is None
    assert report.rows[0].cheapest == "apple"
    assert report.rows[0].savings_percent("apple") is None
    assert report.to_dict()["apis"][0]["break_even_hours_per_month"] is None


def test_zero_usage_gives_no_break_even_users() -> None:
    scenario = Scenario(
        "idle",
        UsagePattern(0, 60),
        (10,),
        (ApiPrice("dg", "0.26"),),
        SelfHosting("gpu", (CostItem("t4", 144),)),
    )
    summary = project(scenario).apis[0]
    assert summary.break_even_hours == Decimal(144) / Decimal("0.26")
    assert summary.break_even_users is None


prices = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(10), places=3)
fixed = st.decimals(min_value=Decimal(1), max_value=Decimal(100_000), places=2)


@given(price=prices, monthly=fixed)
def test_break_even_is_where_costs_meet(price: Decimal, monthly: Decimal) -> None:
    hours = break_even_hours(monthly, price)
    assert hours is not None
    api = ApiPrice("api", price)
    assert abs(api.monthly(hours) - monthly) < Decimal("1e-20")
    assert api.monthly(hours * Decimal("1.01")) > monthly
    assert api.monthly(hours * Decimal("0.99")) < monthly


@given(
    users=st.lists(st.integers(min_value=0, max_value=100_000), min_size=1, max_size=5),
    price=prices,
    monthly=fixed,
)
def test_cheapest_agrees_with_break_even(
    users: list[int], price: Decimal, monthly: Decimal
) -> None:
    scenario = Scenario(
        "p",
        UsagePattern(3, 60, weeks_per_month=4),
        tuple(users),
        (ApiPrice("api", price),),
        SelfHosting("s", (CostItem("gpu", monthly),)),
    )
    report = project(scenario)
    be = report.apis[0].break_even_hours
    assert be is not None
    for row in report.rows:
        assert row.cheapest == ("api" if row.hours <= be else "self_hosting")


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ApiPrice("", 1),
        lambda: ApiPrice("x", -1),
        lambda: ApiPrice("x", "lots"),
        lambda: ApiPrice("x", "NaN"),
        lambda: ApiPrice("x", True),
        lambda: CostItem("x", "-5"),
        lambda: SelfHosting("s", ()),
        lambda: UsagePattern(1, 1, weeks_per_month=0),
        lambda: Scenario(
            "s", UsagePattern(1, 1), (), DEFAULT_API_PRICES, tutoring_scenario().self_hosting
        ),
        lambda: Scenario(
            "s", UsagePattern(1, 1), (-1,), DEFAULT_API_PRICES, tutoring_scenario().self_hosting
        ),
        lambda: Scenario("s", UsagePattern(1, 1), (1,), (), tutoring_scenario().self_hosting),
        lambda: Scenario(
            "s",
            UsagePattern(1, 1),
            (1,),
            (ApiPrice("a", 1), ApiPrice("a", 2)),
            tutoring_scenario().self_hosting,
        ),
    ],
)
def test_bad_values_raise_config_error(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]


# -- TOML scenarios --------------------------------------------------------------------------

SCENARIO_TOML = """
name = "tutoring app"
users = [100, 500]
notes = "prices from the vendors' pages"

[usage]
sessions_per_week = 3
minutes_per_session = 60
weeks_per_month = 4

[api]
deepgram-nova-3 = "0.26"
assemblyai = 0.37

[self_hosted]
"RunPod T4 (24/7)" = 144
bandwidth = "5"
"""


def test_load_scenario_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO_TOML)
    scenario = load_scenario(path)
    assert scenario.name == "tutoring app"
    assert scenario.notes == ("prices from the vendors' pages",)
    assert scenario.self_hosting.monthly == Decimal(149)
    report = project(scenario)
    assert [money(a.break_even_hours or Decimal(0)) for a in report.apis] == [
        Decimal("573.08"),
        Decimal("402.70"),
    ]
    assert report.rows[0].hours == Decimal(1200)


def test_scenario_defaults_fill_prices_and_self_hosting() -> None:
    scenario = scenario_from_dict(
        {"users": 20, "usage": {"sessions_per_week": 5, "minutes_per_session": 30}}
    )
    assert scenario.apis == DEFAULT_API_PRICES
    assert scenario.self_hosting.monthly == Decimal(149)
    assert scenario.users == (20,)
    assert scenario.name == "<dict>"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"users": [1], "usage": {"sessions_per_week": 1}}, "usage.minutes_per_session"),
        (
            {"users": [1], "usage": {"sessions_per_week": 1, "minutes_per_session": "x"}},
            "usage.minutes_per_session",
        ),
        (
            {"users": [1], "usage": {"sessions_per_week": 1, "minutes_per_session": 1, "days": 2}},
            "usage.days",
        ),
        ({"users": [1], "usage": 3}, "usage"),
        ({"users": "many", "usage": {"sessions_per_week": 1, "minutes_per_session": 1}}, "users"),
        ({"users": [1.5], "usage": {"sessions_per_week": 1, "minutes_per_session": 1}}, "users"),
        (
            {"users": [1], "usage": {"sessions_per_week": 1, "minutes_per_session": 1}, "api": {}},
            "api",
        ),
        (
            {
                "users": [1],
                "usage": {"sessions_per_week": 1, "minutes_per_session": 1},
                "api": {"dg": -1},
            },
            "api.dg",
        ),
        (
            {
                "users": [1],
                "usage": {"sessions_per_week": 1, "minutes_per_session": 1},
                "self_hosted": [],
            },
            "self_hosted",
        ),
        (
            {"users": [1], "usage": {"sessions_per_week": 1, "minutes_per_session": 1}, "extra": 1},
            "extra",
        ),
    ],
)
def test_scenario_errors_name_file_and_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        scenario_from_dict(data, source="costs.toml")
    assert info.value.source == "costs.toml"
    assert info.value.field == field
    assert "costs.toml" in str(info.value)


def test_load_scenario_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("users = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_tutoring_scenario_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--seed-scenario"]) == 0
    out = capsys.readouterr().out
    assert "1,200.00" in out
    assert "312.00" in out
    assert "1,560.00" in out
    assert "149.00" in out
    assert "573.08" in out
    assert "~57 hours/month" in out  # the note that names the analysis's error
    # the text names what it is, never an internal planning file
    assert "seed" not in out.lower()
    assert "§" not in out


def test_cli_former_flag_name_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--seed-scenario"]) == 0
    assert capsys.readouterr().out.startswith("Scenario: UnaMentis tutoring")
    with pytest.raises(SystemExit):
        main(["cost", "--help"])
    help_text = capsys.readouterr().out
    assert "--tutoring-scenario" in help_text
    assert "seed" not in help_text


def test_cli_tutoring_scenario_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--tutoring-scenario", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["apis"] == [
        {
            "name": "deepgram-nova-3",
            "cost_per_hour": "0.26",
            "break_even_hours_per_month": "573.08",
            "break_even_users": "47.76",
        }
    ]
    assert data["projections"][0] == {
        "users": 100,
        "hours_per_month": "1200.00",
        "api_costs": {"deepgram-nova-3": "312.00"},
        "self_hosting": "149.00",
        "cheapest": "self_hosting",
        "savings": {"deepgram-nova-3": "163.00"},
    }
    assert data["self_hosting"]["monthly"] == "149.00"


def test_cli_flags_override_the_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "--tutoring-scenario", "--users", "10,20", "--minutes", "90", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["hours_per_month"] for p in data["projections"]] == ["180.00", "360.00"]
    assert data["notes"] == []  # a changed scenario drops the notes
    assert data["scenario"].startswith("UnaMentis tutoring")


def test_cli_custom_prices(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "cost",
        "--users", "50",
        "--sessions-per-week", "2",
        "--minutes", "45",
        "--weeks-per-month", "4",
        "--api", "dg=0.258",
        "--api", "aai=0.37",
        "--self-hosted", "gpu=216",
        "--self-hosted", "egress=4",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6.00 h per user" in out
    assert "$220.00/month" in out
    assert "852.71" in out  # 220 / 0.258
    assert "594.59" in out  # 220 / 0.37


def test_cli_defaults_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost"]) == 0
    out = capsys.readouterr().out
    assert "deepgram-nova-3" in out
    assert "assemblyai" in out
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO_TOML)
    assert main(["cost", "--config", str(path)]) == 0
    assert "402.70" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--api", "dg"], "NAME=AMOUNT"),
        (["--api", "dg=cheap"], "not a number"),
        (["--self-hosted", "=3"], "NAME=AMOUNT"),
        (["--users", "ten"], "whole numbers"),
        (["--users", "-5"], "whole numbers"),
        (["--minutes", "-1"], "must not be negative"),
        (["--weeks-per-month", "0"], "greater than 0"),
    ],
)
def test_cli_bad_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", *argv]) == 1
    assert message in capsys.readouterr().err


def test_cli_free_api_shows_never(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--api", "apple=0"]) == 0
    assert "never" in capsys.readouterr().out


def test_cli_prices_from_a_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--registry", "builtin", "--json"]) == 0
    names = [a["name"] for a in json.loads(capsys.readouterr().out)["apis"]]
    assert names == ["deepgram", "assemblyai"]  # the priced endpoints; free ones are left out
    reg = tmp_path / "endpoints.toml"
    reg.write_text(
        '[[endpoint]]\nid = "dg"\nprovider = "deepgram"\ncost_per_hour = "0.26"\n\n'
        '[[endpoint]]\nid = "glm"\nprovider = "glm_server"\n'
    )
    assert main(["cost", "--registry", str(reg), "--api", "extra=1", "--json"]) == 0
    apis = json.loads(capsys.readouterr().out)["apis"]
    assert [(a["name"], a["break_even_hours_per_month"]) for a in apis] == [
        ("dg", "573.08"),
        ("extra", "149.00"),
    ]
    free = tmp_path / "free.toml"
    free.write_text('[[endpoint]]\nid = "glm"\nprovider = "glm_server"\n')
    assert main(["cost", "--registry", str(free)]) == 1
    assert "no endpoint has a cost_per_hour" in capsys.readouterr().err


BUDGETS = """
[[budget]]
tenant = "*"
period = "day"
limit_usd = "5.00"

[[budget]]
tenant = "acme"
period = "month"
limit_audio_hours = 500
on_exhausted = "refuse"

[[budget]]
period = "hour"
limit_usd = "1"
"""


def test_cost_reports_budgets_against_the_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sttrouter.cli import main

    path = tmp_path / "budgets.toml"
    path.write_text(BUDGETS)
    assert main(["cost", "--tutoring-scenario", "--budgets", str(path)]) == 0
    out = capsys.readouterr().out
    # 12 h per user per month of 28 days: 3/7 h a day, at 0.26 US$/h
    assert "*/day         $5.00/day     free_only  deepgram-nova-3     $0.11             44" in out
    assert "acme/month  500 h/month        refuse            audio     12.00             41" in out
    assert main(["cost", "--tutoring-scenario", "--budgets", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    day, month, hour = data["budgets"]
    assert day["projected"][0] == {"users": 100, "spend": "11.14", "over": True}
    assert month["api"] == "audio"
    assert month["users_covered"] == 41
    assert hour["projected"][0]["over"] is False
    empty = tmp_path / "none.toml"
    empty.write_text('[[endpoint]]\nid = "a"\nprovider = "fake"\n')
    assert main(["cost", "--budgets", str(empty)]) == 1
    assert "no [[budget]] table" in capsys.readouterr().err


def test_a_budget_of_free_usage_covers_everyone() -> None:
    import attrs

    from sttrouter.costs import budget_projection
    from sttrouter.panel.budgets import Budget

    scenario = attrs.evolve(tutoring_scenario(), apis=(ApiPrice("free", Decimal(0)),))
    (line,) = budget_projection(scenario, [Budget("*", "day", limit_usd=1)])
    assert line.users_covered is None
    assert line.to_dict()["per_user"] == "0.00"
