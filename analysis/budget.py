"""Budget curves: expected validation performance as a function of the number of trials.

Dodge et al. 2019, "Show Your Work: Improved Reporting of Experimental Results" (EMNLP 2019),
§3, eq. 1: from the N trials a method actually ran, the expected best validation score after
n trials (n = 1..N) is the expected maximum of n i.i.d. draws *with replacement* from the
empirical distribution of the N observed scores. A method whose curve is still rising at N
won (or lost) partly because of its budget; curves that cross tell that the ranking depends on
how much tuning each method gets.

With the scores sorted, v_(1) <= ... <= v_(N), the maximum of n draws is v_(i) with
probability P_i = (i/N)^n - ((i-1)/N)^n, so

    E[max of n] = Σ_i P_i v_(i),    std = sqrt(Σ_i P_i (v_(i) - E)^2).

Dodge et al. draw mean ± std, clipped to the observed [min, max]; the functions here return
the unclipped std and the observed range, and the plot (``analysis.report_plots.budget_curves``)
clips. ``expected_at_best`` applies the same probabilities to another quantity of the trial
that wins on validation (the test Δm of the best-on-validation trial after n trials).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

#: Columns of ``budget_curves``'s table, in order.
COLUMNS = ["method", "trials", "trials_available", "expected_best_val", "expected_best_val_std",
           "expected_test_delta_m", "expected_test_delta_m_std", "val_min", "val_max",
           "test_delta_m_min", "test_delta_m_max"]


def _max_probabilities(counts: np.ndarray, n_max: int) -> np.ndarray:
    """P[n-1, k]: probability that the maximum of n draws with replacement falls on level k.

    ``counts`` holds how many of the N observations make up each level, levels sorted from the
    lowest to the highest; (C_k/N)^n - (C_{k-1}/N)^n with C_k the cumulative count.
    """
    cumulative = np.cumsum(counts, dtype=float) / float(counts.sum())
    below = np.concatenate([[0.0], cumulative[:-1]])
    n = np.arange(1, n_max + 1, dtype=float)[:, None]
    return cumulative[None, :] ** n - below[None, :] ** n


def expected_max(values: Sequence[float] | np.ndarray, n_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Expected maximum of n draws (with replacement) from ``values`` and its std, for n = 1..n_max.

    Dodge et al. 2019 (EMNLP), §3 eq. 1: P(max = v_(i)) = (i/N)^n - ((i-1)/N)^n over the sorted
    values; mean = Σ P_i v_(i), std = sqrt(Σ P_i (v_(i) - mean)^2) (unclipped; Dodge et al.'s
    band is mean ± std clipped to [min, max] of the values). ``n_max`` defaults to N, the number
    of values; a larger one extrapolates (the mean tends to the maximum). NaN values are dropped
    first (a trial without a score cannot be selected); with no value left both arrays are empty.
    At n = 1 the mean is the sample mean and the std the population std (ddof = 0).
    """
    v = np.asarray(values, dtype=float).ravel()
    v = np.sort(v[~np.isnan(v)])
    if v.size == 0:
        return np.empty(0), np.empty(0)
    n_max = v.size if n_max is None else int(n_max)
    if n_max <= 0:
        return np.empty(0), np.empty(0)
    p = _max_probabilities(np.ones(v.size), n_max)
    mean = p @ v
    var = (p * (v[None, :] - mean[:, None]) ** 2).sum(axis=1)
    return mean, np.sqrt(var)


def expected_at_best(selection: Sequence[float] | np.ndarray, reported: Sequence[float] | np.ndarray,
                     n_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Expected ``reported`` value of the trial that maximizes ``selection`` among n draws, and its std.

    The same draws as ``expected_max`` (n i.i.d. draws with replacement from the N trials, Dodge
    et al. 2019 §3 eq. 1), but the quantity read off the winner is ``reported`` (e.g. test Δm)
    rather than ``selection`` (the validation score): "the test Δm of the best-on-validation
    trial after n trials".

    Ties in ``selection``: the tied trials form one level, which wins with the probability of
    the level, and whose reported value is the mean of theirs, its spread (population variance)
    added to the variance. This is exact when a tie among drawn trials is broken uniformly at
    random (or by draw order): given that the level wins, the winner is then equally likely any
    of its trials.

    Trials whose ``selection`` is NaN are dropped (they cannot win). A NaN in ``reported`` of a
    remaining trial makes the result NaN for every n (every trial wins with positive probability).
    With no trial left both arrays are empty; ``n_max`` defaults to N.
    """
    s = np.asarray(selection, dtype=float).ravel()
    r = np.asarray(reported, dtype=float).ravel()
    if s.shape != r.shape:
        raise ValueError(f"selection and reported differ in length ({s.size} != {r.size})")
    keep = ~np.isnan(s)
    s, r = s[keep], r[keep]
    if s.size == 0:
        return np.empty(0), np.empty(0)
    n_max = s.size if n_max is None else int(n_max)
    if n_max <= 0:
        return np.empty(0), np.empty(0)
    levels, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    level_mean = np.bincount(inverse, weights=r, minlength=levels.size) / counts
    level_var = np.bincount(inverse, weights=(r - level_mean[inverse]) ** 2, minlength=levels.size) / counts
    p = _max_probabilities(counts, n_max)
    mean = p @ level_mean
    var = (p * (level_var[None, :] + (level_mean[None, :] - mean[:, None]) ** 2)).sum(axis=1)
    return mean, np.sqrt(var)


def budget_curves(trials: pd.DataFrame) -> pd.DataFrame:
    """Long table of budget curves: one row per method and number of trials n = 1..N.

    ``trials`` has one row per finished trial with ``method``, ``val_score`` (higher is better)
    and ``test_delta_m`` (%, may be all NaN when there are no single-task references; a missing
    column counts as all NaN). Rows without a ``val_score`` are dropped, so N
    (``trials_available``) counts the trials that could be selected. Columns: ``method``,
    ``trials`` (n), ``trials_available`` (N), ``expected_best_val`` and ``_std``
    (``expected_max`` of the scores), ``expected_test_delta_m`` and ``_std`` (``expected_at_best``:
    test Δm of the best-on-validation trial), and the observed ``val_min``/``val_max`` and
    ``test_delta_m_min``/``test_delta_m_max`` of the method, which bound Dodge et al.'s band.
    Methods keep their first-seen order.
    """
    test = trials["test_delta_m"] if "test_delta_m" in trials else pd.Series(np.nan, index=trials.index)
    frame = pd.DataFrame({"method": trials["method"].to_numpy(),
                          "val_score": pd.to_numeric(trials["val_score"], errors="coerce").to_numpy(float),
                          "test_delta_m": pd.to_numeric(test, errors="coerce").to_numpy(float)})
    frame = frame[frame["val_score"].notna()]
    parts = []
    for method in pd.unique(frame["method"]):
        group = frame[frame["method"] == method]
        val, dm = group["val_score"].to_numpy(), group["test_delta_m"].to_numpy()
        n_available = len(group)
        best, best_std = expected_max(val)
        test_mean, test_std = expected_at_best(val, dm)
        has_dm = bool(np.isfinite(dm).any())
        parts.append(pd.DataFrame({
            "method": method, "trials": np.arange(1, n_available + 1), "trials_available": n_available,
            "expected_best_val": best, "expected_best_val_std": best_std,
            "expected_test_delta_m": test_mean, "expected_test_delta_m_std": test_std,
            "val_min": val.min(), "val_max": val.max(),
            "test_delta_m_min": np.nanmin(dm) if has_dm else np.nan,
            "test_delta_m_max": np.nanmax(dm) if has_dm else np.nan,
        }))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "method" else int if c.startswith("trials") else float)
                             for c in COLUMNS})
    return pd.concat(parts, ignore_index=True)[COLUMNS]
