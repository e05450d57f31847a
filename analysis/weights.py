"""Fixed task weights from the weights a method applied, as `002` §3.5 extracts them.

`002` §3.5: "we computed the mean value in each epoch, applied exponential moving average
[...], and used the result from the last epoch to define the weights". SPEC ("Fixed weights,
as the authors' code does it"): each epoch's mean weights are normalized to sum to 1 across
tasks; the EMA starts at the first epoch's value, ema = 0.9·ema + 0.1·w_epoch; the last value,
renormalized to sum 1, is the fixed weight vector.

The per-epoch means are what the trainer logs as ``weight/<task>``; this module is the pure
arithmetic on them (no MLflow), so it can be checked by hand.

Two departures from `002`, both opt-in (the defaults are the paper's; issue 13):

- ``per_epoch="median"``: the per-epoch statistic is the median over the epoch's steps
  (``weight_median/<task>``) instead of the mean. A method such as CAGrad reports a weight of
  1e2-1e7 for a task whose gradient is near zero at one step; that one step dominates the
  epoch's mean, not its median.
- ``ema="debiased"``: the EMA starts at zero and is bias-corrected as Adam's first moment
  (Kingma & Ba 2015, Algorithm 1: m̂_k = m_k / (1 - β^k)), so the first epoch weighs
  (1-β)·β^(k-1) / (1-β^k) after k epochs instead of the paper EMA's β^(k-1) (81% after 3
  epochs, 39% after 10 at β = 0.9): a run ASHA stopped early no longer yields its first epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from trainables.errors import ConfigError

#: SPEC: ema = 0.9·ema + 0.1·w_epoch.
DEFAULT_BETA = 0.9
#: Which per-epoch statistic of the applied weights the extraction starts from; "mean" is
#: `002` §3.5's ("the mean value in each epoch").
PER_EPOCH = ("mean", "median")
#: "paper": the EMA starts at the first epoch's value (SPEC, the authors' code); "debiased":
#: it starts at 0 and is bias-corrected (Kingma & Ba 2015, Algorithm 1).
EMA_KINDS = ("paper", "debiased")


@dataclass(frozen=True)
class FixedWeightsExtraction:
    """The steps of one extraction; rows are epochs, columns tasks (in the problem's order)."""

    #: The epochs (1-based, as logged) the rows belong to.
    epochs: list[int]
    #: Each epoch's mean weights as logged.
    raw: np.ndarray
    #: Each epoch's weights normalized to sum 1 across tasks.
    normalized: np.ndarray
    #: The EMA of the normalized weights after each epoch.
    ema: np.ndarray
    #: The EMA factor β.
    beta: float
    #: The epoch whose EMA value was taken.
    epoch: int
    #: The EMA at ``epoch``, renormalized to sum 1: the fixed weights.
    weights: np.ndarray
    #: The EMA's kind (``EMA_KINDS``): "paper" (`002`) or "debiased" (Adam's correction).
    ema_kind: str = "paper"
    #: The per-epoch statistic the rows are (``PER_EPOCH``): "mean" (`002`) or "median".
    per_epoch: str = "mean"
    #: The share of the first row in the EMA at ``epoch`` (``first_epoch_share``).
    first_epoch_share: float = 1.0


def normalize_epochs(raw: ArrayLike, epochs: Sequence[int] | None = None) -> np.ndarray:
    """Each row (one epoch's mean weights) divided by its sum, so that it sums to 1 (SPEC).

    A row that is not finite or whose sum is not positive cannot be normalized: ConfigError.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
        raise ConfigError(f"weights need at least one epoch and one task, got shape {raw.shape}")
    sums = raw.sum(axis=1)
    for i, (row, total) in enumerate(zip(raw, sums)):
        if not np.isfinite(row).all() or not total > 0:
            epoch = epochs[i] if epochs is not None else i + 1
            raise ConfigError(f"the weights of epoch {epoch} ({', '.join(map(repr, row.tolist()))}) "
                              "cannot be normalized: they must be finite with a positive sum")
    return raw / sums[:, None]


def ema_trajectory(weights: ArrayLike, beta: float = DEFAULT_BETA, kind: str = "paper") -> np.ndarray:
    """Exponential moving average over epochs (rows), one row per epoch.

    ``kind="paper"``: ema_1 = w_1, ema_k = β·ema_{k-1} + (1-β)·w_k. SPEC: "EMA starts at the
    first epoch's value, ema = 0.9·ema + 0.1·w_epoch" (β = 0.9), as `002`'s authors' code.

    ``kind="debiased"``: m_0 = 0, m_k = β·m_{k-1} + (1-β)·w_k, m̂_k = m_k / (1 - β^k), the
    bias correction of Adam's first moment (Kingma & Ba 2015, Algorithm 1). m̂_k is a weighted
    mean of w_1..w_k with weights (1-β)·β^(k-j) / (1-β^k); at β = 1 (0/0) it is their limit,
    the plain mean of w_1..w_k.
    """
    check_beta(beta)
    check_ema(kind)
    weights = np.asarray(weights, dtype=np.float64)
    out = np.empty_like(weights)
    if len(weights) == 0:
        return out
    if kind == "paper":
        out[0] = weights[0]
        for k in range(1, len(weights)):
            out[k] = beta * out[k - 1] + (1.0 - beta) * weights[k]
        return out
    if beta == 1.0:  # lim_{β→1} (1-β)β^(k-j) / (1-β^k) = 1/k: the running mean
        return np.cumsum(weights, axis=0) / np.arange(1, len(weights) + 1).reshape((-1,) + (1,) * (weights.ndim - 1))
    m = np.zeros_like(weights[0])
    for k in range(1, len(weights) + 1):  # Kingma & Ba 2015, Algorithm 1: m_t, then m̂_t = m_t / (1 - β^t)
        m = beta * m + (1.0 - beta) * weights[k - 1]
        out[k - 1] = m / (1.0 - beta**k)
    return out


def first_epoch_share(k: int, beta: float = DEFAULT_BETA, ema: str = "paper") -> float:
    """The weight of the first epoch's w_1 in the EMA after ``k`` epochs (its share of the result).

    Unrolling the recursions of ``ema_trajectory``:

    - paper (`002`, ema_1 = w_1): ema_k = β^(k-1)·w_1 + Σ_{j=2..k} (1-β)·β^(k-j)·w_j, so the
      share is β^(k-1): 0.81 after 3 epochs and 0.387 after 10 at β = 0.9.
    - debiased (Kingma & Ba 2015, Algorithm 1): m̂_k = Σ_{j=1..k} (1-β)·β^(k-j)·w_j / (1-β^k),
      so the share is (1-β)·β^(k-1) / (1-β^k): 0.299 after 3 epochs, 0.059 after 10 at β = 0.9
      (1/k at β = 1).

    Both sets of coefficients sum to 1, so the share survives the final renormalization.
    """
    check_beta(beta)
    check_ema(ema)
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ConfigError(f"the number of epochs must be an integer >= 1, got {k!r}")
    if ema == "paper":
        return float(beta ** (k - 1))
    if beta == 1.0:
        return 1.0 / k
    return float((1.0 - beta) * beta ** (k - 1) / (1.0 - beta**k))


def mean_median_gaps(mean_raw: ArrayLike, median_raw: ArrayLike) -> np.ndarray:
    """Per epoch (row), max over tasks of |normalized mean − normalized median| (NaN where either row cannot be normalized).

    Each row is normalized to sum 1 as in SPEC. A large gap means a few steps dominate the
    epoch's mean weight (e.g. CAGrad's weight for a task with a near-zero gradient), so the
    mean-based extraction (`002` §3.5) and the median-based one disagree.
    """
    mean_raw = np.asarray(mean_raw, dtype=np.float64)
    median_raw = np.asarray(median_raw, dtype=np.float64)
    if mean_raw.shape != median_raw.shape:
        raise ConfigError(f"mean weights of shape {mean_raw.shape} and median weights of shape {median_raw.shape}")
    gaps = np.full(len(mean_raw), np.nan)
    for i, (a, b) in enumerate(zip(mean_raw, median_raw)):
        if _normalizable(a) and _normalizable(b):
            gaps[i] = float(np.max(np.abs(a / a.sum() - b / b.sum())))
    return gaps


def _normalizable(row: np.ndarray) -> bool:
    return bool(np.isfinite(row).all() and row.sum() > 0)


def pick_epoch(epochs: Sequence[int], epoch: int | None) -> int:
    """Row index of ``epoch`` (default: the last logged epoch, `002` §3.5's "last epoch").

    An earlier epoch is for runs a scheduler (ASHA) stopped, or to compare; an epoch that was
    not logged is a ConfigError.
    """
    if not epochs:
        raise ConfigError("no epochs were logged")
    if epoch is None:
        return len(epochs) - 1
    if epoch not in epochs:
        where = f"epochs {epochs[0]}..{epochs[-1]}" if list(epochs) == list(range(epochs[0], epochs[-1] + 1)) else f"epochs {list(epochs)}"
        raise ConfigError(f"epoch {epoch} was not logged (logged: {where})")
    return list(epochs).index(epoch)


def extract_fixed_weights(
    raw: ArrayLike, epochs: Sequence[int] | None = None, beta: float = DEFAULT_BETA, epoch: int | None = None,
    ema: str = "paper", per_epoch: str = "mean",
) -> FixedWeightsExtraction:
    """Per-epoch weights -> normalized -> EMA -> value at ``epoch`` (default last) -> sum 1.

    `002` §3.5 and SPEC ("Fixed weights, as the authors' code does it"). ``raw`` holds one row
    per epoch (``epochs``, default 1..E) and one column per task. ``ema`` picks the EMA
    (``ema_trajectory``: "paper" or "debiased"); ``per_epoch`` names the statistic the rows are
    ("mean", the paper's, or "median") and is recorded, the arithmetic is the same.
    """
    check_ema(ema)
    check_per_epoch(per_epoch)
    raw = np.asarray(raw, dtype=np.float64)
    epochs = list(epochs) if epochs is not None else list(range(1, len(raw) + 1))
    if len(epochs) != len(raw):
        raise ConfigError(f"{len(raw)} rows of weights for {len(epochs)} epochs")
    index = pick_epoch(epochs, epoch)
    normalized = normalize_epochs(raw, epochs)
    trajectory = ema_trajectory(normalized, beta, ema)
    final = trajectory[index] / trajectory[index].sum()
    share = first_epoch_share(index + 1, beta, ema)
    return FixedWeightsExtraction(epochs, raw, normalized, trajectory, float(beta), epochs[index], final,
                                  ema, per_epoch, share)


def check_beta(beta: float) -> None:
    if not (math.isfinite(beta) and 0.0 <= beta <= 1.0):
        raise ConfigError(f"beta must be in [0, 1] (ema = beta*ema + (1-beta)*w_epoch), got {beta}")


def check_ema(kind: str) -> None:
    if kind not in EMA_KINDS:
        raise ConfigError(f"ema must be one of {', '.join(EMA_KINDS)}, got {kind!r}")


def check_per_epoch(statistic: str) -> None:
    if statistic not in PER_EPOCH:
        raise ConfigError(f"per_epoch must be one of {', '.join(PER_EPOCH)}, got {statistic!r}")
