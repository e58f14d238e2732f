"""Health views read as one.

A health view is anything with ``is_available(endpoint_id) -> bool``
(:class:`~sttrouter.panel.router.HealthView`, the protocol the router asks): a
:class:`~sttrouter.resilience.BreakerBoard`, a :class:`~sttrouter.resilience.HealthMonitor`, or a
:class:`HealthViews` of several. Views that also take traffic outcomes have
``observe(endpoint_id, ok, reason)``; :class:`HealthViews` forwards those to the views that do.
"""

from __future__ import annotations

from collections.abc import Iterable

from sttrouter.panel.router import HealthView

__all__ = ["HealthView", "HealthViews", "all_available"]


class HealthViews:
    """A changeable set of health views, available only where every one of them is.

    Holders keep the same object while views are added, so a view added later (a health
    monitor started after the first sessions) is seen by every holder at once.
    """

    def __init__(self, views: Iterable[HealthView] = ()) -> None:
        self.views: list[HealthView] = list(views)

    def add(self, view: HealthView) -> None:
        """Also ask ``view`` (a view already held is not added twice)."""
        if not any(v is view for v in self.views):
            self.views.append(view)

    def remove(self, view: HealthView) -> None:
        self.views = [v for v in self.views if v is not view]

    def is_available(self, endpoint_id: str) -> bool:
        return all(view.is_available(endpoint_id) for view in self.views)

    def observe(self, endpoint_id: str, ok: bool, reason: str = "") -> None:
        """Pass the outcome of real traffic to every view that takes one."""
        for view in self.views:
            observe = getattr(view, "observe", None)
            if callable(observe):
                observe(endpoint_id, ok, reason)

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return f"HealthViews({self.views!r})"


def all_available(*views: HealthView | None) -> HealthView:
    """One view that is available only where every given view is (``None``s are ignored).

    A single view is returned as it is; several are combined in a :class:`HealthViews`."""
    kept = [v for v in views if v is not None]
    if len(kept) == 1:
        return kept[0]
    return HealthViews(kept)
