"""CDTT: central direction + task tensioners (Nakamura, Tieme et al., "Leveraging convergence
behavior to balance conflicting tasks in multi-task learning", Neurocomputing 2022,
arXiv:2204.06698; reference code tiemink/MTL_TaskTensioner and the `002` authors'
``optimizers/task_tensioners.py``, which we follow step by step).

1. Central direction d: the EDM direction (``trainables.methods.edm``): the min-norm point of
   the unit gradients, scaled by gamma = 1 / sum_t c_t / ||g_t||, i.e. d = sum_t w_t g_t with
   w_t = gamma c_t / ||g_t||.
2. History: the gradient norms ||g_t|| of the last K = 10 steps are kept in a sliding window.
   Once the window is full, S_t(k) = sum of the window at step k, and from the following step on
       p_t = S_t(k) / S_t(k-1) + log10(L_t)
       tension_t = max(0, alpha / (1 + exp(-e p_t + e)) + 1 - alpha)      (alpha in [0, 1]).
3. Tension vector:  v = d + sum_t tension_t (g_t - d) / ||g_t - d||.  In weights:
       w'_j = w_j (1 - sum_t r_t) + r_j,   r_t = tension_t / ||g_t - d||.
4. Direction check (for every task in turn, on the current v): if g_iᵀv < 0 (angle above 90
   degrees), v is replaced by tan(pi - angle(g_i, v - g_i)) ||g_i|| w_unit, w_unit the unit
   component of v orthogonal to g_i. That point is where the line from g_i through v meets the
   hyperplane g_iᵀx = 0, so with s = ||g_i||^2 / (||g_i||^2 - g_iᵀv) in (0, 1):
       v <- g_i + s (v - g_i),   i.e.   w' <- s w' + (1 - s) e_i
   (algebraically the reference's trigonometric update, without its divisions by zero).

The history (norm window, step count, previous window sum) lives in buffers. The weights
returned are the w' actually applied (they still sum to one); the heads get the plain sum of
their losses (reference). `002` A.4 Prop. 5: equal norms and equal losses give equal weights.

Numerical guards (the reference would produce NaN in these cases):

* a zero task gradient: no shared update (zero weights) and no history step, as the reference;
* ||g_t - d|| below 1e-6 max(||g_t||, ||d||) (g_t is the central direction itself): the unit
  vector is undefined, so that task adds no tension;
* log10 of a zero loss is -inf (tension 1 - alpha, as the reference); a negative loss makes the
  reference's tension NaN, which its ``max(0, nan)`` turns into 0: we use 0.

``aggregate`` builds the Gramian and the direction in float64 (in column chunks), because the
tension weights r_t ~ 1 / ||g_t - d|| cancel in float32 when a gradient is close to d.

Implements: Nakamura et al., Neurocomputing 2022, the central direction plus task tensioners,
step by step as the `002` copy (Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/task_tensioners.py).

Deviates from the authors' code: against that code and tiemink/MTL_TaskTensioner: the direction
check in closed form instead of its trigonometric update, an exact min-norm solver by default
(theirs is ``solver="fw"``), and the guards against its NaN cases (all above); the same weights
otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from scipy.special import expit

from trainables.errors import ConfigError
from trainables.methods.base import GramianWeighting, Hyperparameter
from trainables.methods.edm import edm_weights
from trainables.methods.min_norm import SOLVERS
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec
from trainables.search_range import SearchRange

#: Length of the sliding window of gradient norms (MAX_BATCH_ITER in the reference).
WINDOW = 10
_DIFF_TOL = 1e-6
_CHUNK = 1 << 20


def tensions(alpha: float, parametrization: np.ndarray) -> np.ndarray:
    """max(0, alpha / (1 + exp(-e p + e)) + 1 - alpha), 0 where p is NaN (reference's max(0, nan))."""
    p = np.asarray(parametrization, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        value = alpha * expit(math.e * (p - 1.0)) + 1.0 - alpha
    return np.where(np.isnan(value), 0.0, np.maximum(value, 0.0))


def loss_log10(losses: np.ndarray) -> np.ndarray:
    """log10(L): -inf at 0, NaN for negative losses (as torch.log10 in the reference)."""
    losses = np.asarray(losses, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(losses)


def apply_tensioners(gram: np.ndarray, weights: np.ndarray, tension: np.ndarray) -> np.ndarray:
    """Step 3: weights of v = d + sum_t tension_t (g_t - d)/||g_t - d||, d = weightsᵀG."""
    kw = gram @ weights
    d_sq = max(float(weights @ kw), 0.0)
    diff_sq = np.maximum(np.diag(gram) - 2.0 * kw + d_sq, 0.0)
    diff = np.sqrt(diff_sq)
    scale = np.maximum(np.sqrt(np.maximum(np.diag(gram), 0.0)), math.sqrt(d_sq))
    defined = diff > _DIFF_TOL * scale
    ratio = np.where(defined, tension / np.where(defined, diff, 1.0), 0.0)
    return weights * (1.0 - ratio.sum()) + ratio


def direction_check(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Step 4: for each task in turn, if g_iᵀv < 0 move v onto the hyperplane g_iᵀx = 0."""
    weights = weights.copy()
    for i in range(len(weights)):
        gv = float(gram[i] @ weights)
        if gv < 0.0:
            n_sq = float(gram[i, i])
            s = n_sq / (n_sq - gv)
            weights *= s
            weights[i] += 1.0 - s
    return weights


def gramian64(grads: torch.Tensor) -> torch.Tensor:
    """GGᵀ accumulated in float64 over column chunks (no full float64 copy of G)."""
    t = grads.shape[0]
    gram = torch.zeros(t, t, dtype=torch.float64, device=grads.device)
    for start in range(0, grads.shape[1], _CHUNK):
        chunk = grads[:, start : start + _CHUNK].double()
        gram += chunk @ chunk.T
    return gram


def combine64(weights: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """weightsᵀG computed in float64 chunk by chunk, returned in the gradients' dtype."""
    parts = [weights @ grads[:, s : s + _CHUNK].double() for s in range(0, grads.shape[1], _CHUNK)]
    return torch.cat(parts).to(grads.dtype) if parts else grads.new_zeros(0)


class CDTT(GramianWeighting):
    name = "cdtt"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS})
    summary = "CDTT: EDM's central direction plus task tensioners from the gradient-norm history"
    paper = "Nakamura et al., Neurocomputing 2022 (arXiv:2204.06698); `002` optimizers/task_tensioners.py"
    heads_use_weights = False
    hyperparameters = {
        "alpha": Hyperparameter(
            0.3, float, "tension sensitivity alpha in [0, 1] (authors' config: 0.3)", low=0.0, high=1.0,
            # `002` A.6 (Tables 6-10): alpha in {0.2, 0.4, 0.6, 0.8, 1.0}. Continuous: the whole
            # interval the CDTT paper defines alpha on (tension = max(0, alpha s(p) + 1 - alpha)).
            search=SearchRange(grid=(0.2, 0.4, 0.6, 0.8, 1.0), low=0.0, high=1.0),
        ),
        "solver": Hyperparameter("exact", str, "min-norm solver of the central direction: exact, fw (reference), pgd"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    norm_window: torch.Tensor
    iterations: torch.Tensor
    prev_window_sum: torch.Tensor
    has_prev: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        alpha = self.params["alpha"]
        if not (0.0 <= alpha <= 1.0):
            raise ConfigError(f"cdtt.alpha must be in [0, 1], got {alpha}")
        if self.params["solver"] not in SOLVERS:
            raise ConfigError(f"cdtt.solver must be one of {', '.join(SOLVERS)}, got {self.params['solver']!r}")
        self.register_buffer("norm_window", torch.zeros(self.n_tasks, WINDOW, dtype=torch.float64))
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_window_sum", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))

    def _step(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """One CDTT step on the float64 Gramian: updates the history, returns the weights."""
        weights, _, norms = edm_weights(gram, self.params["solver"])
        if not np.any(weights):  # a zero gradient: the reference skips the step entirely
            return weights
        k = int(self.iterations)
        self.norm_window[:, k % WINDOW] = torch.as_tensor(norms, dtype=torch.float64, device=self.norm_window.device)
        self.iterations += 1
        if k + 1 >= WINDOW:
            window_sum = self.norm_window.sum(dim=1).cpu().numpy()
            if bool(self.has_prev):
                prev = self.prev_window_sum.cpu().numpy()
                p = window_sum / prev + loss_log10(losses)
                weights = apply_tensioners(gram, weights, tensions(self.params["alpha"], p))
                weights = direction_check(gram, weights)
            self.prev_window_sum.copy_(torch.as_tensor(window_sum))
            self.has_prev.fill_(True)
        return weights

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        weights = self._step(gramian.detach().double().cpu().numpy(), losses.detach().double().cpu().numpy())
        return torch.as_tensor(weights, dtype=gramian.dtype, device=gramian.device)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gram = gramian64(grads.detach()).cpu().numpy()
        weights = torch.as_tensor(
            self._step(gram, losses.detach().double().cpu().numpy()), dtype=torch.float64, device=grads.device
        )
        return combine64(weights, grads.detach()), weights.to(grads.dtype)
