"""Ranking Similarity (`004` §5.3, eq. 9): does a gradient measure order the methods as their test results do?

`004` eq. 9: for n items and two rankings R1, R2,

    S(R1, R2) = 1 / (n (n - 1)) · Σ_{i ≠ j} 1[R1 and R2 agree on a_i and a_j],

where R1 and R2 agree on (a_i, a_j) iff "R1(a_i) > R1(a_j)" and "R2(a_i) > R2(a_j)" have the same
truth value. The sum runs over the n(n-1) *ordered* pairs and compares the truth values of the
strict inequalities, exactly as written: without ties each unordered pair counts twice the same
way, so S is the fraction of pairs ordered alike; a pair tied under one ranking only counts as
agreeing for one of its two orders (both ">" are false one way, one is true the other way), i.e.
half; a pair tied under both agrees both ways.

Symmetry (`004` §5.3): reversing one ranking gives 1 - S, so `004` only considers |S - 0.5|
("the larger the absolute value, the clearer R1 and R2 align"); the printed values of its Tables
5-7 are all at least 50%, which we read as 0.5 + |S - 0.5|. We report S itself (its side says
the sign: S > 0.5 when a larger measure goes with better performance) and |S - 0.5|.

The items are the report's multi-task methods (each its best configuration, the report's
choice); R1 orders them by a measure's end-of-training value (``analysis.diagnostic_curves``:
the mean over the last sixth of each run's epochs, `004` §5.5, averaged over the seeds); R2 by
test performance, oriented so that larger is better: Δm (`002` eq. 1) and, as `004` Tables 5-7
do, each test metric (negated where lower is better). `004` ranks GDS, GMS and FD; we rank them
at each level the runs logged (shared parameters, shared representation).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from searcher.run_record import DIAG_LEVELS

#: The measures `004` §5.5 ranks (GDS eq. 5b, GMS eq. 6b, FD eq. 8).
MEASURES = ("gds", "gms", "fd")
DELTA_M = "Δm"


def ranking_similarity(first: Sequence[float], second: Sequence[float]) -> float:
    """`004` eq. 9 between the orders of ``first`` and ``second`` over the same items (NaN for fewer than 2)."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} values against {len(second)}: rank the same items")
    n = len(first)
    if n < 2:
        return math.nan
    agree = sum((first[i] > first[j]) == (second[i] > second[j]) for i in range(n) for j in range(n) if i != j)
    return agree / (n * (n - 1))


def similarity_rows(measures: Mapping[str, float], performance: Mapping[str, float]) -> tuple[float, list[str]]:
    """S over the methods with a finite value in both, and those methods."""
    methods = [m for m in measures if m in performance and math.isfinite(measures[m]) and math.isfinite(performance[m])]
    return ranking_similarity([measures[m] for m in methods], [performance[m] for m in methods]), methods


def similarity_table(end_values: pd.DataFrame, performance: Mapping[str, Mapping[str, float]],
                     measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """One row per measure x level x performance criterion: S (`004` eq. 9), |S - 0.5|, the methods.

    ``end_values``: ``analysis.diagnostic_curves.DiagnosticCurves.end_values`` (the measures between
    tasks are used); ``performance``: ``{criterion: {method: value, larger is better}}``, whose
    methods are the items ranked.
    """
    columns = ["measure", "level", "against", "S", "abs_S_minus_half", "methods", "method_names"]
    rows = []
    between = end_values[end_values["between"] == "tasks"] if not end_values.empty else end_values
    for measure in measures:
        found = set(between["level"]) if not between.empty else set()
        for level in [lv for lv in DIAG_LEVELS if lv in found] + sorted(found - set(DIAG_LEVELS)):
            mine = between[(between["measure"] == measure) & (between["level"] == level)]
            if mine.empty:
                continue
            values = dict(zip(mine["label"], mine["value"].astype(float)))
            for against, scores in performance.items():
                s, methods = similarity_rows({m: v for m, v in values.items() if m in scores}, scores)
                rows.append({"measure": measure, "level": level, "against": against, "S": s,
                             "abs_S_minus_half": abs(s - 0.5) if math.isfinite(s) else math.nan,
                             "methods": len(methods), "method_names": " ".join(methods)})
    return pd.DataFrame(rows, columns=columns)


def performance_from_summary(summary: pd.DataFrame, directions: Mapping[str, Mapping[str, bool]]) -> dict[str, dict[str, float]]:
    """Per criterion, each multi-task method's test performance, larger is better: Δm (where there
    are references), then every ``task/metric`` (negated where lower is better); from the report's
    summary (each method's best configuration, mean over its seeds)."""
    if summary.empty:
        return {}
    multi = summary[summary["kind"] == "multi-task"]
    out: dict[str, dict[str, float]] = {}
    if multi["delta_m"].notna().any():
        out[DELTA_M] = {m: float(v) for m, v in zip(multi["method"], multi["delta_m"])}
    for task, metrics in directions.items():
        for metric, higher in metrics.items():
            sign = 1.0 if higher else -1.0
            out[f"{task}/{metric}"] = {m: sign * float(v) for m, v in zip(multi["method"], multi[f"{task}/{metric}"])}
    return out
