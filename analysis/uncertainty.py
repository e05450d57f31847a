"""How sure a number of the report is: intervals over seeds, a test against EW, MR's spread.

- ``summarize``: mean, sample std (n - 1) and the 95% Student-t interval of the mean,
  mean ± t_{0.975, n-1} · s / √n, over the seeds of one configuration (NaN below 2 seeds).
- ``compare``: Welch's unequal-variance t-test (Welch 1947; ``scipy.stats.ttest_ind`` with
  ``equal_var=False``) of a method's per-seed values against EW's, at the 0.05 level: "better",
  "worse" or "not distinguishable"; below 2 seeds on either side no test is possible.
- ``bootstrap_mean_rank``: MR (`002` eq. 2) recomputed on seed-resampled tables (each method's
  seeds drawn with replacement, B times, a fixed generator): its spread and 95% percentile
  interval, the "same treatment" over seeds as every other number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

#: The test level of every verdict.
ALPHA = 0.05
#: Rows with fewer seeds than this are flagged (a t-interval from 2 seeds is very wide).
MIN_SEEDS = 3
BETTER, WORSE, SAME = "better", "worse", "not distinguishable"
TOO_FEW = "too few seeds"


@dataclass(frozen=True)
class Summary:
    """A value over seeds: mean, sample std, the 95% t-interval of the mean, and n."""

    mean: float
    std: float
    low: float
    high: float
    n: int

    @property
    def few(self) -> bool:
        return self.n < MIN_SEEDS


def finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean, std (n - 1), and mean ± t_{(1+level)/2, n-1} · std / √n; NaN where n is too small."""
    x = finite(values)
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(np.mean(x))
    if n == 1:
        return Summary(mean, math.nan, math.nan, math.nan, 1)
    std = float(np.std(x, ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, mean - half, mean + half, n)


@dataclass(frozen=True)
class Verdict:
    """A method against the reference method (EW): the outcome, Welch's p, and on what."""

    outcome: str
    p_value: float = math.nan

    def describe(self) -> str:
        if math.isnan(self.p_value):
            return self.outcome
        return f"{self.outcome} (p={self.p_value:.2g})"


def compare(values: Sequence[float], reference: Sequence[float], higher_is_better: bool = True,
            alpha: float = ALPHA) -> Verdict:
    """Welch's t-test of ``values`` against ``reference``: better / worse / not distinguishable at ``alpha``.

    Fewer than 2 finite values on either side: "too few seeds". Both sides without spread
    (every seed equal): no test is defined; equal means are "not distinguishable", different
    ones are reported as better/worse with p = 0 (deterministic runs).
    """
    a, b = finite(values), finite(reference)
    if len(a) < 2 or len(b) < 2:
        return Verdict(TOO_FEW)
    mean_a, mean_b = float(np.mean(a)), float(np.mean(b))
    if np.std(a) == 0 and np.std(b) == 0:
        if mean_a == mean_b:
            return Verdict(SAME)
        p = 0.0
    else:
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    if p >= alpha or math.isnan(p):
        return Verdict(SAME, p)
    ahead = mean_a > mean_b if higher_is_better else mean_a < mean_b
    return Verdict(BETTER if ahead else WORSE, p)


def mean_ranks(means: np.ndarray, higher_is_better: Sequence[bool], task_of: Sequence[int]) -> np.ndarray:
    """MR (`002` eq. 2) of a (methods x metrics) table: rank per metric (1 = best, ties averaged,
    NaN last, as ``analysis.ranking.metric_ranks``), averaged within a task, then over tasks."""
    methods, columns = means.shape
    ranks = np.empty_like(means, dtype=float)
    for j in range(columns):
        column = means[:, j] if higher_is_better[j] else -means[:, j]
        keyed = np.where(np.isnan(column), -np.inf, column)  # NaN ranks last
        ranks[:, j] = stats.rankdata(-keyed, method="average")
    tasks = sorted(set(task_of))
    per_task = np.stack([ranks[:, [j for j in range(columns) if task_of[j] == t]].mean(axis=1) for t in tasks], axis=1)
    return per_task.mean(axis=1)


def bootstrap_mean_rank(samples: Mapping[str, np.ndarray], higher_is_better: Sequence[bool], task_of: Sequence[int],
                        draws: int = 1000, seed: int = 0) -> dict[str, Summary]:
    """MR over ``draws`` resamples: each method's seeds (rows of its (seeds x metrics) array)
    drawn with replacement, the table of means ranked. Per method: the mean and std of its MR
    over the resamples and their 2.5 / 97.5 percentiles (``n``: its number of seeds)."""
    names = list(samples)
    if not names:
        return {}
    rng = np.random.default_rng(seed)
    out = np.empty((draws, len(names)))
    for b in range(draws):
        table = np.stack([samples[m][rng.integers(0, len(samples[m]), len(samples[m]))].mean(axis=0) for m in names])
        out[b] = mean_ranks(table, higher_is_better, task_of)
    low, high = np.percentile(out, [2.5, 97.5], axis=0)
    return {m: Summary(float(out[:, i].mean()), float(out[:, i].std(ddof=1)), float(low[i]), float(high[i]),
                       len(samples[m])) for i, m in enumerate(names)}
