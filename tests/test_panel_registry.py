"""EndpointRegistry: register/lookup, TOML load/dump round-trip, and config validation."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter._builtin_endpoints import builtin_endpoint
from sttrouter.endpoint import ConnectionConfig, Location, Provider, STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.panel import _toml
from sttrouter.panel.device import DeviceTier, ThermalState
from sttrouter.panel.registry import (
    EndpointRegistry,
    default_registry,
    endpoint_from_dict,
    endpoint_to_dict,
)
from sttrouter.providers.assemblyai import assemblyai_endpoint
from sttrouter.providers.deepgram import deepgram_endpoint
from sttrouter.providers.glm_local import glm_local_endpoint
from sttrouter.providers.offline import offline_endpoint

ROOT = Path(__file__).resolve().parent.parent


def ep(eid: str, **kw: Any) -> STTEndpoint:
    kw.setdefault("provider", "fake")
    return STTEndpoint(id=eid, **kw)


# --- registry basics ---------------------------------------------------------------------------


def test_register_get_iterate_unregister() -> None:
    reg = EndpointRegistry()
    assert len(reg) == 0
    assert reg.version == 0
    a, b = ep("a"), ep("b")
    reg.register(a)
    reg.register(b)
    assert reg.endpoints == (a, b)
    assert list(reg) == [a, b]
    assert "a" in reg
    assert "z" not in reg
    assert reg.get("a") is a
    assert reg.get("z") is None
    assert reg["b"] is b
    v = reg.version
    assert reg.unregister("a") is a
    assert reg.version > v
    assert reg.endpoints == (b,)
    with pytest.raises(KeyError):
        reg.unregister("a")
    assert "EndpointRegistry(['b']" in repr(reg)


def test_duplicate_id_is_an_error_unless_replace() -> None:
    reg = EndpointRegistry([ep("a")], source="mine.toml")
    with pytest.raises(ConfigError) as info:
        reg.register(ep("a", expected_latency_ms=5))
    assert info.value.source == "mine.toml"
    assert info.value.endpoint == "a"
    assert info.value.field == "id"
    new = ep("a", expected_latency_ms=5)
    reg.register(new, replace=True)
    assert reg["a"] is new
    assert len(reg) == 1


def test_register_rejects_non_endpoints() -> None:
    with pytest.raises(TypeError):
        EndpointRegistry().register({"id": "a"})  # type: ignore[arg-type]


def test_default_registry_matches_example_file() -> None:
    example = EndpointRegistry.load(ROOT / "examples" / "endpoints.toml")
    assert example.endpoints == default_registry().endpoints
    ids = [e.id for e in default_registry()]
    assert ids == ["glm-local", "glm-server", "deepgram", "assemblyai", "offline"]


def test_the_example_file_is_the_shipped_data_byte_for_byte() -> None:
    shipped = (ROOT / "sttrouter" / "default_registry.toml").read_text()
    example = (ROOT / "examples" / "endpoints.toml").read_text()
    body = shipped[shipped.index("\n[[endpoint]]") :]
    assert example.endswith(body)


# --- one definition per built-in endpoint ------------------------------------------------------


def test_the_python_helpers_build_the_registry_entries() -> None:
    reg = default_registry()
    assert offline_endpoint() == reg["offline"]
    assert deepgram_endpoint() == reg["deepgram"]
    assert assemblyai_endpoint() == reg["assemblyai"]
    glm = glm_local_endpoint(dtype="bf16", device="cpu")
    builtin = attrs.evolve(reg["glm-local"], connection=glm.connection)
    assert glm == builtin  # the computed memory of the bf16 Nano is the shipped figure


def test_helpers_keep_their_arguments() -> None:
    dg = deepgram_endpoint("dg", base_url="ws://127.0.0.1:9/v1/listen", options={"model": "x"})
    assert dg.location is Location.SELF_HOSTED
    assert dg.connection.api_key_env == "DEEPGRAM_API_KEY"
    assert dict(dg.connection.options) == {"model": "x"}
    aai = assemblyai_endpoint("a", api_key_env="MY_KEY", cost_per_hour="1.5", display_name="A")
    assert (aai.cost_per_hour, aai.connection.api_key_env, aai.name) == (
        Decimal("1.5"),
        "MY_KEY",
        "A",
    )
    assert offline_endpoint("ps", vad_mode=2).connection.option("vad_mode") == 2


def test_a_minimal_offline_entry_is_on_device_offline_and_english() -> None:
    e = endpoint_from_dict({"id": "ps", "provider": "offline"})
    assert e.location is Location.ON_DEVICE
    assert e.needs_network is False
    assert e.supported_languages == frozenset({"en"})
    assert not e.supports_language("de")


@pytest.mark.parametrize(("provider", "price"), [("deepgram", "0.258"), ("assemblyai", "0.37")])
def test_vendor_entries_get_their_list_price_unless_given(provider: str, price: str) -> None:
    assert endpoint_from_dict({"id": "v", "provider": provider}).cost_per_hour == Decimal(price)
    given = endpoint_from_dict({"id": "v", "provider": provider, "cost_per_hour": "0.1"})
    assert given.cost_per_hour == Decimal("0.1")


def test_fields_given_win_over_provider_defaults_and_custom_kinds_get_none() -> None:
    e = endpoint_from_dict({"id": "ps", "provider": "offline", "needs_network": True})
    assert e.needs_network is True
    fake = endpoint_from_dict({"id": "f", "provider": "fake"})
    assert fake == STTEndpoint(id="f", provider="fake")


def test_only_built_in_kinds_have_a_built_in_endpoint() -> None:
    assert builtin_endpoint("offline", id="o2").id == "o2"
    with pytest.raises(KeyError):
        builtin_endpoint("fake")


def test_a_dumped_minimal_entry_loads_back_equal() -> None:
    reg = EndpointRegistry.from_dict({"endpoint": [{"id": "ps", "provider": "offline"}]})
    again = EndpointRegistry.from_dict(tomllib.loads(reg.dumps()))
    assert again.endpoints == reg.endpoints


# --- round trip --------------------------------------------------------------------------------

_ids = st.from_regex(r"[a-z][a-z0-9_.:-]{0,12}", fullmatch=True)
_langs = st.frozensets(st.sampled_from(["en", "zh", "yue", "de", "fr", "en-us"]), max_size=4)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_opts = st.dictionaries(
    st.sampled_from(["model", "mode", "beam size", "ünïcode", "x"]),
    st.one_of(
        st.integers(-5, 10**6),
        st.booleans(),
        _text,
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.integers(0, 9), max_size=3),
    ),
    max_size=3,
)
_urls = st.sampled_from(
    [
        None,
        "wss://glm.example.com/v1/audio/stream",
        "https://api.example.com",
        "ws://127.0.0.1:8765/stream",
        "http://localhost:9000",
    ]
)


@st.composite
def endpoints(draw: st.DrawFn, eid: str | None = None) -> STTEndpoint:
    return STTEndpoint(
        id=eid or draw(_ids),
        display_name=draw(_text),
        provider=draw(st.sampled_from([p.value for p in Provider])),
        location=draw(st.sampled_from(list(Location))),
        expected_latency_ms=draw(st.floats(0, 10_000)),
        reliability_score=draw(st.floats(0, 1)),
        cost_per_hour=draw(st.decimals(min_value=0, max_value=100, places=4)),
        supports_streaming=draw(st.booleans()),
        supported_languages=draw(_langs),
        needs_network=draw(st.booleans()),
        min_tier=draw(st.sampled_from(list(DeviceTier))),
        max_thermal=draw(st.sampled_from(list(ThermalState))),
        memory_gb=draw(st.none() | st.floats(0, 64)),
        max_concurrent_sessions=draw(st.none() | st.integers(0, 1000)),
        connection=ConnectionConfig(
            base_url=draw(_urls),
            api_key_env=draw(st.none() | st.sampled_from(["DEEPGRAM_API_KEY", "X_KEY"])),
            options=draw(_opts),
            allow_insecure=draw(st.booleans()),
        ),
    )


@st.composite
def registries(draw: st.DrawFn) -> EndpointRegistry:
    ids = draw(st.lists(_ids, unique=True, max_size=8))
    return EndpointRegistry([draw(endpoints(eid)) for eid in ids])


@settings(max_examples=60, deadline=None)
@given(registries())
def test_toml_dump_load_round_trips(reg: EndpointRegistry) -> None:
    text = reg.dumps()
    again = EndpointRegistry.from_dict(tomllib.loads(text), source="<dump>")
    assert again.endpoints == reg.endpoints
    assert again.dumps() == text


def test_dump_and_load_a_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.toml"
    default_registry().dump(path)
    loaded = EndpointRegistry.load(path)
    assert loaded.endpoints == default_registry().endpoints
    assert loaded.source == str(path)


def test_cost_is_exact_decimal() -> None:
    reg = EndpointRegistry([ep("a", cost_per_hour=Decimal("0.2580"))])
    text = reg.dumps()
    assert 'cost_per_hour = "0.2580"' in text
    assert EndpointRegistry.from_dict(tomllib.loads(text))["a"].cost_per_hour == Decimal("0.2580")
    # numbers are accepted too
    e = endpoint_from_dict({"id": "b", "provider": "fake", "cost_per_hour": 0.37})
    assert e.cost_per_hour == Decimal("0.37")


# --- validation: every error names file, endpoint and field ----------------------------------

GOOD = """
[[endpoint]]
id = "dg"
provider = "deepgram"
cost_per_hour = "0.258"

[endpoint.connection]
base_url = "wss://api.deepgram.com/v1/listen"
api_key_env = "DEEPGRAM_API_KEY"
"""


def _bad(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        EndpointRegistry.load(path)
    err = info.value
    assert err.source == str(path)
    assert str(path) in str(err)
    return err


@pytest.mark.parametrize(
    ("old", "new", "endpoint", "field", "words"),
    [
        ('provider = "deepgram"', 'provider = "deepgrom"', "dg", "provider", "unknown provider"),
        ('cost_per_hour = "0.258"', "cost_per_hour = -1", "dg", "cost_per_hour", "negative"),
        ('cost_per_hour = "0.258"', 'cost_per_hour = "cheap"', "dg", "cost_per_hour", "number"),
        ('cost_per_hour = "0.258"', "reliability_score = 1.5", "dg", "reliability_score", "0..1"),
        ('cost_per_hour = "0.258"', "reliability_score = -0.1", "dg", "reliability_score", "0..1"),
        ('cost_per_hour = "0.258"', "expected_latency_ms = -3", "dg", "expected_latency_ms", ""),
        ('cost_per_hour = "0.258"', "costs_per_hour = 1", "dg", "costs_per_hour", "did you mean"),
        ('cost_per_hour = "0.258"', 'location = "moon"', "dg", "location", "on_device"),
        ('cost_per_hour = "0.258"', 'min_tier = "huge"', "dg", "min_tier", "ultra"),
        ('cost_per_hour = "0.258"', 'max_thermal = "hot"', "dg", "max_thermal", "serious"),
        ('cost_per_hour = "0.258"', 'needs_network = "yes"', "dg", "needs_network", "true or"),
        ('cost_per_hour = "0.258"', 'supported_languages = "en"', "dg", "supported_languages", ""),
        (
            'cost_per_hour = "0.258"',
            "max_concurrent_sessions = 1.5",
            "dg",
            "max_concurrent_sessions",
            "integer",
        ),
        (
            'cost_per_hour = "0.258"',
            "max_concurrent_sessions = -1",
            "dg",
            "max_concurrent_sessions",
            "negative",
        ),
        ('cost_per_hour = "0.258"', "memory_gb = -2", "dg", "memory_gb", "negative"),
        ('id = "dg"', 'id = "bad id!"', "bad id!", "id", "letters"),
        (
            'base_url = "wss://api.deepgram.com/v1/listen"',
            'base_url = "ftp://api.deepgram.com/"',
            "dg",
            "connection.base_url",
            "http, https, ws or wss",
        ),
        (
            'base_url = "wss://api.deepgram.com/v1/listen"',
            'base_url = "ws://10.0.0.5:8000/stream"',
            "dg",
            "connection.base_url",
            "allow_insecure",
        ),
        (
            'base_url = "wss://api.deepgram.com/v1/listen"',
            'base_url = "http://glm.internal:8000"',
            "dg",
            "connection.base_url",
            "unencrypted",
        ),
        (
            'api_key_env = "DEEPGRAM_API_KEY"',
            'api_key_env = "sk-1234 5678"',
            "dg",
            "connection.api_key_env",
            "NAME",
        ),
        (
            'api_key_env = "DEEPGRAM_API_KEY"',
            "api_key_env = 5",
            "dg",
            "connection.api_key_env",
            "string",
        ),
        (
            'api_key_env = "DEEPGRAM_API_KEY"',
            "timeout = 5",
            "dg",
            "timeout",
            "[endpoint.connection]",
        ),
    ],
)
def test_bad_config_names_file_endpoint_and_field(
    tmp_path: Path, old: str, new: str, endpoint: str, field: str, words: str
) -> None:
    assert old in GOOD
    err = _bad(tmp_path, GOOD.replace(old, new))
    assert err.endpoint == endpoint
    assert err.field == field
    assert f"endpoint {endpoint!r}" in str(err)
    assert f"field {field!r}" in str(err)
    assert words in str(err)


def test_duplicate_ids_in_a_file(tmp_path: Path) -> None:
    err = _bad(tmp_path, GOOD + GOOD)
    assert (err.endpoint, err.field) == ("dg", "id")
    assert "duplicate" in str(err)


def test_insecure_url_allowed_when_asked_or_loopback(tmp_path: Path) -> None:
    text = GOOD.replace("wss://api.deepgram.com/v1/listen", "ws://10.0.0.5:8000/stream")
    reg = EndpointRegistry.from_dict(
        tomllib.loads(text + "allow_insecure = true\n"), source="x.toml"
    )
    assert reg["dg"].connection.allow_insecure
    for url in ("ws://127.0.0.1:9/s", "http://localhost:8000", "ws://[::1]:80/"):
        EndpointRegistry.from_dict(
            tomllib.loads(GOOD.replace("wss://api.deepgram.com/v1/listen", url))
        )


@pytest.mark.parametrize(
    ("snippet", "field"),
    [
        ('api_key = "sk-live-abc"', "api_key"),
        ('token = "abc"', "token"),
        ('password = "hunter2"', "password"),
        ('deepgram_api_key = "abc"', "deepgram_api_key"),
    ],
)
def test_a_key_in_the_endpoint_table_is_refused(tmp_path: Path, snippet: str, field: str) -> None:
    text = GOOD.replace('cost_per_hour = "0.258"', snippet)
    err = _bad(tmp_path, text)
    assert (err.endpoint, err.field) == ("dg", field)
    assert "api_key_env" in str(err)
    assert "abc" not in str(err)
    assert "hunter2" not in str(err)


@pytest.mark.parametrize(
    ("snippet", "field"),
    [
        ('api_key = "sk-live-abc"', "api_key"),
        ('secret = "abc"', "secret"),
        ('authorization = "Token abc"', "authorization"),
    ],
)
def test_a_key_in_the_connection_table_is_refused(tmp_path: Path, snippet: str, field: str) -> None:
    err = _bad(tmp_path, GOOD + snippet + "\n")
    assert (err.endpoint, err.field) == ("dg", field)
    assert "api_key_env" in str(err)


def test_a_key_in_options_is_refused(tmp_path: Path) -> None:
    text = GOOD + (
        '[endpoint.connection.options]\nmodel = "nova-3"\n'
        '[endpoint.connection.options.auth_cfg]\napi_key = "abc"\n'
    )
    err = _bad(tmp_path, text)
    assert err.field == "connection.options.auth_cfg.api_key"


@pytest.mark.parametrize(
    "url",
    ["wss://user:pw@api.deepgram.com/v1/listen", "wss://api.deepgram.com/v1/listen?token=abc"],
)
def test_credentials_in_the_url_are_refused(tmp_path: Path, url: str) -> None:
    err = _bad(tmp_path, GOOD.replace("wss://api.deepgram.com/v1/listen", url))
    assert err.field == "connection.base_url"
    assert "api_key_env" in str(err)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("[endpoint]\nid = 'a'\nprovider='fake'\n", "endpoint", "[[endpoint]]"),
        ("[endpoints.a]\nprovider='fake'\n", "endpoints", "[[endpoint]]"),
        ("version = 2\n", "version", "only [[endpoint]]"),
        ("[[endpoint]]\nprovider='fake'\n", "id", "needs an id"),
        ("[[endpoint]]\nid='a'\nprovider='fake'\nconnection = 5\n", "connection", "table"),
    ],
)
def test_bad_file_shapes(tmp_path: Path, text: str, field: str, words: str) -> None:
    err = _bad(tmp_path, text)
    assert err.field == field
    assert words in str(err)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    err = _bad(tmp_path, "[[endpoint]\nid=")
    assert "not valid TOML" in str(err)
    with pytest.raises(ConfigError, match="file not found"):
        EndpointRegistry.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        EndpointRegistry.load(tmp_path)


def test_from_dict_source_defaults_and_non_table() -> None:
    with pytest.raises(ConfigError, match="<dict>"):
        EndpointRegistry.from_dict({"endpoint": [{"id": "a", "provider": "nope"}]})
    with pytest.raises(ConfigError, match="expected a table"):
        EndpointRegistry.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a table"):
        endpoint_from_dict("a")  # type: ignore[arg-type]


def test_key_never_appears_in_repr_dump_or_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-live-TOPSECRET-123"
    monkeypatch.setenv("DEEPGRAM_API_KEY", secret)
    reg = default_registry()
    dg = reg["deepgram"]
    assert dg.connection.api_key() == secret
    for text in (repr(reg), repr(dg), reg.dumps(), str(reg.to_dict()), str(endpoint_to_dict(dg))):
        assert secret not in text
    assert "DEEPGRAM_API_KEY" in reg.dumps()


# --- the tiny TOML writer --------------------------------------------------------------------


def test_toml_writer_escapes_and_special_floats() -> None:
    data = {
        "s": 'quote " back \\ tab \t nl \n bell \x07 del \x7f ü',
        "f": [float("inf"), float("-inf"), 1.5],
        "empty": [],
        "t": {"with space": 1},
    }
    parsed = tomllib.loads(_toml.dumps(data))
    assert parsed["s"] == data["s"]
    assert parsed["f"] == data["f"]
    assert parsed["empty"] == []
    assert parsed["t"] == {"with space": 1}
    assert "nan" in _toml.dumps({"x": float("nan")})
    with pytest.raises(TypeError):
        _toml.dumps({"x": object()})
