"""The PNG chart of an evaluation report (matplotlib, extra ``eval``), drawn on matplotlib's Agg
canvas directly: no pyplot, no global backend change. Reached through
:func:`sttrouter.evaluate.render_chart`, which checks that matplotlib is installed first."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sttrouter.evaluate import EvalReport

__all__ = ["draw"]


def draw(report: EvalReport, path: str | Path) -> Path:
    """Write the PNG of :func:`sttrouter.evaluate.render_chart` (matplotlib is installed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [s.endpoint_id for s in report.endpoints]
    ticks = [f"{s.endpoint_id}\n\\${s.cost_per_hour}/h" for s in report.endpoints]
    x = list(range(len(names)))
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    fig = Figure(figsize=(11, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    (ax_acc, ax_lat), (ax_rtf, ax_item) = fig.subplots(2, 2)
    fig.suptitle(f"sttrouter eval: {Path(report.manifest).name or 'manifest'}", fontsize=14)

    def label(v: float | None, unit: str) -> str:
        if v is None:
            return "n/a"
        if unit == "%":
            return f"{v:.1f}%"
        if unit == "x":
            return f"{v:.3g}x"
        return f"{v:.{0 if abs(v) >= 10 else 1 if abs(v) >= 1 else 3}f}{unit}"

    def bars(
        ax: Any, series: list[tuple[str, list[float | None]]], scale: float, unit: str
    ) -> None:
        width = 0.8 / len(series)
        top = 0.0
        for k, (name, values) in enumerate(series):
            pos = [i + (k - (len(series) - 1) / 2) * width for i in x]
            heights = [0.0 if v is None else v * scale for v in values]
            top = max(top, *heights)
            rects = ax.bar(pos, heights, width, label=name, color=colors[k % len(colors)])
            ax.bar_label(
                rects,
                labels=[label(None if v is None else v * scale, unit) for v in values],
                fontsize=8,
            )
        ax.set_xticks(x, ticks)
        ax.set_ylim(0, (top or 1.0) * 1.3)  # headroom for the labels and the legend
        if len(series) > 1:
            ax.legend(loc="upper center", ncols=len(series), fontsize=8, frameon=False)

    bars(
        ax_acc,
        [("WER", [s.wer for s in report.endpoints]), ("CER", [s.cer for s in report.endpoints])],
        100,
        "%",
    )
    ax_acc.set_title("Accuracy (lower is better)")
    ax_acc.set_ylabel("error rate, %")

    bars(
        ax_lat,
        [
            ("time to first result", [s.mean_first_result_s for s in report.endpoints]),
            ("final latency", [s.mean_final_latency_s for s in report.endpoints]),
        ],
        1000,
        " ms",
    )
    ax_lat.set_title("Latency (mean per clip, lower is better)")
    ax_lat.set_ylabel("milliseconds")

    bars(ax_rtf, [("real-time factor", [s.rtf for s in report.endpoints])], 1, "x")
    ax_rtf.set_ylim(0, max(1.2, ax_rtf.get_ylim()[1]))
    ax_rtf.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax_rtf.text(
        0.01,
        1.0,
        "real time",
        color="grey",
        fontsize=8,
        ha="left",
        va="bottom",
        transform=ax_rtf.get_yaxis_transform(),
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        zorder=5,
    )
    ax_rtf.set_title("Speed: processing time / audio time")
    ax_rtf.set_ylabel("RTF (below 1 = faster than real time)")

    clip_ids = list(dict.fromkeys(r.item_id for r in report.items))
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        by_clip = {r.item_id: r.wer for r in report.items if r.endpoint_id == name}
        pos = [i + (k - (len(names) - 1) / 2) * width for i in range(len(clip_ids))]
        values = [by_clip.get(c) for c in clip_ids]
        rects = ax_item.bar(
            pos,
            [0.0 if v is None else min(v, 2.0) * 100 for v in values],
            width,
            label=name,
            color=colors[k % len(colors)],
        )
        ax_item.bar_label(
            rects, labels=[label(None if v is None else v * 100, "%") for v in values], fontsize=7
        )
    ax_item.set_xticks(range(len(clip_ids)), clip_ids, rotation=30, ha="right", fontsize=8)
    ax_item.set_title("WER per clip")
    ax_item.set_ylabel("WER, % (capped at 200)")
    ax_item.set_ylim(0, max(10.0, ax_item.get_ylim()[1] * 1.3))
    ax_item.legend(loc="upper center", ncols=len(names), fontsize=8, frameon=False)

    for ax in (ax_acc, ax_lat, ax_rtf, ax_item):
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    out = Path(path)
    fig.savefig(out, format="png")
    return out
