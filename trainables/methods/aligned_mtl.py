"""Aligned-MTL and Aligned-MTL-UB (Senushkin, Patakin, Kuznetsov & Konushin, "Independent
Component Alignment for Multi-Task Learning", CVPR 2023; official code SamsungLabs/MTL,
``code/optim/aligned/solver.py``, and LibMTL's ``Aligned_MTL.py``).

The task-gradient matrix G (T x d) is replaced by an aligned matrix with condition number one on
its span. From the eigendecomposition of the Gramian GGᵀ = V Λ Vᵀ, keeping the
eigenvalues above max(Λ) T eps_float32 (the reference's rank tolerance), the T x T map

    B = σ V Λ^{-1/2} Vᵀ,      σ = sqrt(λ_min)  (``scale_mode="min"``, the paper's choice;
                               the official code also has "median" and "rmse")

gives the aligned gradients Ĝ = B G = σ V Rᵀ (with G = V Λ^{1/2} Rᵀ): all its nonzero singular
values equal σ. The update is the sum of the aligned task gradients with the pre-defined task
weights, which are all one in the official code and LibMTL (``grads.sum(-1)``, ``B.sum(0)``), so

    d = 1ᵀ Ĝ = (B 1)ᵀ G,    weights w = B 1.

The task heads get the plain sum of their losses (``scale_decoder_grad=False`` by default).
All-zero gradients (rank 0, where the reference would fail on an empty spectrum) give zero
weights.

Aligned-MTL-UB (the paper's upper-bound variant, ``amtlub`` in the official code) runs the same on the gradients w.r.t. the shared representation; in
our trainer that is ``grad_level=feature``, which ``AlignedMTLUB.forced_grad_level`` imposes.

Implements: Senushkin et al., CVPR 2023, Aligned-MTL (the aligned gradients of condition number
one, ``scale_mode="min"``) and Aligned-MTL-UB (the same on the shared representation).

Deviates from the authors' code: none known against SamsungLabs/MTL
(code/optim/aligned/solver.py ProcrustesSolver, balancer.py) and LibMTL's Aligned_MTL.py, except
that all-zero gradients give zero weights where the reference fails on an empty spectrum.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from trainables.errors import ConfigError
from trainables.methods.base import GramianWeighting, Hyperparameter
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

SCALE_MODES = ("min", "median", "rmse")


def aligned_matrix(gram: np.ndarray, scale_mode: str = "min") -> np.ndarray:
    """B = σ V Λ^{-1/2} Vᵀ on the numerical span of GGᵀ (zeros when every gradient is zero)."""
    gram = np.asarray(gram, dtype=np.float64)
    t = gram.shape[0]
    if not np.all(np.isfinite(gram)):
        return np.zeros((t, t))
    eigvals, eigvecs = np.linalg.eigh(0.5 * (gram + gram.T))
    top = float(eigvals.max())
    if top <= 0.0:
        return np.zeros((t, t))
    tol = top * t * float(np.finfo(np.float32).eps)  # torch.finfo().eps in the reference
    order = np.argsort(eigvals)[::-1]
    order = order[eigvals[order] > tol]
    lam, vec = eigvals[order], eigvecs[:, order]
    if scale_mode == "min":
        sigma = np.sqrt(lam[-1])
    elif scale_mode == "median":  # torch.median: the lower of the two middle values
        sigma = np.sqrt(np.sort(lam)[(len(lam) - 1) // 2])
    elif scale_mode == "rmse":
        sigma = np.sqrt(lam.mean())
    else:
        raise ValueError(f"unknown scale_mode {scale_mode!r}")
    return sigma * (vec / np.sqrt(lam)) @ vec.T


def aligned_mtl_weights(gram: np.ndarray, scale_mode: str = "min") -> np.ndarray:
    """Per-task weights w = B 1 (direction wᵀG = sum of the aligned task gradients)."""
    return aligned_matrix(gram, scale_mode).sum(axis=1)


class AlignedMTL(GramianWeighting):
    name = "aligned_mtl"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS})
    summary = "Aligned-MTL: align the task gradients to condition number one, then sum them"
    paper = "Senushkin et al., CVPR 2023 (Aligned-MTL; official SamsungLabs/MTL ProcrustesSolver)"
    heads_use_weights = False
    hyperparameters = {
        "scale_mode": Hyperparameter("min", str, "scale of the aligned gradients: min (paper), median or rmse"),
    }

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if self.params["scale_mode"] not in SCALE_MODES:
            raise ConfigError(
                f"{self.name}.scale_mode must be one of {', '.join(SCALE_MODES)}, got {self.params['scale_mode']!r}"
            )

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        weights = aligned_mtl_weights(gramian.detach().double().cpu().numpy(), self.params["scale_mode"])
        return torch.as_tensor(weights, dtype=gramian.dtype, device=gramian.device)


class AlignedMTLUB(AlignedMTL):
    name = "aligned_mtl_ub"
    summary = "Aligned-MTL-UB: Aligned-MTL on the gradients w.r.t. the shared representation"
    paper = "Senushkin et al., CVPR 2023 (Aligned-MTL-UB; official SamsungLabs/MTL amtlub balancer)"
    forced_grad_level = "feature"
