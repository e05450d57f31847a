"""PCGrad: projecting conflicting gradients (Yu et al., "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020, Algorithm 1).

For every task i, g_i' starts at g_i; for every other task j, in a random order drawn anew
for each i, if g_i'ᵀ g_j < 0 the conflicting component is projected out:

    g_i' <- g_i' - (g_i'ᵀ g_j / ||g_j||²) g_j          (projection on the normal plane of g_j)

The update is the SUM of the projected gradients, Σ_i g_i' (Algorithm 1; the `002` authors'
optimizers/pcgrad.py, LibMTL's PCGrad.py and the original release all sum). The inner
products are always taken with the ORIGINAL g_j, and j runs over the other tasks only (the
paper's "j ≠ i"; LibMTL also visits j = i, a no-op for a non-negative ||g_i||²).

Every g_i' is a linear combination of the original gradients, g_i' = Σ_k C_ik g_k, so the
surgery runs on the T x T Gramian GGᵀ in float64 (the same arithmetic, T² dot products
done once) and the direction is (1ᵀC) G. PCGrad defines no task weights: the returned
weights are None (``defines_weights = False``); the task heads get the plain sum of their
losses, as in the `002` and LibMTL implementations.

The random orders come from the method's own ``torch.Generator`` whose state is a buffer,
so runs are reproducible (``seed``; -1 derives it from the run's torch seed, i.e. from the
trainer's seed + run index) and checkpoints resume the same stream. The helpers for that
generator are in ``trainables.methods.seeded``, shared by the randomized methods.

Implements: Yu et al. 2020 (PCGrad), Algorithm 1.

Deviates from the authors' code: none known in the direction (compared with the `002` copy,
Gabriel-SGama/UnitScal_vs_SMTOs optimizers/pcgrad.py, and LibMTL's PCGrad.py): the surgery runs
on the Gramian in float64 (the same arithmetic), j ≠ i only (LibMTL also visits j = i, a no-op),
and the random orders come from the method's own seeded generator.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from trainables.gradients import gramian64
from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.methods.seeded import SEED_HELP, generator_of, random_orders, register_generator
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

# --------------------------------------------------------------------------- PCGrad
def pcgrad_coefficients(gramian: np.ndarray, orders: Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
    """C (T x T) with g_i' = Σ_k C_ik g_k after PCGrad's surgery, and the number of projections.

    ``orders[i]`` lists the tasks j ≠ i in the order they are visited for task i.
    """
    t = gramian.shape[0]
    coef = np.eye(t)
    projections = 0
    for i in range(t):
        for j in orders[i]:
            norm_j = gramian[j, j]
            if norm_j <= 0.0:  # g_j = 0: nothing to conflict with
                continue
            dot = float(coef[i] @ gramian[:, j])  # g_i'ᵀ g_j
            if dot < 0.0:
                coef[i, j] -= dot / norm_j
                projections += 1
    return coef, projections


class PCGrad(GradientAggregator):
    name = "pcgrad"
    properties = frozenset({Property.HOMOGENEOUS})
    summary = "gradient surgery: project each task gradient off the others it conflicts with, then sum"
    paper = "Yu et al., NeurIPS 2020 (Gradient Surgery, Algorithm 1)"
    defines_weights = False
    heads_use_weights = False
    hyperparameters = {"seed": Hyperparameter(-1, int, SEED_HELP)}

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        register_generator(self, self.params["seed"])
        self._pairs = 0
        self._projections = 0

    def projected(self, grads: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The coefficient matrix C of the projected gradients (in the gradients' dtype)."""
        gram = gramian64(grads)
        with generator_of(self) as gen:
            orders = random_orders(self.n_tasks, gen)
        coef, projections = pcgrad_coefficients(gram, orders)
        return torch.as_tensor(coef, dtype=grads.dtype, device=grads.device), projections

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, None]:
        coef, projections = self.projected(grads)
        self._pairs += self.n_tasks * (self.n_tasks - 1)
        self._projections += projections
        return coef.sum(0) @ grads.detach(), None

    def epoch_diagnostics(self) -> dict[str, float]:
        """Fraction of (i, j) visits that projected (a conflict with the running g_i')."""
        out = {"projection_rate": self._projections / self._pairs} if self._pairs else {}
        self._pairs = self._projections = 0
        return out
