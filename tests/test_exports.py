"""The public surface is listed once and stays importable."""

from __future__ import annotations

import sttrouter
import sttrouter.testing


def test_top_level_all_is_sorted_unique_and_importable() -> None:
    names = sttrouter.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(sttrouter, name), name


def test_testing_all_is_importable() -> None:
    for name in sttrouter.testing.__all__:
        assert hasattr(sttrouter.testing, name), name
