"""Nash-MTL: multi-task learning as a bargaining game (Navon, Shamsian, Achituve, Maron,
Kawaguchi, Chechik & Fetaya, ICML 2022; official code AvivNavon/nash-mtl
``methods/weight_methods.py``, reused unchanged by the `002` authors in ``optimizers/nash_mtl.py``).

The Nash bargaining direction is d = sum_t alpha_t g_t with alpha > 0 solving (the paper's
characterization of the bargaining solution, Gᵀ G alpha = 1 / alpha with G's columns the g_t)

    GGᵀ alpha = 1 / alpha      (element-wise),   i.e.   alpha_t (GGᵀ alpha)_t = 1 for all t.

The reference divides GGᵀ by its Frobenius norm f before solving, but passes f into the
constraints (-log(alpha_t f) - log((GGᵀ/f) alpha)_t <= 0) and into the objective, so its
subproblems are those of the raw Gramian up to a constant factor: the solution solves the
equation above for the RAW Gramian; the division only conditions the solver. It then runs at most
``optim_niter`` = 20 convex-concave steps with cvxpy/ECOS, warm-started from the previous
step's alpha, and keeps the previous alpha when a subproblem fails (e.g. a zero gradient makes the
equation unsolvable).

cvxpy is not available here, so we reach the same fixed point differently: the equation is the
stationarity condition of the strictly convex f(alpha) = ½ alphaᵀ K alpha - sum_t log alpha_t,
which we minimize by damped Newton steps (at most ``optim_niter``, with a backtracking line
search that keeps alpha > 0). For conditioning we also normalize the Gramian, by its diagonal
instead of its Frobenius norm (alpha = beta / ||g||, with beta solving the same equation for the
gradients' correlation matrix), which makes the iteration independent of the gradient scale. We
start from the previous step's alpha (the reference's warm start) or from beta = 1 (exact for
orthogonal gradients), whichever has the lower f. If the result is not finite or does not satisfy
the equation to 1e-3 (the reference's stopping threshold), the previous alpha is kept, as in
the reference; the first previous alpha is all ones.

``update_weights_every`` = k recomputes alpha on every k-th step only and reuses it in between
(the step count is a buffer). In between, as in the reference, no per-task gradient is computed
(``reused_weights``): the step costs what EW's does, and since the direction's norm is then
unknown, the clip factor of the last update step is reused. ``max_norm`` = 1: the reference clips the norm of the shared
parameters' gradient to max_norm after the backward pass (``clip_grad_norm_``: factor
max_norm / (||d|| + 1e-6) when below one; no clipping when max_norm <= 0). We apply that factor to
the returned direction (at whichever gradient level the trainer uses), so the returned weights
are alpha times the factor (direction = weightsᵀG). The task heads get alpha, unclipped, as in
the reference (it back-propagates sum_t alpha_t L_t): ``heads_use_weights`` is off and
``extra_loss`` adds sum_t (alpha_t - 1) L_t to the trainer's plain sum. The mean clip factor and
the mean of sum_t alpha_t are reported per epoch (``nash_clip_scale``, ``nash_alpha_sum``).

Implements: Navon et al., ICML 2022 (Nash-MTL), the bargaining solution GᵀGα = 1/α with the
official code's norm clipping.

Deviates from the authors' code: against AvivNavon/nash-mtl (methods/weight_methods.py): damped
Newton on a strictly convex objective instead of cvxpy/ECOS convex-concave steps (the same fixed
point, accepted to the reference's 1e-3), the Gramian normalized by its diagonal instead of its
Frobenius norm, and the clip factor applied to the returned direction at whichever gradient
level the trainer uses (all above).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from trainables.errors import ConfigError
from trainables.methods.base import GramianWeighting, Hyperparameter
from trainables.methods.capabilities import AddsHeadsLoss, ReusesWeights
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

#: Residual max_t |alpha_t (K alpha)_t - 1| accepted as a solution (the reference's stop threshold).
ACCEPT_TOL = 1e-3
_SOLVED_TOL = 1e-12


def _objective(beta: np.ndarray, corr: np.ndarray) -> float:
    if np.any(beta <= 0.0) or not np.all(np.isfinite(beta)):
        return math.inf
    return float(0.5 * beta @ corr @ beta - np.sum(np.log(beta)))


def _newton(corr: np.ndarray, beta: np.ndarray, max_iter: int) -> np.ndarray:
    """Damped Newton on f(beta) = ½ betaᵀCbeta - sum log beta (stationary: beta ⊙ Cbeta = 1)."""
    value = _objective(beta, corr)
    for _ in range(max_iter):
        c_beta = corr @ beta
        if np.max(np.abs(beta * c_beta - 1.0)) < _SOLVED_TOL:
            break
        grad = c_beta - 1.0 / beta
        hess = corr + np.diag(1.0 / beta**2)
        step = -np.linalg.solve(hess, grad)
        t = 1.0
        shrinking = step < 0
        if np.any(shrinking):  # stay strictly positive
            t = min(1.0, 0.99 * float(np.min(-beta[shrinking] / step[shrinking])))
        slope = float(grad @ step)
        while t > 1e-12:
            candidate = beta + t * step
            new_value = _objective(candidate, corr)
            if new_value <= value + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        beta, value = candidate, new_value
    return beta


def nash_bargaining_weights(gram: np.ndarray, previous: np.ndarray, max_iter: int = 20) -> np.ndarray:
    """alpha > 0 with alpha ⊙ (GGᵀ alpha) = 1, or ``previous`` when that cannot be solved."""
    gram = np.asarray(gram, dtype=np.float64)
    previous = np.asarray(previous, dtype=np.float64)
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    if not np.all(np.isfinite(gram)) or np.any(norms <= 0.0):
        return previous
    corr = 0.5 * (gram + gram.T) / np.outer(norms, norms)
    starts = [np.ones(len(norms))]
    if np.all(previous > 0.0) and np.all(np.isfinite(previous)):
        starts.append(previous * norms)  # warm start from the previous alpha
    beta = min(starts, key=lambda b: _objective(b, corr))
    try:
        beta = _newton(corr, beta, max_iter)
    except np.linalg.LinAlgError:
        return previous
    if not np.all(np.isfinite(beta)) or np.any(beta <= 0.0):
        return previous
    if np.max(np.abs(beta * (corr @ beta) - 1.0)) > ACCEPT_TOL:
        return previous
    return beta / norms


def clip_factor(gram: np.ndarray, alpha: np.ndarray, max_norm: float) -> float:
    """clip_grad_norm_'s factor for the direction alphaᵀG: min(1, max_norm / (||d|| + 1e-6))."""
    if max_norm <= 0.0:
        return 1.0
    norm = math.sqrt(max(float(alpha @ gram @ alpha), 0.0))
    return min(1.0, max_norm / (norm + 1e-6))


class NashMTL(ReusesWeights, AddsHeadsLoss, GramianWeighting):
    name = "nash_mtl"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.TASK_SCALE_INVARIANT})
    summary = "Nash-MTL: Nash bargaining solution GGᵀα = 1/α, direction clipped to max_norm"
    paper = "Navon et al., ICML 2022 (bargaining solution GᵀGα = 1/α); official AvivNavon/nash-mtl code"
    # The heads get alpha (unclipped) through extra_loss, on top of the trainer's plain sum.
    heads_use_weights = False
    hyperparameters = {
        "optim_niter": Hyperparameter(20, int, "iterations of the solver per weight update (>= 1)"),
        "update_weights_every": Hyperparameter(1, int, "recompute alpha every k-th step, reuse it in between (>= 1)"),
        "max_norm": Hyperparameter(1.0, float, "clip the direction's norm to this (<= 0: no clipping)"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    step: torch.Tensor
    prev_alpha: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if self.params["optim_niter"] < 1:
            raise ConfigError(f"nash_mtl.optim_niter must be >= 1, got {self.params['optim_niter']}")
        if self.params["update_weights_every"] < 1:
            raise ConfigError(f"nash_mtl.update_weights_every must be >= 1, got {self.params['update_weights_every']}")
        if not math.isfinite(self.params["max_norm"]):
            raise ConfigError(f"nash_mtl.max_norm must be finite, got {self.params['max_norm']}")
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_alpha", torch.ones(self.n_tasks, dtype=torch.float64))
        self._head_alpha: torch.Tensor | None = None
        self._last_factor = 1.0
        self._clip_sum = 0.0
        self._alpha_sum = 0.0
        self._calls = 0

    def reused_weights(self) -> torch.Tensor | None:
        if int(self.step) % self.params["update_weights_every"] == 0:
            return None
        self.step += 1
        alpha = self.prev_alpha.cpu().numpy()
        self._head_alpha = torch.as_tensor(alpha)
        self._clip_sum += self._last_factor
        self._alpha_sum += float(alpha.sum())
        self._calls += 1
        return torch.as_tensor(alpha * self._last_factor)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        gram = gramian.detach().double().cpu().numpy()
        if int(self.step) % self.params["update_weights_every"] == 0:
            previous = self.prev_alpha.cpu().numpy()
            alpha = nash_bargaining_weights(gram, previous, self.params["optim_niter"])
            self.prev_alpha.copy_(torch.as_tensor(alpha))
        else:
            alpha = self.prev_alpha.cpu().numpy()
        self.step += 1
        factor = clip_factor(gram, alpha, self.params["max_norm"])
        self._last_factor = factor
        self._head_alpha = torch.as_tensor(alpha, dtype=gramian.dtype, device=gramian.device)
        self._clip_sum += factor
        self._alpha_sum += float(alpha.sum())
        self._calls += 1
        return torch.as_tensor(alpha * factor, dtype=gramian.dtype, device=gramian.device)

    def extra_loss(self, losses: torch.Tensor) -> torch.Tensor | None:
        if self._head_alpha is None:
            return None
        alpha = self._head_alpha.to(device=losses.device, dtype=losses.dtype)
        return ((alpha - 1.0) * losses).sum()

    def epoch_diagnostics(self) -> dict[str, float]:
        if not self._calls:
            return {}
        out = {"nash_clip_scale": self._clip_sum / self._calls, "nash_alpha_sum": self._alpha_sum / self._calls}
        self._clip_sum = self._alpha_sum = 0.0
        self._calls = 0
        return out
