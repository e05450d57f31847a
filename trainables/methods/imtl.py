"""IMTL: Impartial Multi-Task Learning (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, ICLR 2021).

IMTL-G (gradient balance): find the direction d = sum_t alpha_t g_t, sum_t alpha_t = 1,
whose projections onto every unit task gradient u_t = g_t / ||g_t|| are equal (u_1ᵀd = u_tᵀd).
With D = [g_1 - g_2, ..., g_1 - g_T]ᵀ and U = [u_1 - u_2, ..., u_1 - u_T]ᵀ (rows), the closed form is

    alpha_{2..T} = g_1 Uᵀ (D Uᵀ)^{-1},      alpha_1 = 1 - sum_{t>=2} alpha_t,

i.e. (U Dᵀ) a = U g_1 for the column a = alpha_{2..T}. Everything comes from the Gramian K:
with C = diag(1/||g||) K (C_ab = u_aᵀ g_b) and P the (T-1) x T matrix of rows e_1 - e_{t+1},
U Dᵀ = P C Pᵀ and U g_1 = P C e_1. The scales alpha can be negative and are unbounded (`002`
§3.4): we do NOT clip them; their minimum and maximum over the epoch are reported through
``epoch_diagnostics`` as ``imtl_min_scale`` / ``imtl_max_scale``. The system is solved exactly;
only when it is singular (e.g. two identical gradients) do we fall back to the least-squares
(pseudo-inverse) solution, to avoid NaN. If some gradient is zero its unit vector is undefined:
like the `002` authors' code we then return zero scales (no shared update).

IMTL (full, the paper's hybrid) adds IMTL-L (loss balance): each task has a learned s_t, the scaled loss is
e^{s_t} L_t - s_t, and IMTL-G runs on the gradients of the scaled losses, e^{s_t} g_t. So the
weights on the raw gradients are alpha_t e^{s_t} (alpha from IMTL-G on the scaled Gramian). s is
an ``nn.Parameter`` of the method (the trainer adds it to the main optimizer; the reference uses
an Adam on s with the main learning rate) and ``extra_loss`` provides its gradient
e^{s_t} L_t - 1 through sum_t (e^{s_t} L_t.detach() - s_t).

Heads, following the `002` authors' ``optimizers/imtl.py`` (``standard_head_backward`` on the
specialized parameters) and LibMTL: they get the plain sum of the (scaled) losses, not the
IMTL-G scales. For IMTL-G that is ``heads_use_weights = False``; for IMTL the heads must get
sum_t e^{s_t} L_t, which the interface cannot express, so ``extra_loss`` also adds
sum_t (e^{s_t} - 1).detach() L_t on top of the trainer's plain sum (it only reaches the heads:
the trainer's losses hang off a detached copy of the representation).

Corrections to the `002` code: it solves (D Uᵀ) a = U g_1 (the transpose of the paper's system,
the same only for T = 2) and always adds a 1e-6 ridge; we follow the paper (and LibMTL), which
gives equal projections for any T. The `002` authors run IMTL-G on the representation gradients
(``ub=True`` by default): use ``grad_level=feature`` to match them.

Implements: Liu et al., ICLR 2021 (IMTL), IMTL-G (the closed form alpha = g_1 Uᵀ (D Uᵀ)^-1) and
the hybrid IMTL (IMTL-L's e^s L - s, then IMTL-G).

Deviates from the authors' code: not compared with the authors' code (we know of no public
release); against the `002` copy (Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/imtl.py) we solve
the paper's system, not its transpose, without the 1e-6 ridge, at the configured grad_level (it
runs on the representation gradients); with LibMTL's IMTL.py (median-research-group/LibMTL) none
known; a singular system falls back to least squares.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from trainables.methods.base import GramianWeighting
from trainables.methods.capabilities import AddsHeadsLoss
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec


def imtl_g_scales(gram: np.ndarray) -> np.ndarray:
    """IMTL-G's alpha (T,) from the Gramian GGᵀ; zeros if some gradient is zero."""
    gram = np.asarray(gram, dtype=np.float64)
    t = gram.shape[0]
    if t == 1:
        return np.ones(1)
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    if not np.all(np.isfinite(gram)) or np.any(norms <= 0.0):
        return np.zeros(t)
    c = gram / norms[:, None]  # c[a, b] = u_aᵀ g_b
    p = np.zeros((t - 1, t))
    p[:, 0] = 1.0
    p[np.arange(t - 1), np.arange(1, t)] = -1.0
    m = p @ c @ p.T  # U Dᵀ
    b = p @ c[:, 0]  # U g_1
    a = None
    if np.linalg.cond(m) < 1.0 / np.finfo(np.float64).eps:
        a = np.linalg.solve(m, b)
    if a is None or not np.all(np.isfinite(a)):  # singular: least-squares (pseudo-inverse) solution
        a = np.linalg.lstsq(m, b, rcond=None)[0]
    return np.concatenate([[1.0 - a.sum()], a])


class IMTLG(GramianWeighting):
    name = "imtl_g"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS})
    summary = "IMTL-G: the direction with equal projections onto every unit task gradient (closed form)"
    paper = "Liu et al., ICLR 2021 (IMTL-G closed form alpha = g_1 Uᵀ(D Uᵀ)^-1)"
    heads_use_weights = False

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        self._min_scale = math.inf
        self._max_scale = -math.inf

    def _record(self, alpha: np.ndarray) -> None:
        self._min_scale = min(self._min_scale, float(alpha.min()))
        self._max_scale = max(self._max_scale, float(alpha.max()))

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        alpha = imtl_g_scales(gramian.detach().double().cpu().numpy())
        self._record(alpha)
        return torch.as_tensor(alpha, dtype=gramian.dtype, device=gramian.device)

    def epoch_diagnostics(self) -> dict[str, float]:
        if self._min_scale > self._max_scale:  # no step this epoch
            return {}
        out = {"imtl_min_scale": self._min_scale, "imtl_max_scale": self._max_scale}
        self._min_scale, self._max_scale = math.inf, -math.inf
        return out


class IMTL(AddsHeadsLoss, IMTLG):
    name = "imtl"
    trains = "task loss scales (IMTL-L), trained with the model"
    summary = "IMTL: learned loss scales (IMTL-L) and IMTL-G on the scaled losses' gradients"
    paper = "Liu et al., ICLR 2021 (hybrid IMTL: IMTL-L scales e^s L - s, then IMTL-G)"

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        #: IMTL-L's s_t (scaled loss e^{s_t} L_t - s_t), zero at the start as in the reference.
        self.loss_scale = nn.Parameter(torch.zeros(self.n_tasks))

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        scale = torch.exp(self.loss_scale.detach()).double().cpu().numpy()
        gram = gramian.detach().double().cpu().numpy()
        alpha = imtl_g_scales(gram * np.outer(scale, scale))
        self._record(alpha)
        return torch.as_tensor(alpha * scale, dtype=gramian.dtype, device=gramian.device)

    def extra_loss(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.loss_scale.to(losses.dtype)
        scale = torch.exp(s)
        imtl_l = (scale * losses.detach() - s).sum()  # d/ds_t = e^{s_t} L_t - 1
        heads = ((scale.detach() - 1.0) * losses).sum()  # heads: plain sum -> sum e^{s_t} L_t
        return imtl_l + heads
