"""Guards for autoregressive speech decoders (GLM-ASR): a token budget and a loop detector.

GLM-ASR decodes text with an LLM, and on some audio it falls into a loop ("the the the ...",
or a phrase repeated until ``max_new_tokens``; zai-org/GLM-ASR#26). Both GLM adapters (the
server client and the in-process engine) use these helpers:

* :func:`token_budget` scales ``max_new_tokens`` with the audio's duration, so a loop stops
  early instead of running to a fixed large limit, and long speech is not truncated.
* :func:`find_repetition` / :func:`is_repetitive` spot a loop in decoded tokens or text;
  :func:`trim_repetition` keeps the text up to the loop's first repeat.

Pure functions, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence

import attrs

__all__ = [
    "Repetition",
    "find_repetition",
    "is_repetitive",
    "text_units",
    "token_budget",
    "trim_repetition",
]

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def token_budget(
    duration_seconds: float,
    *,
    tokens_per_second: float = 10.0,
    minimum: int = 48,
    maximum: int = 8192,
) -> int:
    """``max_new_tokens`` for ``duration_seconds`` of speech.

    Fast speech is about 4 English words (5–6 tokens) or 7 Chinese characters a second;
    10 tokens a second leaves room for punctuation and numbers, while a loop is cut after a
    few times the text the audio can hold. ``minimum`` covers short clips, ``maximum`` caps
    the budget (GLM-ASR's processor takes at most ~655 s, ≈ 8192 tokens).
    """
    if duration_seconds < 0 or math.isnan(duration_seconds):
        raise ValueError(f"duration must be non-negative seconds, got {duration_seconds}")
    return max(minimum, min(maximum, math.ceil(duration_seconds * tokens_per_second)))


@attrs.frozen
class Repetition:
    """A loop found in a sequence: ``unit`` items starting at ``start`` repeat ``repeats`` times."""

    start: int
    period: int
    repeats: int

    @property
    def end(self) -> int:
        """Index just past the last whole repeat."""
        return self.start + self.period * self.repeats


def find_repetition(
    items: Sequence[Hashable],
    *,
    max_period: int = 24,
    min_repeats: int = 4,
    min_span: int = 12,
) -> Repetition | None:
    """The longest run in ``items`` where one unit of 1..``max_period`` items repeats.

    A run counts as a loop when the unit repeats at least ``min_repeats`` times in a row and
    the run covers at least ``min_span`` items (so "no no no" and "very very" stay legal,
    and a one-item unit needs ``min_span`` repeats).
    """
    n = len(items)
    best: Repetition | None = None
    for period in range(1, min(max_period, n // 2) + 1):
        run = 0  # consecutive i with items[i] == items[i + period]
        for i in range(n - period):
            if items[i] == items[i + period]:
                run += 1
                continue
            best = _better(best, i - run, period, run)
            run = 0
        best = _better(best, n - period - run, period, run)
    if best is None:
        return None
    if best.repeats < min_repeats or best.repeats * best.period < min_span:
        return None
    return best


def _better(best: Repetition | None, start: int, period: int, run: int) -> Repetition | None:
    repeats = (run + period) // period
    if repeats < 2:
        return best
    found = Repetition(start, period, repeats)
    if best is None or found.repeats * found.period > best.repeats * best.period:
        return found
    return best


def text_units(text: str) -> list[str]:
    """Words of ``text``; characters for CJK text (which has no spaces between words)."""
    words = text.split()
    if len(_CJK.findall(text)) > len(words):
        return [c for c in text if not c.isspace()]
    return words


def is_repetitive(text_or_tokens: str | Sequence[Hashable], **limits: int) -> bool:
    """True when decoded text (or token ids) holds a loop (see :func:`find_repetition`)."""
    units = text_units(text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
    return find_repetition(units, **limits) is not None


def trim_repetition(text: str, **limits: int) -> str:
    """``text`` with a loop cut back to its first occurrence (unchanged when there is none)."""
    units = text_units(text)
    rep = find_repetition(units, **limits)
    if rep is None:
        return text
    unit, tail = units[rep.start : rep.start + rep.period], units[rep.end :]
    if tail == unit[: len(tail)]:
        tail = []  # a loop cut off mid-unit by the token budget
    kept = [*units[: rep.start + rep.period], *tail]
    joiner = "" if len(units) != len(text.split()) else " "
    return joiner.join(kept)
