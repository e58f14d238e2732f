"""Per-stream options: what a caller may ask of one stream, passed to every engine.

:class:`StreamOptions` is given to ``start_streaming``. Every field left at ``None`` (or empty)
means "the engine's default" and is accepted by every engine. A field set to a value is either
honoured by the engine or refused with :class:`~sttrouter.errors.UnsupportedOption` when the
stream starts — never silently ignored. Which fields an engine honours is data
(``BaseSTTService.supported_options``), checked in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

from sttrouter.errors import ConfigError

__all__ = ["OPTION_NAMES", "StreamOptions"]

_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def _language(value: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not _LANGUAGE.match(text):
        raise ConfigError(
            f"language must be a BCP-47 code such as 'en' or 'en-US', got {value!r}",
            field="language",
        )
    return text


def _keywords(value: Iterable[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    out = tuple(str(v).strip() for v in value)
    if any(not v for v in out):
        raise ConfigError("keywords must be non-empty strings", field="keywords")
    return out


@attrs.frozen
class StreamOptions:
    """What one stream asks of its engine.

    Attributes:
        language: BCP-47 code of the spoken language (``None``: the engine's default).
        keywords: words or phrases to favour (Deepgram keyterms, AssemblyAI keyterms, an
            OpenAI-style ``prompt`` for GLM-ASR servers).
        prompt: free text that conditions the decoder (OpenAI-compatible servers).
        interim_results: ``False`` asks for finals only. Every engine honours it: the
            service drops interim results itself when the engine cannot be told.
        punctuate: ``True``/``False`` asks for punctuated or bare text; ``None`` leaves the
            engine's default.
    """

    language: str | None = attrs.field(default=None, converter=_language)
    keywords: tuple[str, ...] = attrs.field(default=(), converter=_keywords)
    prompt: str | None = None
    interim_results: bool = True
    punctuate: bool | None = None

    def requested(self) -> dict[str, Any]:
        """The options set away from their defaults, by name (what an engine must honour).

        ``interim_results`` is never listed: every service can drop interims itself.
        """
        out: dict[str, Any] = {}
        if self.language is not None:
            out["language"] = self.language
        if self.keywords:
            out["keywords"] = self.keywords
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.punctuate is not None:
            out["punctuate"] = self.punctuate
        return out


OPTION_NAMES = frozenset({"language", "keywords", "prompt", "punctuate"})
"""The option names an engine may list in ``supported_options``."""
