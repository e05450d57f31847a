"""Plots of finished runs, drawn with matplotlib's Agg canvas (no display, no global backend switch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_weight_trajectories(record: Mapping[str, Any], path: str | Path) -> Path:
    """Per task: the per-epoch normalized weights (dots), their EMA (line), the epoch used and the fixed weight.

    The title names the per-epoch statistic and the EMA kind when they are not `002`'s (mean, paper).

    ``record`` is what ``analysis.extract.extract_from_run`` returns.
    """
    tasks = list(record["tasks"])
    epochs = list(record["epochs"])
    used = int(record["epoch"])
    fig = Figure(figsize=(7.5, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _palette(len(tasks))
    at_end = len(epochs) > 1 and used == epochs[-1]
    for task, color in zip(tasks, colors):
        ax.plot(epochs, record["per_epoch"][task], "o", ms=4, alpha=0.55, color=color, label=f"{task} per epoch")
        ax.plot(epochs, record["ema"][task], "-", lw=2, color=color, label=f"{task} EMA")
        final = record["weights"][task]
        ax.plot([used], [final], "*", ms=13, color=color, markeredgecolor="black", markeredgewidth=0.6)
        ax.annotate(f"{task} = {final:.3f}", (used, final), xytext=(-8 if at_end else 8, 5), textcoords="offset points",
                    ha="right" if at_end else "left", fontsize=8)
    ax.axvline(used, ls="--", lw=1, color="0.4", label=f"epoch used ({used})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight (normalized to sum 1 over tasks)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    # the options beyond `002` (per-epoch median, debiased EMA), named only when used
    statistic, kind = record.get("per_epoch_statistic") or "mean", record.get("ema_kind") or "paper"
    options = ("" if statistic == "mean" else f", per-epoch {statistic}") + ("" if kind == "paper" else f", {kind}")
    ax.set_title(
        f"Fixed weights from {record.get('method') or '?'} (run {str(record['source_run_id'])[:8]}, "
        f"{record.get('space') or '?'}): EMA β={record['beta']:g}{options}, epoch {used}",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=2 if len(tasks) <= 4 else 3, loc="best")
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
