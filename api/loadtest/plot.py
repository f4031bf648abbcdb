"""A PNG: latency CDF per measure, and callers over time (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

CDF_MEASURES = (
    ("join_ms", "join"),
    ("first_message_ms", "first message"),
    ("first_audio_ms", "first audio (voice)"),
    ("turn_ms", "turn (caller)"),
    ("barge_in_ms", "barge-in reaction (voice)"),
    ("ack_ms", "ack"),
    ("server_turn_ms", "turn (server stages)"),
)


def write_plot(
    path: Path,
    samples: Mapping[str, Sequence[float]],
    timeline: Sequence[Sequence[float]],
    *,
    title: str,
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    cdf, over_time = fig.subplots(1, 2, width_ratios=(3, 2))
    for key, label in CDF_MEASURES:
        values = sorted(v for v in samples.get(key, ()) if v > 0)
        if not values:
            continue
        n = len(values)
        ys = [(i + 1) / n for i in range(n)]
        style = "--" if key.startswith("server") else "-"
        cdf.step(values, ys, where="post", linestyle=style, label=f"{label} (n={n})")
    cdf.set_xscale("log")
    cdf.set_xlabel("milliseconds (log)")
    cdf.set_ylabel("fraction ≤ x")
    cdf.set_ylim(0, 1.01)
    for q in (0.5, 0.95, 0.99):
        cdf.axhline(q, color="grey", linewidth=0.5, linestyle=":")
    cdf.grid(True, which="both", linewidth=0.3)
    cdf.set_title("latency CDF")
    if cdf.get_legend_handles_labels()[0]:
        cdf.legend(loc="lower right", fontsize="small")

    if timeline:
        ts = [row[0] for row in timeline]
        over_time.step(ts, [row[1] for row in timeline], where="post", label="callers active")
        over_time.step(ts, [row[2] for row in timeline], where="post", label="connected (websockets / peers)")
        over_time.step(ts, [row[3] for row in timeline], where="post", label="sessions open", linestyle="--")
        over_time.legend(loc="upper right", fontsize="small")
    over_time.set_xlabel("seconds since start")
    over_time.set_ylabel("count")
    over_time.set_ylim(bottom=0)
    over_time.grid(True, linewidth=0.3)
    over_time.set_title("callers over time")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
