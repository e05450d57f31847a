"""Gradient diagnostics between tasks: direction, magnitude and conflict of the task gradients.

From the per-task gradients G (T x d, one row per task) on the shared parameters (or, as the
cheap surrogate of `004`, on the shared representation z):

- cosine similarity, `003` eq. 4 and `004` eq. 5a: S_cos(g, g') = g·g' / (|g| |g'|), in [-1, 1];
  undefined (NaN, left out of the means) when a gradient is zero;
- magnitude similarity, `003` eq. 5 and `004` eq. 6a (from PCGrad, Yu et al. 2020):
  S_mag(g, g') = 2 |g| |g'| / (|g|² + |g'|²), in [0, 1], 1 for equal norms; NaN when both are 0;
- GDS and GMS, `004` eqs. 5b and 6b: the means of S_cos and S_mag over the T(T-1) ordered
  pairs of different tasks (equal to the means over the unordered pairs: both are symmetric);
- conflicts: the fraction of task pairs in conflict (S_cos < 0, Yu et al.'s definition that
  `003` §4.2 uses) and, per pair, the fraction of gradient components of opposite sign
  (`003` Figure 3's "ratio of conflicting gradient parameters"), averaged over the pairs;
- the same means between samples of one task (`003` §4.2's single-task setting, ``sample_measures``);
- feature disentanglement FD, `004` eqs. 7-8 (``feature_disentanglement``).

Between tasks, the gradients are those of each task's batch loss, `004`'s definition (and what a
gradient method aggregates); `003` §4.2 compares the task gradients of a single sample
instead. Between samples, each row is one sample's loss gradient within the batch (batch norm
couples it to the batch, as in training).

``EpochDiagnostics`` averages the measures of the sampled steps of an epoch; the trainer logs
them as ``diag/<level>/<measure>`` (``diag/param/gds``, ``diag/feature/cos/CL-RR``, ``diag/param/fd``,
``diag/param/sample/CL/gms``, ``diag/param/sample/gms``, ...).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def cosine_matrix(grads: torch.Tensor) -> torch.Tensor:
    """S_cos of every pair of rows of ``grads`` (T, d), float64; NaN where a row is zero."""
    g = grads.detach().double().flatten(1)
    norms = g.norm(dim=1)
    out = (g @ g.T) / (norms[:, None] * norms[None, :])
    zero = norms == 0
    out[zero, :] = math.nan
    out[:, zero] = math.nan
    return out


def magnitude_matrix(grads: torch.Tensor) -> torch.Tensor:
    """S_mag of every pair of rows: 2|g||g'| / (|g|² + |g'|²), float64; NaN where both are zero."""
    norms = grads.detach().double().flatten(1).norm(dim=1)
    denominator = norms[:, None] ** 2 + norms[None, :] ** 2
    out = 2 * norms[:, None] * norms[None, :] / denominator
    out[denominator == 0] = math.nan
    return out


def conflict_matrix(grads: torch.Tensor) -> torch.Tensor:
    """The fraction of components where two rows have opposite signs (g_k g'_k < 0), float64.

    With s = sign(g) in {-1, 0, 1}: a component is of opposite sign exactly when s_k s'_k = -1, so
    the count is (|s|·|s'| - s·s') / 2, one matrix product for every pair at once.
    """
    signs = torch.sign(grads.detach().flatten(1)).double()
    n = signs.shape[1]
    magnitudes = signs.abs()
    opposite = (magnitudes @ magnitudes.T - signs @ signs.T) / 2
    out = opposite / max(n, 1)
    out.fill_diagonal_(0.0)
    return out.cpu()


#: Per-pair values (``cos/a-b`` ...) are logged up to this many tasks (15 pairs); beyond it only
#: the means over the pairs, so a 40-task problem does not log 2,340 metrics per epoch.
MAX_PAIR_TASKS = 6


def _summary(cos: torch.Tensor, mag: torch.Tensor, conflict: torch.Tensor) -> dict[str, float]:
    """GDS, GMS (`004` eqs. 5b, 6b), the fraction of pairs in conflict and the mean fraction of
    conflicting components, over the unordered pairs of rows (undefined values left out)."""
    n = cos.shape[0]
    upper = torch.triu_indices(n, n, offset=1)
    c, m, k = (x[upper[0], upper[1]].double() for x in (cos, mag, conflict))
    if c.numel() == 0:
        return {}
    c, m = c[~c.isnan()], m[~m.isnan()]
    return {
        "gds": float(c.mean()) if c.numel() else math.nan,
        "gms": float(m.mean()) if m.numel() else math.nan,
        "conflict_pairs": float((c < 0).double().mean()) if c.numel() else math.nan,
        "conflict_params": float(k.mean()),
    }


def pair_measures(grads: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per pair of tasks (``cos/a-b``, ``mag/a-b``, ``conflict/a-b``; up to ``MAX_PAIR_TASKS`` tasks)
    and over the pairs (``gds``, ``gms``, ``conflict_pairs``, ``conflict_params``) for the task
    gradients ``grads`` (T, ...)."""
    if grads.shape[0] != len(names):
        raise ValueError(f"{grads.shape[0]} gradients for {len(names)} tasks")
    cos, mag, conflict = cosine_matrix(grads).cpu(), magnitude_matrix(grads).cpu(), conflict_matrix(grads)
    out: dict[str, float] = {}
    if len(names) <= MAX_PAIR_TASKS:
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                pair = f"{names[i]}-{names[j]}"
                out[f"cos/{pair}"], out[f"mag/{pair}"] = float(cos[i, j]), float(mag[i, j])
                out[f"conflict/{pair}"] = float(conflict[i, j])
    out.update(_summary(cos, mag, conflict))
    return out


def sample_measures(grads: torch.Tensor) -> dict[str, float]:
    """The same means over pairs of gradients of ONE task on different samples (`003` §4.2's
    single-task setting: g = ∇L_t(x_0), g' = ∇L_t(x_1)), for the rows of ``grads`` (S, ...)."""
    return _summary(cosine_matrix(grads).cpu(), magnitude_matrix(grads).cpu(), conflict_matrix(grads))


def feature_disentanglement(grads: torch.Tensor) -> float:
    """FD, `004` eqs. 7-8: the mean over positions j of the entropy (natural log) of the task
    saliencies p_ij = |∇_{Z_j} L_i| / Σ_k |∇_{Z_j} L_k| (eq. 7b), from the task gradients
    ``grads`` (T, ...) on the representation Z (or on the shared parameters, `004` Figure 5).

    0 when every position is salient to a single task, log T when all tasks weigh alike there.
    Positions no task's loss depends on (Σ_k |g_kj| = 0) have no distribution and are left out;
    NaN when there is no other. Eq. 7b as printed, without the smoothing Figure 1 mentions.
    """
    saliency = grads.detach().double().flatten(1).abs()
    total = saliency.sum(dim=0)
    used = total > 0
    if not bool(used.any()):
        return math.nan
    p = saliency[:, used] / total[used]
    entropy = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(dim=0)
    return float(entropy.mean())


class EpochDiagnostics:
    """The mean over an epoch's sampled steps of each measure (NaN values left out)."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, level: str, measures: dict[str, float]) -> None:
        for name, value in measures.items():
            if math.isnan(value):
                continue
            key = f"diag/{level}/{name}"
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def result(self) -> dict[str, float]:
        """The epoch's means; the diagnostics are then reset for the next epoch."""
        out = {key: total / self._counts[key] for key, total in self._sums.items()}
        self._sums, self._counts = {}, {}
        return out
