"""The figures of ``searcher report``: a static PNG (matplotlib's Agg canvas) and an interactive HTML (plotly) each.

- two metric columns: a scatter of the runs with the Pareto front (`003` §2) and the
  single-task references;
- more: parallel coordinates, one axis per metric, every axis oriented so that up is better,
  Pareto-optimal runs drawn bold and saturated, the others faint (as `003` Figure 2);
- the per-epoch task weights of each SMTO's best run (as `002` Figure 6);
- the gradient diagnostics over epochs, between tasks beside between samples (as `003` Figure 3).

The HTML files embed plotly.js, so they open without a network (e.g. on a cluster) and in
the MLflow UI's artifact viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

#: Marker of each optimizer in the scatter (others get "D").
OPTIMIZER_MARKERS = {"adam": "o", "adamw": "^", "sgd": "s"}
PLOTLY_SYMBOLS = {"o": "circle", "^": "triangle-up", "s": "square", "D": "diamond"}


def palette(labels: Sequence[str]) -> dict[str, str]:
    """One colour per label (hex, shared by matplotlib and plotly), stable for a given set of labels."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    names = list(dict.fromkeys(labels))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: to_hex(cmap(i % cmap.N)) for i, name in enumerate(names)}


def direction_label(column: str, higher_is_better: bool) -> str:
    return f"{column} ({'higher' if higher_is_better else 'lower'} is better)"


def better_arrow(x_higher: bool, y_higher: bool) -> str:
    """The direction of the better corner of a scatter (the front lies towards it)."""
    return {(True, True): "↗", (True, False): "↘", (False, True): "↖", (False, False): "↙"}[(x_higher, y_higher)]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _write_html(fig: Any, path: Path) -> Path:
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


# ------------------------------------------------------------------ two metrics: scatter and front


def pareto_scatter(runs: pd.DataFrame, columns: Sequence[str], higher_is_better: Sequence[bool],
                   references: Mapping[str, float], title: str, png: str | Path, html: str | Path) -> tuple[Path, Path]:
    """Scatter of the runs on two metrics, the front joined by a line; dashed lines at the single-task references.

    ``runs`` has one row per point with ``label`` (method), ``optimizer``, ``run_name``,
    ``run_id``, ``pareto_optimal``, the two metric ``columns`` and, where a point is the mean
    of several seeds, ``<column> std`` (drawn as error bars).
    """
    x, y = columns
    hx, hy = higher_is_better
    colors = palette(runs["label"])
    fig = _new_figure(7.5, 5.5)
    ax = fig.add_subplot()
    for label, group in runs.groupby("label", sort=False):
        for optimizer, sub in group.groupby("optimizer", sort=False):
            marker = OPTIMIZER_MARKERS.get(str(optimizer), "D")
            front = sub["pareto_optimal"].to_numpy(bool)
            if f"{x} std" in sub and f"{y} std" in sub:  # a configuration's spread over its seeds
                ax.errorbar(sub[x], sub[y], xerr=sub[f"{x} std"].fillna(0), yerr=sub[f"{y} std"].fillna(0), fmt="none",
                            ecolor=colors[label], alpha=0.5, lw=0.9, zorder=1)
            ax.scatter(sub[x][~front], sub[y][~front], marker=marker, s=28, color=colors[label], alpha=0.45, linewidths=0)
            ax.scatter(sub[x][front], sub[y][front], marker=marker, s=70, color=colors[label], edgecolors="black",
                       linewidths=1.2, zorder=3)
    front = runs[runs["pareto_optimal"]].sort_values(x)
    if len(front) > 1:
        ax.plot(front[x], front[y], "-", color="black", lw=1, alpha=0.7, zorder=2)
    for column, vertical in ((x, True), (y, False)):
        if column in references:
            line = ax.axvline if vertical else ax.axhline
            line(references[column], ls="--", lw=1, color="0.35")
            if vertical:
                ax.annotate(f"single-task {column}", (references[column], 1), xycoords=("data", "axes fraction"),
                            xytext=(3, -3), textcoords="offset points", rotation=90, va="top", fontsize=7, color="0.3")
            else:
                ax.annotate(f"single-task {column}", (0, references[column]), xycoords=("axes fraction", "data"),
                            xytext=(3, 3), textcoords="offset points", fontsize=7, color="0.3")
    ax.set_xlabel(direction_label(x, hx))
    ax.set_ylabel(direction_label(y, hy))
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=c, label=label) for label, c in colors.items()]
    handles += [Line2D([], [], ls="", marker=OPTIMIZER_MARKERS.get(str(o), "D"), color="0.5", label=str(o))
                for o in dict.fromkeys(runs["optimizer"])]
    handles.append(Line2D([], [], ls="-", marker="o", color="black", markerfacecolor="white", label="Pareto front"))
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.85)
    ax.set_title(f"{title}; better: {better_arrow(hx, hy)}", fontsize=10)
    png = Path(png)
    fig.savefig(png, format="png")
    return png, _pareto_scatter_html(runs, columns, higher_is_better, references, colors, title, Path(html))


def _pareto_scatter_html(runs: pd.DataFrame, columns: Sequence[str], higher_is_better: Sequence[bool],
                         references: Mapping[str, float], colors: Mapping[str, str], title: str, path: Path) -> Path:
    import plotly.graph_objects as go

    x, y = columns
    fig = go.Figure()
    for label, group in runs.groupby("label", sort=False):
        symbols = [PLOTLY_SYMBOLS[OPTIMIZER_MARKERS.get(str(o), "D")] for o in group["optimizer"]]
        front = group["pareto_optimal"].to_numpy(bool)
        fig.add_trace(go.Scatter(
            x=group[x], y=group[y], mode="markers", name=str(label),
            marker={"color": colors[label], "symbol": symbols, "size": np.where(front, 13, 8).tolist(),
                    "line": {"color": "black", "width": np.where(front, 1.5, 0).tolist()},
                    "opacity": 0.9},
            customdata=np.stack([group["run_name"], group["run_id"], group["optimizer"],
                                 np.where(front, "yes", "no")], axis=1),
            hovertemplate=(f"%{{customdata[0]}} (%{{customdata[1]}})<br>optimizer %{{customdata[2]}}<br>"
                           f"{x} = %{{x:.5g}}<br>{y} = %{{y:.5g}}<br>Pareto-optimal: %{{customdata[3]}}<extra>{label}</extra>"),
        ))
    front = runs[runs["pareto_optimal"]].sort_values(x)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", name="Pareto front", hoverinfo="skip",
                                 line={"color": "black", "width": 1}))
    if x in references:
        fig.add_vline(x=references[x], line_dash="dash", line_color="gray", annotation_text=f"single-task {x}")
    if y in references:
        fig.add_hline(y=references[y], line_dash="dash", line_color="gray", annotation_text=f"single-task {y}")
    hx, hy = higher_is_better
    fig.update_layout(title=f"{title}; better: {better_arrow(hx, hy)}", xaxis_title=direction_label(x, hx),
                      yaxis_title=direction_label(y, hy),
                      legend_title_text="method", template="plotly_white")
    return _write_html(fig, path)


# ------------------------------------------------------------------ more metrics: parallel coordinates


def parallel_coordinates(runs: pd.DataFrame, columns: Sequence[str], higher_is_better: Sequence[bool],
                         title: str, png: str | Path, html: str | Path) -> tuple[Path, Path]:
    """One vertical axis per metric, scaled to its range and flipped where lower is better (up = better)."""
    colors = palette(runs["label"])
    values = runs[list(columns)].to_numpy(dtype=float)
    lo, hi = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (values - lo) / span
    flip = ~np.asarray(higher_is_better, dtype=bool)
    scaled[:, flip] = 1.0 - scaled[:, flip]
    positions = np.arange(len(columns))
    fig = _new_figure(max(6.0, 1.6 * len(columns) + 2.5), 5.0)
    ax = fig.add_subplot()
    front = runs["pareto_optimal"].to_numpy(bool)
    for order in (False, True):  # faint lines first, the front on top
        for i in np.flatnonzero(front == order):
            label = runs["label"].iloc[i]
            ax.plot(positions, scaled[i], color=colors[label], lw=2.2 if order else 0.8, alpha=0.95 if order else 0.3,
                    zorder=3 if order else 1)
    for p, column in enumerate(columns):
        ax.axvline(p, color="0.3", lw=0.8)
        top, bottom = (hi[p], lo[p]) if higher_is_better[p] else (lo[p], hi[p])
        ax.annotate(f"{top:.4g}", (p, 1.0), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.annotate(f"{bottom:.4g}", (p, 0.0), xytext=(0, -4), textcoords="offset points", ha="center", va="top", fontsize=7)
    ax.set_xticks(positions, [f"{c}\n({'higher' if h else 'lower'} is better)" for c, h in zip(columns, higher_is_better)],
                  fontsize=8)
    ax.set_yticks([0, 1], ["worst", "best"])
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlim(-0.3, len(columns) - 0.7)
    ax.set_ylabel("scaled to the runs' range (up = better)")
    handles = [Line2D([], [], color=c, lw=2, label=label) for label, c in colors.items()]
    handles += [Line2D([], [], color="0.2", lw=2.2, label="Pareto-optimal"),
                Line2D([], [], color="0.2", lw=0.8, alpha=0.4, label="dominated")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title, fontsize=10)
    png = Path(png)
    fig.savefig(png, format="png")
    return png, _parallel_html(runs, columns, higher_is_better, colors, title, Path(html))


def _parallel_html(runs: pd.DataFrame, columns: Sequence[str], higher_is_better: Sequence[bool],
                   colors: Mapping[str, str], title: str, path: Path) -> Path:
    import plotly.graph_objects as go

    labels = list(colors)
    codes = runs["label"].map({label: i for i, label in enumerate(labels)}).to_numpy(float)
    n = max(len(labels) - 1, 1)
    if len(labels) > 1:
        scale = [[i / n, colors[label]] for i, label in enumerate(labels)]
    else:
        scale = [[0, colors[labels[0]]], [1, colors[labels[0]]]]
    dimensions = []
    for column, higher in zip(columns, higher_is_better):
        values = runs[column].to_numpy(float)
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        dimensions.append({"label": f"{column} {'↑' if higher else '↓'}", "values": values,
                           "range": [lo, hi] if higher else [hi, lo]})
    dimensions.append({"label": "Pareto-optimal", "values": runs["pareto_optimal"].astype(int).to_numpy(),
                       "tickvals": [0, 1], "ticktext": ["no", "yes"], "range": [0, 1]})
    fig = go.Figure(go.Parcoords(
        line={"color": codes, "colorscale": scale, "cmin": 0, "cmax": n, "showscale": True,
              "colorbar": {"tickvals": list(range(len(labels))), "ticktext": labels, "title": {"text": "method"}}},
        dimensions=dimensions,
    ))
    fig.update_layout(title=f"{title} (every axis: up = better; drag on an axis to filter)", template="plotly_white")
    return _write_html(fig, path)


# ------------------------------------------------------------------ weight trajectories


def normalized_rows(rows: Sequence[Sequence[float]]) -> tuple[np.ndarray, bool]:
    """Each epoch's weights divided by their sum (as `002` §3.5 normalizes them); raw if a sum is not positive."""
    raw = np.asarray(rows, dtype=float)
    sums = raw.sum(axis=1, keepdims=True)
    if (sums > 0).all() and np.isfinite(raw).all():
        return raw / sums, True
    return raw, False


def weight_trajectories(histories: Mapping[str, Mapping[str, Any]], title: str,
                        png: str | Path, html: str | Path) -> tuple[Path, Path]:
    """One panel per SMTO: its best run's per-epoch task weights (``weight/<task>``), normalized to sum 1.

    ``histories`` maps a method to ``{"run_name", "run_id", "tasks", "epochs", "rows"}``.
    """
    methods = list(histories)
    ncols = min(3, len(methods))
    nrows = -(-len(methods) // ncols)
    fig = _new_figure(4.2 * ncols + 0.5, 3.2 * nrows + 0.4)
    tasks_all = list(dict.fromkeys(t for h in histories.values() for t in h["tasks"]))
    colors = palette(tasks_all)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, method in zip(axes.flat, methods):
        h = histories[method]
        values, normalized = normalized_rows(h["rows"])
        for i, task in enumerate(h["tasks"]):
            ax.plot(h["epochs"], values[:, i], "-o", ms=3, lw=1.5, color=colors[task], label=task)
        ax.set_title(f"{method} (run {h['run_name']})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("weight (sum 1 over tasks)" if normalized else "weight (as applied)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2 if len(h["tasks"]) > 4 else 1)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    png = Path(png)
    fig.savefig(png, format="png")
    return png, _weights_html(histories, colors, title, Path(html))


def _weights_html(histories: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str], title: str, path: Path) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    methods = list(histories)
    ncols = min(3, len(methods))
    nrows = -(-len(methods) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[f"{m} (run {histories[m]['run_name']})" for m in methods])
    shown: set[str] = set()
    for k, method in enumerate(methods):
        h = histories[method]
        values, _ = normalized_rows(h["rows"])
        for i, task in enumerate(h["tasks"]):
            fig.add_trace(go.Scatter(x=h["epochs"], y=values[:, i], mode="lines+markers", name=task, legendgroup=task,
                                     showlegend=task not in shown, line={"color": colors[task]},
                                     hovertemplate=f"{method}: {task}<br>epoch %{{x}}<br>weight %{{y:.4f}}<extra></extra>"),
                          row=k // ncols + 1, col=k % ncols + 1)
            shown.add(task)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="weight")
    fig.update_layout(title=title, template="plotly_white", legend_title_text="task")
    return _write_html(fig, path)


# ------------------------------------------------------------------ budget curves (Dodge et al. 2019)


def _budget_band(group: pd.DataFrame, mean: str, std: str, lo: str, hi: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and mean ± std clipped to the method's observed [min, max] (as Dodge et al. draw it)."""
    m = group[mean].to_numpy(float)
    s = np.nan_to_num(group[std].to_numpy(float))
    low = group[lo].to_numpy(float) if lo in group else np.full_like(m, -np.inf)
    high = group[hi].to_numpy(float) if hi in group else np.full_like(m, np.inf)
    low, high = np.where(np.isnan(low), -np.inf, low), np.where(np.isnan(high), np.inf, high)
    return m, np.clip(m - s, low, high), np.clip(m + s, low, high)


def _budget_panels(curves: pd.DataFrame, val_label: str, has_test: bool) -> list[tuple[str, str, str, str, str, str]]:
    """(mean, std, min, max columns, y label, panel title) of each panel to draw."""
    panels = [("expected_best_val", "expected_best_val_std", "val_min", "val_max", f"expected {val_label}",
               "best validation score after n trials")]
    if has_test and "expected_test_delta_m" in curves and curves["expected_test_delta_m"].notna().any():
        panels.append(("expected_test_delta_m", "expected_test_delta_m_std", "test_delta_m_min", "test_delta_m_max",
                       "expected test Δm (%) of that trial (higher is better)",
                       "test Δm of the best-on-validation trial"))
    return panels


def budget_curves(curves: pd.DataFrame, title: str, png: str | Path, html: str | Path,
                  val_label: str = "best validation score", has_test: bool = True) -> tuple[Path, Path]:
    """Expected best validation score, and test Δm of that trial, vs the number of trials (Dodge et al. 2019, §3).

    ``curves`` is ``analysis.budget.budget_curves``'s table. One line per method, a band of
    mean ± std clipped to the method's observed range; a line ends at the method's number of
    trials (marked by a larger dot). Without test Δm (``has_test`` false or the column all NaN)
    only the left panel is drawn, with a note saying why.
    """
    methods = list(dict.fromkeys(curves["method"]))
    colors = palette(methods)
    panels = _budget_panels(curves, val_label, has_test)
    fig = _new_figure(5.0 * len(panels) + 2.2, 4.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    n_top = int(curves["trials"].max()) if len(curves) else 1
    for ax, (mean, std, lo, hi, ylabel, panel_title) in zip(axes, panels):
        for method in methods:
            group = curves[curves["method"] == method].sort_values("trials")
            n = group["trials"].to_numpy(int)
            m, low, high = _budget_band(group, mean, std, lo, hi)
            ax.fill_between(n, low, high, color=colors[method], alpha=0.15, linewidth=0)
            ax.plot(n, m, "-", marker="o" if n_top <= 30 else None, ms=3, lw=1.8, color=colors[method])
            if len(n):
                ax.plot(n[-1:], m[-1:], "o", ms=7, color=colors[method], markeredgecolor="black", markeredgewidth=0.8)
        if mean == "expected_test_delta_m":
            ax.axhline(0.0, ls="--", lw=1, color="0.35")
            ax.annotate("single-task level (Δm = 0)", (1, 0), xycoords=("axes fraction", "data"), xytext=(-3, 3),
                        textcoords="offset points", ha="right", fontsize=7, color="0.3")
        ax.set_xlim(0.5, n_top + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("number of trials")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(alpha=0.3)
    if len(panels) == 1:
        axes[0].annotate("no test Δm (no single-task references)", (1, 0), xycoords="axes fraction", xytext=(-4, 4),
                         textcoords="offset points", ha="right", va="bottom", fontsize=7, color="0.3")
    handles = [Line2D([], [], color=c, lw=2, marker="o", ms=4, label=f"{label} (N={_trials_of(curves, label)})")
               for label, c in colors.items()]
    handles.append(Line2D([], [], ls="", marker="o", ms=7, color="0.6", markeredgecolor="black", label="N: trials run"))
    handles.append(Line2D([], [], color="0.6", lw=6, alpha=0.3, label="± std (clipped to observed)"))
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=min(len(handles), 3 * len(panels)))
    fig.suptitle(title, fontsize=10)
    png = Path(png)
    fig.savefig(png, format="png")
    return png, _budget_html(curves, panels, colors, title, Path(html))


def _trials_of(curves: pd.DataFrame, method: str) -> int:
    group = curves[curves["method"] == method]
    return int(group["trials_available"].max()) if "trials_available" in group and len(group) else len(group)


def _rgba(color: str, alpha: float) -> str:
    from matplotlib.colors import to_rgb

    r, g, b = (int(round(255 * c)) for c in to_rgb(color))
    return f"rgba({r},{g},{b},{alpha})"


def _budget_html(curves: pd.DataFrame, panels: Sequence[tuple[str, str, str, str, str, str]],
                 colors: Mapping[str, str], title: str, path: Path) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[5] for p in panels])
    for col, (mean, std, lo, hi, ylabel, _) in enumerate(panels, start=1):
        for method, color in colors.items():
            group = curves[curves["method"] == method].sort_values("trials")
            n = group["trials"].to_numpy(int)
            m, low, high = _budget_band(group, mean, std, lo, hi)
            fig.add_trace(go.Scatter(x=n, y=high, mode="lines", line={"width": 0}, legendgroup=method, showlegend=False,
                                     hoverinfo="skip"), row=1, col=col)
            fig.add_trace(go.Scatter(x=n, y=low, mode="lines", line={"width": 0}, fill="tonexty",
                                     fillcolor=_rgba(color, 0.15), legendgroup=method, showlegend=False,
                                     hoverinfo="skip"), row=1, col=col)
            fig.add_trace(go.Scatter(
                x=n, y=m, mode="lines+markers", name=f"{method} (N={_trials_of(curves, method)})", legendgroup=method,
                showlegend=col == 1, line={"color": color}, marker={"size": 5},
                customdata=np.stack([group[std].to_numpy(float)], axis=1),
                hovertemplate=f"{method}<br>%{{x}} trials<br>{ylabel}: %{{y:.5g}} ± %{{customdata[0]:.3g}}<extra></extra>",
            ), row=1, col=col)
        if mean == "expected_test_delta_m":
            fig.add_hline(y=0.0, line_dash="dash", line_color="gray", annotation_text="single-task level (Δm = 0)",
                          row=1, col=col)
        fig.update_yaxes(title_text=ylabel, row=1, col=col)
    fig.update_xaxes(title_text="number of trials", tickformat="d", dtick=1 if curves["trials"].max() <= 20 else None)
    if len(panels) == 1:
        title += " (no test Δm: no single-task references)"
    fig.update_layout(title=title, template="plotly_white", legend_title_text="method")
    return _write_html(fig, path)


# ------------------------------------------------------------------ gradient diagnostics over epochs (`003` Figure 3)


def diagnostic_panels(curves: Any, level: str) -> list[tuple[str, list[Any], list[Any]]]:
    """Per measure at ``level`` (rows of the figure): the curves between tasks of the multi-task rows
    (left panel) and between samples of every row (right panel; none for FD, which has no
    between-sample form). ``curves``: ``analysis.diagnostic_curves.DiagnosticCurves``."""
    return [(measure, [s for s in curves.select(level, measure, "tasks") if not s.single_task],
             curves.select(level, measure, "samples")) for measure in curves.measures(level)]


def diagnostic_figure(curves: Any, level: str, title: str, png: str | Path, html: str | Path) -> tuple[Path, Path]:
    """Rows: the measures at ``level``; left: between tasks (MTL methods), right: between samples
    (single-task rows dashed, MTL solid), the y axis shared in a row so the two compare as in
    `003` Figure 3. Each line is a row's mean over its best configuration's runs, ± std band."""
    from analysis.diagnostic_curves import DESCRIPTIONS

    panels = diagnostic_panels(curves, level)
    colors = palette([s.label for s in curves.series])
    fig = _new_figure(11.0, 2.8 * len(panels) + 0.8)
    axes = fig.subplots(len(panels), 2, squeeze=False, sharex=True)
    for row, (measure, tasks, samples) in enumerate(panels):
        left, right = axes[row]
        right.sharey(left)
        for ax, series, scope in ((left, tasks, "between tasks (MTL)"), (right, samples, "between samples (STL and MTL)")):
            for s in series:
                style = "--" if s.single_task else "-"
                ax.plot(s.epochs, s.mean, style, marker="o", ms=3, lw=1.6, color=colors[s.label], label=s.label)
                if any(n > 1 for n in s.runs):
                    mean, std = np.asarray(s.mean, float), np.nan_to_num(np.asarray(s.std, float))
                    ax.fill_between(s.epochs, mean - std, mean + std, color=colors[s.label], alpha=0.15, linewidth=0)
            ax.set_title(f"{measure}, {scope}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if not series:
                ax.annotate("no between-sample measure logged" if scope.startswith("between samples") else "no multi-task run",
                            (0.5, 0.5), xycoords="axes fraction", ha="center", fontsize=8, color="0.4")
        left.set_ylabel(DESCRIPTIONS.get(measure, measure), fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    handles = [Line2D([], [], color=c, lw=2, ls="--" if any(s.single_task for s in curves.series if s.label == label) else "-",
                      label=label) for label, c in colors.items()]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=min(len(handles), 5))
    fig.suptitle(title, fontsize=10)
    png = Path(png)
    fig.savefig(png, format="png")
    return png, _diagnostic_html(panels, colors, title, Path(html))


def _diagnostic_html(panels: Sequence[tuple[str, list[Any], list[Any]]], colors: Mapping[str, str], title: str,
                     path: Path) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from analysis.diagnostic_curves import DESCRIPTIONS

    titles = [f"{m}, {scope}" for m, _, _ in panels for scope in ("between tasks (MTL)", "between samples (STL and MTL)")]
    fig = make_subplots(rows=len(panels), cols=2, shared_yaxes="rows", shared_xaxes=True, subplot_titles=titles)
    shown: set[str] = set()
    for row, (measure, tasks, samples) in enumerate(panels, start=1):
        for col, series in ((1, tasks), (2, samples)):
            for s in series:
                fig.add_trace(go.Scatter(
                    x=s.epochs, y=s.mean, mode="lines+markers", name=s.label, legendgroup=s.label,
                    showlegend=s.label not in shown, line={"color": colors[s.label], "dash": "dash" if s.single_task else "solid"},
                    customdata=np.stack([np.asarray(s.std, float), np.asarray(s.runs, float)], axis=1),
                    hovertemplate=(f"{s.label}: {measure} ({s.between})<br>epoch %{{x}}<br>%{{y:.4f}} ± %{{customdata[0]:.3g}}"
                                   "<br>runs %{customdata[1]}<extra></extra>")), row=row, col=col)
                shown.add(s.label)
        fig.update_yaxes(title_text=DESCRIPTIONS.get(measure, measure).replace("`", ""), row=row, col=1)
    fig.update_xaxes(title_text="epoch", row=len(panels))
    fig.update_layout(title=title, template="plotly_white", legend_title_text="method", height=300 * len(panels) + 150)
    return _write_html(fig, path)
