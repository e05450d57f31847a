"""Pareto optimality of runs over their task metrics, and how many optimal runs each group has.

`003` §2 (Pareto optimality): a run θ* is Pareto optimal if no other run θ' is at least as good
on every metric and strictly better on one; the Pareto front is the set of such runs. `003`
Table 2 counts the optimal runs per optimizer, both on the overall front ("PO (full)") and
against the runs of the other optimizer only ("PO w.r.t. SGD"); Table A2 counts them per method.

Each metric has its own direction (``higher_is_better``); the arithmetic is done on
"costs", the metrics negated where higher is better, so smaller is always better. Identical
points do not dominate each other (neither is strictly better), so duplicates on the front all
count. A run with a missing (NaN) metric cannot be compared: it is neither on the front nor
dominates anything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from trainables.errors import ConfigError


def to_costs(points: ArrayLike, higher_is_better: Sequence[bool]) -> np.ndarray:
    """The points as an (n, m) float array in which smaller is better on every column."""
    values = np.asarray(points, dtype=np.float64)
    if values.size == 0:
        values = values.reshape(0, len(higher_is_better))
    if values.ndim != 2:
        raise ConfigError(f"points must be a 2-D table (runs x metrics), got shape {values.shape}")
    if values.shape[1] != len(higher_is_better):
        raise ConfigError(f"{values.shape[1]} metric columns but {len(higher_is_better)} directions")
    signs = np.where(np.asarray(higher_is_better, dtype=bool), -1.0, 1.0)
    return values * signs


def dominates(a: ArrayLike, b: ArrayLike, higher_is_better: Sequence[bool]) -> bool:
    """Whether point ``a`` Pareto-dominates ``b``: at least as good everywhere, strictly better once."""
    costs = to_costs(np.vstack([a, b]), higher_is_better)
    if not np.isfinite(costs).all():
        return False
    return bool((costs[0] <= costs[1]).all() and (costs[0] < costs[1]).any())


def non_dominated(points: ArrayLike, higher_is_better: Sequence[bool], against: ArrayLike | None = None) -> np.ndarray:
    """Boolean mask of the points that no point of ``against`` (default: ``points`` themselves) dominates.

    With the default this is the Pareto front of ``points``; with ``against`` the points of
    another group it is `003` Table 2's "PO w.r.t. SGD". Rows with a NaN are never optimal and
    never dominate.
    """
    costs = to_costs(points, higher_is_better)
    others = costs if against is None else to_costs(against, higher_is_better)
    others = others[np.isfinite(others).all(axis=1)]
    mask = np.zeros(len(costs), dtype=bool)
    for i, point in enumerate(costs):
        if not np.isfinite(point).all():
            continue
        no_worse = (others <= point).all(axis=1)
        better = (others < point).any(axis=1)
        mask[i] = not (no_worse & better).any()
    return mask


def pareto_counts(groups: Sequence[str], on_front: ArrayLike) -> pd.DataFrame:
    """Per group (method, optimizer, ...): runs and runs on the front (`003` Table A2), in first-seen order."""
    frame = pd.DataFrame({"group": list(groups), "pareto_optimal": np.asarray(on_front, dtype=bool)})
    counts = frame.groupby("group", sort=False).agg(runs=("pareto_optimal", "size"), pareto_optimal=("pareto_optimal", "sum"))
    return counts.reset_index().astype({"runs": int, "pareto_optimal": int})


def optimizer_counts(points: ArrayLike, optimizers: Sequence[str], higher_is_better: Sequence[bool]) -> pd.DataFrame:
    """`003` Table 2 for any number of optimizers: runs, "PO (full)" and "PO w.r.t. the others".

    PO (full): runs on the front of all runs. PO w.r.t. others: runs of this optimizer that no run
    of any other optimizer dominates (`003`: "Adam-based runs that are not dominated by any
    SGD-based run").
    """
    values = np.asarray(points, dtype=np.float64)
    names = np.asarray(list(optimizers), dtype=object)
    full = non_dominated(values, higher_is_better)
    rows = []
    for name in dict.fromkeys(names.tolist()):
        mine = names == name
        versus = non_dominated(values[mine], higher_is_better, against=values[~mine])  # all valid runs if alone
        rows.append({"optimizer": name, "runs": int(mine.sum()), "pareto_optimal": int(full[mine].sum()),
                     "pareto_optimal_vs_others": int(versus.sum())})
    return pd.DataFrame(rows, columns=["optimizer", "runs", "pareto_optimal", "pareto_optimal_vs_others"])
