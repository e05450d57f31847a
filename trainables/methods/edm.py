"""EDM: "Follow the bisector" (Katrutsa, Merkulov, Tursynbek & Oseledets, 2020, arXiv:2007.06937).

The min-norm point of the convex hull of the NORMALIZED task gradients u_t = g_t / ||g_t||:

    c = argmin_{c in simplex} || sum_t c_t u_t ||^2,

whose direction sum_t c_t u_t makes equal angles with every u_t that gets a positive weight
(the KKT conditions give u_tᵀd = ||d||^2 on the support): the "bisector" of the gradients.
It is solved from the Gramian of the unit vectors, K_ij / (||g_i|| ||g_j||), with the shared
min-norm solver (``trainables.methods.min_norm``; the reference uses Frank-Wolfe, available as
``solver="fw"``).

Scaling, as in the `002` authors' ``optimizers/edm.py`` (and the EDM / CDTT reference code):
the direction is gamma * sum_t c_t u_t with gamma = 1 / sum_t (c_t / ||g_t||), so the effective
weights on the raw gradients, which we return, are

    w_t = gamma c_t / ||g_t|| = (c_t / ||g_t||) / sum_s (c_s / ||g_s||)   (they sum to one).

If any task gradient is zero the reference leaves the shared parameters without an update; we
return zero weights (zero direction). The heads get the plain sum of their losses (reference).
`002` A.4 Prop. 4: two gradients of equal norm get equal weights.

Implements: Katrutsa et al. 2020, the min-norm point of the normalized task gradients ("follow
the bisector"), with the `002` authors' scaling (Gabriel-SGama/UnitScal_vs_SMTOs,
optimizers/edm.py).

Deviates from the authors' code: against that code: the min-norm problem is solved exactly by
default (its Frank-Wolfe is ``solver="fw"``), and a zero task gradient gives zero weights (a
zero shared direction) where the reference leaves the shared parameters without an update.
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


def edm_weights(gram: np.ndarray, solver: str = "exact") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(effective weights w, min-norm weights c of the unit gradients, gradient norms) from GGᵀ.

    All zeros when some gradient is zero (the reference then skips the shared update).
    """
    gram = np.asarray(gram, dtype=np.float64)
    t = gram.shape[0]
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    if not np.all(np.isfinite(gram)) or np.any(norms <= 0.0):
        return np.zeros(t), np.zeros(t), norms
    unit_gram = gram / np.outer(norms, norms)
    c = min_norm_weights(unit_gram, solver)
    scaled = c / norms
    return scaled / scaled.sum(), c, norms


class EDM(GramianWeighting):
    name = "edm"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS})
    summary = "EDM (follow the bisector): min-norm point of the normalized task gradients"
    paper = "Katrutsa et al. 2020, arXiv:2007.06937 (min-norm of normalized gradients; `002` optimizers/edm.py scaling)"
    heads_use_weights = False
    hyperparameters = {
        "solver": Hyperparameter("exact", str, "min-norm solver: exact, fw (reference Frank-Wolfe), pgd"),
    }

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if self.params["solver"] not in SOLVERS:
            raise ConfigError(f"{self.name}.solver must be one of {', '.join(SOLVERS)}, got {self.params['solver']!r}")

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        weights, _, _ = edm_weights(gramian.detach().double().cpu().numpy(), self.params["solver"])
        return torch.as_tensor(weights, dtype=gramian.dtype, device=gramian.device)
