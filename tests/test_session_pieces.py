"""The routed session's pure pieces, without any stream or event loop: the timeline
(re-basing, de-duplication against the watermark, withheld empty finals), the candidate walk
and the usage ledger."""

from __future__ import annotations

import itertools
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.results import STTResult, WordTimestamp
from sttrouter.session.candidates import Standing, candidates
from sttrouter.session.ledger import LegUsage, UsageLedger
from sttrouter.session.timeline import (
    BYTES_PER_SECOND,
    EPS,
    EmptyFinals,
    EmptyVerdict,
    Timeline,
    trim_before,
)
from sttrouter.testing import fake_endpoint

# -- timeline -----------------------------------------------------------------------------
times = st.integers(min_value=0, max_value=16_000 * 20).map(lambda n: n / 16_000)


@st.composite
def finals(draw: st.DrawFn) -> STTResult:
    start = draw(times)
    n = draw(st.integers(min_value=0, max_value=6))
    step = draw(st.integers(min_value=800, max_value=8_000)) / 16_000
    words = tuple(
        WordTimestamp(f"w{i}", start + i * step, start + (i + 1) * step) for i in range(n)
    )
    duration = n * step if n else draw(times)
    text = " ".join(w.word for w in words)
    return STTResult(text, is_final=True, start=start, duration=duration, words=words)


@given(finals(), times)
def test_admit_final_drops_or_trims_against_the_watermark(res: STTResult, mark: float) -> None:
    tl = Timeline(Timeline.position(mark))
    kept = tl.admit_final(res)
    if res.end <= tl.watermark + EPS:
        assert kept is None
        return
    assert kept is not None
    assert kept.start >= tl.watermark - EPS
    assert abs(kept.end - res.end) < 1e-9
    assert all((w.start + w.end) / 2 >= tl.watermark for w in kept.words)
    assert set(kept.words) <= set(res.words)
    if res.start >= tl.watermark - EPS:
        assert kept is res


@settings(max_examples=200)
@given(st.lists(finals(), max_size=12))
def test_delivered_finals_never_overlap_and_the_watermark_only_rises(
    results: list[STTResult],
) -> None:
    tl = Timeline()
    limit = Timeline.position(40.0)
    delivered: list[STTResult] = []
    marks = [tl.final_pos]
    for res in results:
        before = tl.watermark
        kept = tl.admit_final(res)
        if kept is None:
            continue
        assert all((w.start + w.end) / 2 >= before for w in kept.words)
        delivered.append(kept)
        tl.advance(kept, limit)
        marks.append(tl.final_pos)
    assert marks == sorted(marks)
    for a, b in itertools.pairwise(delivered):
        assert b.start >= a.end - 2 * EPS - 1 / 16_000


@given(
    finals(), st.integers(min_value=0, max_value=10 * BYTES_PER_SECOND // 2).map(lambda n: 2 * n)
)
def test_place_rebases_by_the_leg_offset(res: STTResult, offset: int) -> None:
    placed = Timeline.place(res, offset)
    shift = offset / BYTES_PER_SECOND
    assert abs(placed.start - (res.start + shift)) < 1e-9
    assert abs(placed.end - (res.end + shift)) < 1e-9
    assert [w.word for w in placed.words] == [w.word for w in res.words]
    assert placed.latency is None


def test_place_drops_the_engine_latency_and_advance_clamps() -> None:
    res = STTResult("a", is_final=True, start=0.5, duration=1.0, latency=0.2)
    assert Timeline.place(res, 0).latency is None
    tl = Timeline()
    assert tl.advance(res, limit=Timeline.position(1.0))
    assert tl.watermark == 1.0  # clamped to the audio received
    assert not tl.advance(res, limit=Timeline.position(5.0)) or tl.watermark == 1.5
    assert tl.lost_to_overflow(tl.final_pos) is None
    span = tl.lost_to_overflow(tl.final_pos + 3200)
    assert span is not None
    assert span[1] - span[0] == 3200
    assert tl.final_pos == span[1]


def test_trim_before_without_words_keeps_the_text() -> None:
    res = STTResult("hello", is_final=True, start=1.0, duration=2.0)
    cut = trim_before(res, 2.0)
    assert (cut.transcript, cut.start, cut.end) == ("hello", 2.0, 3.0)
    assert Timeline().shows_interim(STTResult("x", is_final=False, start=0.0, duration=0.5))
    assert not Timeline(Timeline.position(1.0)).shows_interim(
        STTResult("x", is_final=False, duration=0.5)
    )


# -- withheld empty finals, as a model ------------------------------------------------------
@given(st.integers(min_value=1, max_value=4), st.lists(st.sampled_from("est"), max_size=30))
def test_empty_finals_follow_the_model(limit: int, script: list[str]) -> None:
    """``e``: empty over speech, ``s``: empty over silence, ``t``: a final with text."""
    ef = EmptyFinals(limit)
    held: list[int] = []
    run = 0
    for i, kind in enumerate(script):
        res = STTResult("" if kind != "t" else "x", is_final=True, start=float(i), duration=1.0)
        if kind == "t":
            assert [r.start for r in ef.on_text()] == held
            held, run = [], 0
            continue
        verdict = ef.on_empty(res, speech=kind == "e")
        if kind == "s" and not held:
            assert verdict is EmptyVerdict.DELIVER
            continue
        held.append(float(i))
        run += kind == "e"
        assert verdict is (EmptyVerdict.FAIL if run >= limit else EmptyVerdict.WITHHOLD)
        if verdict is EmptyVerdict.FAIL:
            return
        assert ef.pending
        assert ef.run == run


# -- the candidate walk ---------------------------------------------------------------------
A, B, C = fake_endpoint("a"), fake_endpoint("b"), fake_endpoint("c")


def standing(**kw: object) -> Standing:
    args: dict[str, object] = {
        "unusable": {},
        "failed_at": {},
        "now": 100.0,
        "retry_failed_after": 30.0,
    }
    args.update(kw)
    return Standing(**args)  # type: ignore[arg-type]


def test_walk_gives_every_reason_in_one_place() -> None:
    st_ = standing(unusable={"a": "bad key"}, failed_at={"b": 90.0})
    walk = candidates([A, B, C], st_, available=lambda eid: eid != "c")
    assert [(c.endpoint.id, c.skip) for c in walk] == [
        ("a", "unusable for this session: bad key"),
        ("b", "failed in this session"),
        ("c", "circuit open or unhealthy"),
    ]
    assert not any(c.usable for c in walk)
    # a later sweep retries recent failures; the router's chain is trusted (available=None)
    again = candidates([A, B, C], st_, available=None, include_recent_failures=True)
    assert [c.usable for c in again] == [False, True, True]
    assert st_.recently_failed([A, B])
    assert not st_.recently_failed([A, C])


def test_walk_above_and_capacity_for_switch_back() -> None:
    old = standing(failed_at={"a": 10.0})  # long enough ago
    walk = candidates(
        [A, B, C], old, available=None, has_capacity=lambda ep: ep.id != "a", above="c"
    )
    assert [(c.endpoint.id, c.skip) for c in walk] == [
        ("a", "at its concurrency limit"),
        ("b", None),
    ]
    assert candidates([A, B], old, available=None, above="a") == []


# -- the usage ledger -----------------------------------------------------------------------
def test_ledger_totals_streams_failures_and_open_legs() -> None:
    a = fake_endpoint("a", cost_per_hour="3.6")
    b = fake_endpoint("b", cost_per_hour="0.36")
    ledger = UsageLedger()
    ledger.record_failure(a)
    ledger.record_stream(LegUsage(a, 10.0, 0.0))
    open_leg = LegUsage(b, 20.0, 2.0)
    usage = ledger.usage([open_leg])
    assert (usage["a"].streams, usage["a"].failures) == (1, 1)
    assert usage["a"].cost == Decimal("0.010000")
    assert (usage["b"].replayed_seconds, usage["b"].cost) == (2.0, Decimal("0.002000"))
    assert ledger.cost([open_leg]) == Decimal("0.012000")
    assert "b" not in ledger.usage()  # an open leg is not booked until it ends
