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
  (`003` Figure 3's "ratio of conflicting gradient parameters"), averaged over the pairs.

``EpochDiagnostics`` averages the measures of the sampled steps of an epoch; the trainer logs
them as ``diag/<level>/<measure>`` (``diag/param/gds``, ``diag/feature/cos/CL-RR``, ...).
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
    """The fraction of components where two rows have opposite signs (g_k g'_k < 0), float64."""
    signs = torch.sign(grads.detach().flatten(1))
    n = signs.shape[1]
    out = torch.zeros(signs.shape[0], signs.shape[0], dtype=torch.float64)
    for i in range(signs.shape[0]):
        for j in range(i + 1, signs.shape[0]):
            out[i, j] = out[j, i] = float((signs[i] * signs[j] < 0).sum()) / max(n, 1)
    return out


def pair_measures(grads: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per pair of tasks (``cos/a-b``, ``mag/a-b``, ``conflict/a-b``) and over the pairs (``gds``,
    ``gms``, ``conflict_pairs``, ``conflict_params``) for the task gradients ``grads`` (T, ...)."""
    if grads.shape[0] != len(names):
        raise ValueError(f"{grads.shape[0]} gradients for {len(names)} tasks")
    cos, mag, conflict = cosine_matrix(grads), magnitude_matrix(grads), conflict_matrix(grads)
    out: dict[str, float] = {}
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    for i, j in pairs:
        pair = f"{names[i]}-{names[j]}"
        out[f"cos/{pair}"], out[f"mag/{pair}"] = float(cos[i, j]), float(mag[i, j])
        out[f"conflict/{pair}"] = float(conflict[i, j])
    if pairs:
        cos_values = [float(cos[i, j]) for i, j in pairs if not math.isnan(float(cos[i, j]))]
        mag_values = [float(mag[i, j]) for i, j in pairs if not math.isnan(float(mag[i, j]))]
        out["gds"] = sum(cos_values) / len(cos_values) if cos_values else math.nan
        out["gms"] = sum(mag_values) / len(mag_values) if mag_values else math.nan
        out["conflict_pairs"] = sum(c < 0 for c in cos_values) / len(cos_values) if cos_values else math.nan
        out["conflict_params"] = sum(float(conflict[i, j]) for i, j in pairs) / len(pairs)
    return out


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
