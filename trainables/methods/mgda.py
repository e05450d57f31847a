"""MGDA and MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

MGDA takes the min-norm point of the convex hull of the task gradients (eq. 3, Algorithm 2):

    alpha = argmin_{alpha in simplex} || sum_t alpha_t g_t ||^2,

solved from the Gramian only (``trainables.methods.min_norm``: the paper's two-task closed form,
Algorithm 1, and an exact solver for T >= 3; see there for how it relates to the reference's
projected-gradient and Frank-Wolfe iterations).

Gradient normalization (reference code, not in the paper; ``normalize_gradients`` of
isl-org/MultiObjectiveOptimization, reused by the `002` authors): before solving, each g_t is
divided by n_t =

* ``none``: 1;   ``l2``: ||g_t||;   ``loss``: L_t;   ``loss+``: L_t ||g_t||  (our default, as
  in the `002` authors' ``optimizers/mgda.py`` and the reference's ``sample.json``).

A zero denominator leaves the gradient as it is (as in the reference). The ``loss`` variants need
positive losses (the reference says so); a negative loss would flip the gradient, so we also
leave it unnormalized (the reference would divide by the negative value).

What the solved alpha multiplies (``weights_on``) follows the `002` code (and LibMTL):

* ``normalized`` (MGDA's default): the direction is sum_t alpha_t g_t / n_t, the normalized
  gradients (``optimizers/mgda.py``, shared-parameter branch). The effective weights on the raw
  gradients, which we return, are alpha_t / n_t.
* ``raw`` (MGDA-UB's default): alpha multiplies the raw losses, direction sum_t alpha_t g_t
  (``optimizers/mgda.py``, ``ub=True`` branch, as in Sener & Koltun's own training script).

In both the task heads get the plain sum of their losses (the `002` code passes the heads as
``specialized_parameters`` and gives them the unweighted sum; Sener & Koltun's own script
back-propagates sum_t alpha_t L_t, so there the heads would get alpha).

MGDA-UB (Sec. 3.3) solves the same problem on the gradients w.r.t. the shared representation z
(Theorem 1: an upper bound that needs one backward pass). In our trainer that is
``grad_level=feature``: ``MGDAUB.forced_grad_level = "feature"`` makes the trainer run it there
whatever the configured level.

Implements: Sener & Koltun, NeurIPS 2018, MGDA: eq. 3 and Algorithms 1-2; MGDA-UB: §3.3 and
Theorem 1.

Deviates from the authors' code: against isl-org/MultiObjectiveOptimization and the `002` copy
(Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/mgda.py, min_norm.py): the min-norm problem is
solved exactly for T >= 3 by default (their iterations are ``solver="pgd"`` / ``"fw"``); a
negative loss leaves its gradient unnormalized where the reference divides by it; the heads get
the plain sum, as in the `002` code (Sener & Koltun's own script gives them alpha).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from trainables.errors import ConfigError
from trainables.methods.base import GramianWeighting, Hyperparameter
from trainables.methods.min_norm import SOLVERS, min_norm_weights
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
WEIGHTS_ON = ("normalized", "raw")


def gradient_normalizers(gram: np.ndarray, losses: np.ndarray, normalization: str) -> np.ndarray:
    """The reference's per-task denominators n_t (1 where the denominator would be <= 0)."""
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    if normalization == "none":
        denom = np.ones_like(norms)
    elif normalization == "l2":
        denom = norms
    elif normalization == "loss":
        denom = losses.copy()
    elif normalization == "loss+":
        denom = losses * norms
    else:
        raise ValueError(f"unknown normalization {normalization!r}")
    usable = np.isfinite(denom) & (denom > 0.0)
    if normalization in ("loss", "loss+"):
        usable &= losses > 0.0
    return np.where(usable, denom, 1.0)


def mgda_weights(
    gram: np.ndarray, losses: np.ndarray, normalization: str = "loss+", weights_on: str = "normalized", solver: str = "exact"
) -> tuple[np.ndarray, np.ndarray]:
    """(effective weights on the raw gradients, alpha on the simplex) from GGᵀ and the losses."""
    gram = np.asarray(gram, dtype=np.float64)
    denom = gradient_normalizers(gram, np.asarray(losses, dtype=np.float64), normalization)
    normalized = gram / np.outer(denom, denom)
    alpha = min_norm_weights(normalized, solver)
    weights = alpha / denom if weights_on == "normalized" else alpha
    return weights, alpha


class MGDA(GramianWeighting):
    name = "mgda"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    summary = "MGDA: min-norm point of the convex hull of the (normalized) task gradients"
    paper = "Sener & Koltun, NeurIPS 2018, eq. 3 and Algorithms 1-2 (reference code's normalization)"
    # The `002` code gives the task heads the plain sum of their losses.
    heads_use_weights = False
    hyperparameters = {
        "normalization": Hyperparameter("loss+", str, "gradient normalization before solving: none, l2, loss, loss+"),
        "weights_on": Hyperparameter("normalized", str, "alpha multiplies the 'normalized' or the 'raw' gradients"),
        "solver": Hyperparameter("exact", str, "min-norm solver: exact, pgd (reference MGDA), fw (Frank-Wolfe)"),
    }

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        p = self.params
        if p["normalization"] not in NORMALIZATIONS:
            raise ConfigError(f"{self.name}.normalization must be one of {', '.join(NORMALIZATIONS)}, got {p['normalization']!r}")
        if p["weights_on"] not in WEIGHTS_ON:
            raise ConfigError(f"{self.name}.weights_on must be one of {', '.join(WEIGHTS_ON)}, got {p['weights_on']!r}")
        if p["solver"] not in SOLVERS:
            raise ConfigError(f"{self.name}.solver must be one of {', '.join(SOLVERS)}, got {p['solver']!r}")

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        gram = gramian.detach().double().cpu().numpy()
        loss = losses.detach().double().cpu().numpy()
        weights, _ = mgda_weights(gram, loss, self.params["normalization"], self.params["weights_on"], self.params["solver"])
        return torch.as_tensor(weights, dtype=gramian.dtype, device=gramian.device)


class MGDAUB(MGDA):
    name = "mgda_ub"
    summary = "MGDA-UB: MGDA on the gradients w.r.t. the shared representation (upper bound)"
    paper = "Sener & Koltun, NeurIPS 2018, Sec. 3.3 (Theorem 1, MGDA-UB)"
    forced_grad_level = "feature"
    hyperparameters = {
        **MGDA.hyperparameters,
        "weights_on": Hyperparameter("raw", str, "alpha multiplies the 'raw' losses (reference) or the 'normalized' gradients"),
    }
