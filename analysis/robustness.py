"""Corruption robustness of multi-task vs single-task models (`003` §4.3, eq. 6): δ tables and figure.

`003` eq. (6), for task t (here: each metric of t, as `003` Table 3 and A8/A9 report them),
corruption c in C and severity s in S:

    δ_{t,c,s} = M^{MTL,corrupted}_{t,c,s} / M^{MTL,clean}_t  −  M^{STL,corrupted}_{t,c,s} / M^{STL,clean}_t
    δ_t       = 1 / (|C| |S|) · Σ_c Σ_s (−1)^{p(t)} δ_{t,c,s}

with p(t) = 1 if a higher value of the metric is better, else 0. Sign convention (`003` §4.3):
δ_t < 0 means the MTL model handled the corruption better (it kept more of its clean
performance than the STL model), δ_t > 0 that the STL model is more robust. The per-corruption
values (`003` Figure 4) are the same signed δ averaged over the severities only.

This module only computes: it takes metric tables already evaluated (``searcher.robustness``
evaluates the models) and returns pandas tables and a matplotlib figure.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: The condition of the uncorrupted test set.
CLEAN = ("clean", 0)
#: One evaluation of one model: {(corruption, severity) or CLEAN: {task: {metric: value}}}.
Evaluation = Mapping[tuple[str, int], Mapping[str, Mapping[str, float]]]

CONVENTION = ("δ = (−1)^p(t) · (M_MTL,c,s / M_MTL,clean − M_STL,c,s / M_STL,clean), p(t) = 1 where higher is "
              "better (`003` eq. 6): δ < 0: MTL kept more of its clean performance (more robust); δ > 0: STL did")


def relative(evaluation: Evaluation, task: str, metric: str, condition: tuple[str, int]) -> float:
    """M_{t,c,s} / M_{t,clean} of one model (NaN when the clean value is 0 or missing)."""
    clean = evaluation[CLEAN][task][metric]
    value = evaluation[condition][task][metric]
    return value / clean if clean != 0 and math.isfinite(clean) else math.nan


def delta_table(
    mtl: Mapping[str, Evaluation],
    stl: Mapping[str, Sequence[Evaluation]],
    directions: Mapping[str, Mapping[str, bool]],
) -> pd.DataFrame:
    """δ_{t,c,s} of every MTL run (``mtl``: run id -> evaluation) against the single-task models of
    each task (``stl``: task -> evaluations of its STL runs, their relative performances averaged
    over them, e.g. over seeds). ``directions``: task -> metric -> higher is better.

    Columns: run, task, metric, higher_is_better, corruption, severity, mtl_clean, mtl, stl_clean,
    stl (STL values: means over its runs), mtl_relative, stl_relative, delta (δ_{t,c,s}, eq. 6),
    signed_delta ((−1)^p(t) δ_{t,c,s}: the sign convention of δ_t).
    """
    rows = []
    for run, evaluation in mtl.items():
        conditions = [c for c in evaluation if c != CLEAN]
        for task, metrics in directions.items():
            references = list(stl[task])
            for metric, higher in metrics.items():
                for condition in conditions:
                    m_rel = relative(evaluation, task, metric, condition)
                    s_rel = float(np.mean([relative(e, task, metric, condition) for e in references]))
                    delta = m_rel - s_rel
                    rows.append({
                        "run": run, "task": task, "metric": metric, "higher_is_better": bool(higher),
                        "corruption": condition[0], "severity": int(condition[1]),
                        "mtl_clean": evaluation[CLEAN][task][metric], "mtl": evaluation[condition][task][metric],
                        "stl_clean": float(np.mean([e[CLEAN][task][metric] for e in references])),
                        "stl": float(np.mean([e[condition][task][metric] for e in references])),
                        "mtl_relative": m_rel, "stl_relative": s_rel, "delta": delta,
                        "signed_delta": -delta if higher else delta,
                    })
    return pd.DataFrame(rows, columns=["run", "task", "metric", "higher_is_better", "corruption", "severity",
                                       "mtl_clean", "mtl", "stl_clean", "stl", "mtl_relative", "stl_relative",
                                       "delta", "signed_delta"])


def by_corruption(deltas: pd.DataFrame) -> pd.DataFrame:
    """Signed δ per task, metric and corruption, the mean over severities (and over the MTL runs):
    `003` Figure 4. Corruptions keep the order they were evaluated in."""
    order = list(dict.fromkeys(deltas["corruption"]))
    table = (deltas.groupby(["task", "metric", "corruption"], sort=False)["signed_delta"].mean()
             .rename("delta").reset_index())
    table["corruption"] = pd.Categorical(table["corruption"], order, ordered=True)
    return table.sort_values(["task", "metric", "corruption"], kind="stable").reset_index(drop=True)


def summary(deltas: pd.DataFrame) -> pd.DataFrame:
    """δ_t (`003` eq. 6) per task and metric: the mean of the signed δ over corruptions and severities
    (and over the MTL runs, as `003` averages three runs); ``runs`` counts them. A task with several
    metrics gets one more row, metric ``mean``, the mean over its metrics."""
    rows = []
    for (task, metric), group in deltas.groupby(["task", "metric"], sort=False):
        rows.append({"task": task, "metric": metric, "delta_t": float(group["signed_delta"].mean()),
                     "runs": int(group["run"].nunique())})
    table = pd.DataFrame(rows, columns=["task", "metric", "delta_t", "runs"])
    extra = [{"task": task, "metric": "mean", "delta_t": float(g["delta_t"].mean()), "runs": int(g["runs"].max())}
             for task, g in table.groupby("task", sort=False) if len(g) > 1]
    return pd.concat([table, pd.DataFrame(extra, columns=table.columns)], ignore_index=True) if extra else table


def plot(corruptions: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Heat map of the signed δ per corruption (columns) and task metric (rows), as `003` Figure 4:
    red where the STL model is more robust (δ > 0), blue where the MTL model is (δ < 0)."""
    rows = list(dict.fromkeys(f"{t}/{m}" for t, m in zip(corruptions["task"], corruptions["metric"])))
    cols = [str(c) for c in dict.fromkeys(corruptions["corruption"])]
    grid = np.full((len(rows), len(cols)), np.nan)
    for _, r in corruptions.iterrows():
        grid[rows.index(f"{r['task']}/{r['metric']}"), cols.index(str(r["corruption"]))] = r["delta"]
    finite = np.abs(grid[np.isfinite(grid)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig = Figure(figsize=(max(6.0, 0.75 * len(cols) + 2.5), 1.0 + 0.6 * len(rows) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(grid[i, j]) > 0.6 * limit else "black")
    fig.colorbar(image, ax=ax, label="δ (< 0: MTL more robust)")
    ax.set_title(textwrap.fill(title or "Corruption robustness, MTL vs STL (`003` eq. 6), mean over severities", 60),
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
