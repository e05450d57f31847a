"""Δm and mean rank over a table of methods, as `002` reports them (eq. 1 and eq. 2).

A table maps each method to its metrics, ``{method: {task: {metric: value}}}`` (in a report:
the test metrics of the method's best configuration, averaged over its seeds). Both measures
average within a task over its metrics first and then over tasks (`002` §3: "both metrics
compute the mean within the same task and then the mean of every task"), so a task with many
metrics does not outweigh one with a single metric.

- Δm (`002` eq. 1) is ``trainables.metrics.delta_m`` applied row by row; ``relative_changes``
  gives the per-metric terms (the per-task columns of `002` Tables 3 and 4).
- MR (`002` eq. 2): on each metric the methods are ranked, 1 = best by the metric's direction,
  tied values sharing the mean of their ranks (pandas' ``rank(method="average")``, as the `002`
  authors' ``compute_mean_rank`` in Gabriel-SGama/UnitScal_vs_SMTOs does); a missing value ranks
  last. The ranks are averaged within a task, then over tasks. Lower is better; over K methods
  the mean ranks always average (K + 1) / 2.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from trainables.errors import ConfigError
from trainables.metrics import delta_m

Metrics = Mapping[str, Mapping[str, float]]
Table = Mapping[str, Metrics]
Directions = Mapping[str, Mapping[str, bool]]


def check_reference(reference: Metrics, higher_is_better: Directions, tasks: Sequence[str] | None = None) -> None:
    """A ConfigError naming what is missing, not a number or zero in the single-task references."""
    for task in tasks if tasks is not None else list(higher_is_better):
        for metric in higher_is_better[task]:
            value = reference.get(task, {}).get(metric)
            if value is None:
                raise ConfigError(f"no single-task reference for {task}/{metric}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
                raise ConfigError(f"the single-task reference of {task}/{metric} must be a finite non-zero number, got {value!r}")


def relative_changes(metrics: Metrics, reference: Metrics, higher_is_better: Directions,
                     tasks: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """The terms of `002` eq. 1 in %: (-1)^l (M - M_ref) / |M_ref| * 100, l = 1 where lower is better."""
    tasks = list(higher_is_better) if tasks is None else list(tasks)
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        out[task] = {}
        for metric, higher in higher_is_better[task].items():
            ref = reference[task][metric]
            sign = 1.0 if higher else -1.0
            out[task][metric] = sign * (metrics[task][metric] - ref) / abs(ref) * 100.0
    return out


def delta_m_table(table: Table, reference: Metrics, higher_is_better: Directions,
                  tasks: Sequence[str] | None = None) -> dict[str, float]:
    """Δm (`002` eq. 1, %, higher is better) of every method of ``table`` against ``reference``."""
    tasks = list(higher_is_better) if tasks is None else list(tasks)
    check_reference(reference, higher_is_better, tasks)
    directions = {t: dict(higher_is_better[t]) for t in tasks}
    return {
        method: delta_m({t: {m: metrics[t][m] for m in directions[t]} for t in tasks}, reference, directions, tasks)
        for method, metrics in table.items()
    }


def metric_ranks(table: Table, higher_is_better: Directions, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Rank of every method (rows) on every ``task/metric`` (columns): 1 = best, ties averaged, NaN last."""
    tasks = list(higher_is_better) if tasks is None else list(tasks)
    methods = list(table)
    ranks = {}
    for task in tasks:
        for metric, higher in higher_is_better[task].items():
            values = pd.Series([_value(table[m], task, metric) for m in methods], index=methods, dtype="float64")
            ranks[f"{task}/{metric}"] = values.rank(method="average", ascending=not higher, na_option="bottom")
    return pd.DataFrame(ranks, index=methods)


def mean_rank(table: Table, higher_is_better: Directions, tasks: Sequence[str] | None = None) -> dict[str, float]:
    """MR (`002` eq. 2): per method, the mean over tasks of the mean rank over the task's metrics."""
    tasks = list(higher_is_better) if tasks is None else list(tasks)
    if not table:
        return {}
    ranks = metric_ranks(table, higher_is_better, tasks)
    per_task = pd.DataFrame({t: ranks[[f"{t}/{m}" for m in higher_is_better[t]]].mean(axis=1) for t in tasks})
    return {method: float(value) for method, value in per_task.mean(axis=1).items()}


def _value(metrics: Metrics, task: str, metric: str) -> float:
    value = metrics.get(task, {}).get(metric)
    return math.nan if value is None else float(value)
