"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021).

Solve, over the simplex, min_w  wᵀ GGᵀ (1/T) + c ||g0|| sqrt(wᵀ GGᵀ w)  (the dual of the
paper's eq. 3, as in the official implementation), with ||g0|| = sqrt(mean(GGᵀ)) the norm of
the average gradient. With g_w = wᵀG and lambda = c ||g0|| / ||g_w||, the update is
d = (g0 + lambda g_w) / (1 + c²)  (rescale=1, the official default), so the effective
per-task weights are (1/T + lambda w_t) / (1 + c²) (SPEC: "Method details").

Implements: Liu et al. 2021 (CAGrad), eq. 3 through its dual, with rescale=1.

Deviates from the authors' code: against Cranial-XIX/CAGrad (nyuv2/utils.py ``cagrad``): (1) its
``overwrite_grad`` multiplies the direction by T "to match the sum loss", so its step is T times
the one here, whose weights (1/T + λ w_t) / (1 + c²) follow the `002` copy
(Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/cagrad.py), which does not multiply; (2) the
Gramian is divided by its mean diagonal before SLSQP, run with ftol 1e-10 and maxiter 200
(scipy's defaults 1e-6 and 100 in the reference), and the solution is clipped to [0, 1]: the
same optimum, but the reference's solver can stop at its start when gradients are small; (3) the
reported weights include the 1/(1 + c²) rescaling, which the `002` copy leaves out of its logged
weights.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy.optimize import minimize

from trainables.errors import ConfigError
from trainables.methods.base import GramianWeighting, Hyperparameter
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec
from trainables.search_range import SearchRange

EPS = 1e-8


def cagrad_weights(gramian: np.ndarray, c: float, rescale: int = 1) -> np.ndarray:
    """Effective CAGrad weights from the Gramian GGᵀ (T x T), float64.

    The Gramian is first divided by its mean diagonal: the dual objective is homogeneous of
    degree one in GGᵀ and lambda is scale-free, so the weights are unchanged, but SLSQP's
    absolute tolerance no longer stops it at the starting point when gradients are small.
    """
    t = gramian.shape[0]
    b = np.full(t, 1.0 / t)
    scale = float(np.trace(gramian)) / t
    if not np.isfinite(scale) or scale <= 0.0:  # all gradients zero: nothing to avert
        return _rescaled(b, c, rescale)
    gramian = gramian / scale
    g0_norm = np.sqrt(max(gramian.mean(), 0.0) + EPS)
    coef = c * g0_norm + EPS

    def objective(w: np.ndarray) -> float:
        return float(w @ gramian @ b + coef * np.sqrt(max(w @ gramian @ w, 0.0) + EPS))

    res = minimize(
        objective,
        b.copy(),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * t,
        constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum()},),
        options={"ftol": 1e-10, "maxiter": 200},
    )
    w = np.clip(res.x, 0.0, 1.0)
    gw_norm = np.sqrt(max(w @ gramian @ w, 0.0))
    lam = coef / (gw_norm + EPS)
    return _rescaled(b + lam * w, c, rescale)


def _rescaled(weights: np.ndarray, c: float, rescale: int) -> np.ndarray:
    if rescale == 1:
        return weights / (1.0 + c**2)
    if rescale == 2:
        return weights / (1.0 + c)
    return weights


class CAGrad(GramianWeighting):
    name = "cagrad"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS})
    summary = "conflict-averse gradient: maximize the worst task improvement near the mean gradient"
    paper = "Liu et al., NeurIPS 2021 (eq. 3 and its dual; official code)"
    # The official implementation gives the task heads the plain sum of their gradients.
    heads_use_weights = False
    hyperparameters = {
        "c": Hyperparameter(
            0.5, float, "radius of the ball around the mean gradient (c >= 0)", low=0.0,
            # `002` A.6 (Tables 6-10): c in {0.2, 0.5, 0.8} on every benchmark. Continuous: the
            # CAGrad paper's c in [0, 1) (Liu et al. 2021, §3: for c < 1 it converges to a
            # stationary point of the average loss; c = 0 is gradient descent on it); a draw of
            # exactly 1 has probability 0.
            search=SearchRange(grid=(0.2, 0.5, 0.8), low=0.0, high=1.0),
        ),
        "rescale": Hyperparameter(1, int, "0: none, 1: divide by 1+c^2 (default), 2: divide by 1+c"),
    }

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if self.params["c"] < 0:
            raise ConfigError(f"cagrad.c must be >= 0, got {self.params['c']}")
        if self.params["rescale"] not in (0, 1, 2):
            raise ConfigError(f"cagrad.rescale must be 0, 1 or 2, got {self.params['rescale']}")

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        gg = gramian.detach().double().cpu().numpy()
        w = cagrad_weights(gg, self.params["c"], self.params["rescale"])
        return torch.as_tensor(w, dtype=gramian.dtype, device=gramian.device)
