"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating
and Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021, eqs. 2-3
and Algorithm 1).

For every task i, g_i' starts at g_i; for every other task j in a random order, with
φ_ij = cos(g_i', g_j) and the EMA target φ̂_ij:

    if φ_ij < φ̂_ij:
        g_i' <- g_i' + ||g_i'|| (φ̂_ij √(1 - φ_ij²) - φ_ij √(1 - φ̂_ij²))
                       / (||g_j|| √(1 - φ̂_ij²)) g_j                          (eq. 2)
    φ̂_ij <- (1 - β) φ̂_ij + β φ_ij                                                                  (eq. 3)

so after an adjustment cos(g_i', g_j) = φ̂_ij exactly (the adjustment rotates g_i' towards
g_j in their plane). The targets start at 0, where the adjustment is PCGrad's projection.
The update is Σ_i g_i'. The inner products use the running g_i' and the original g_j, as in
Algorithm 1 and LibMTL's GradVac.py.

Deviations and choices:

* β defaults to 1e-2, the paper's value (LibMTL's default is 0.5).
* The EMA update runs at every visit of (i, j), as in the paper's Algorithm 1 (eq. 3 tracks
  the observed similarity). LibMTL updates φ̂ only inside the ``if`` (when an adjustment
  happens), which can only lower the targets; we follow the paper.
* Parameter groups: only ``group_type = "whole_model"`` (one group, LibMTL's default). The
  paper's per-layer groups ("all_layer") need the parameter boundaries, which the interface
  does not pass, and do not exist for the representation gradients of grad_level=feature.
* Small constants as in LibMTL: 1e-8 in the cosine's and in eq. 2's denominators, and
  1 - φ² is clamped at 0 before its square root (it can round below 0).

Every g_i' is a linear combination of the original gradients, so the loop runs on the
Gramian in float64 and the direction is (1ᵀC) G. GradVac defines no task weights; the heads
get the plain sum of their losses (LibMTL). The targets φ̂ (T x T, float64) are a buffer;
the random orders come from the method's seeded generator (see ``pcgrad``).

Implements: Wang et al., ICLR 2021, eqs. 2-3 and Algorithm 1.

Deviates from the authors' code: not compared with the authors' code (we know of no public
release); against LibMTL's GradVac.py (median-research-group/LibMTL): β defaults to the paper's
1e-2 (LibMTL 0.5), the EMA updates at every visit (LibMTL only when adjusting), and only the
whole-model group.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from trainables.errors import ConfigError
from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.gradients import gramian64
from trainables.methods.seeded import SEED_HELP, generator_of, random_orders, register_generator
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

EPS = 1e-8
GROUP_TYPES = ("whole_model",)


def gradvac_coefficients(
    gramian: np.ndarray, targets: np.ndarray, orders: Sequence[Sequence[int]], beta: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """C with g_i' = Σ_k C_ik g_k after GradVac, the updated targets and the number of adjustments."""
    t = gramian.shape[0]
    coef = np.eye(t)
    targets = targets.copy()
    adjustments = 0
    norms = np.sqrt(np.clip(np.diag(gramian), 0.0, None))
    for i in range(t):
        for j in orders[i]:
            norm_i = math.sqrt(max(float(coef[i] @ gramian @ coef[i]), 0.0))
            norm_j = norms[j]
            phi = float(coef[i] @ gramian[:, j]) / (norm_i * norm_j + EPS)
            target = targets[i, j]
            if phi < target:
                root_target = math.sqrt(max(1.0 - target**2, 0.0))
                root_phi = math.sqrt(max(1.0 - phi**2, 0.0))
                scale = norm_i * (target * root_phi - phi * root_target) / (norm_j * root_target + EPS)
                coef[i, j] += scale
                adjustments += 1
            targets[i, j] = (1.0 - beta) * target + beta * phi
    return coef, targets, adjustments


class GradVac(GradientAggregator):
    name = "gradvac"
    properties = frozenset({Property.HOMOGENEOUS})
    summary = "gradient vaccine: raise each pair's cosine similarity to its running (EMA) target"
    paper = "Wang et al., ICLR 2021 (Gradient Vaccine, eqs. 2-3, Algorithm 1)"
    defines_weights = False
    heads_use_weights = False
    hyperparameters = {
        "beta": Hyperparameter(0.01, float, "EMA rate of the target similarities, in (0, 1]"),
        "group_type": Hyperparameter("whole_model", str, "parameter groups: only 'whole_model' is supported"),
        "seed": Hyperparameter(-1, int, SEED_HELP),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    targets: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if not 0.0 < self.params["beta"] <= 1.0:
            raise ConfigError(f"gradvac.beta must be in (0, 1], got {self.params['beta']}")
        if self.params["group_type"] not in GROUP_TYPES:
            raise ConfigError(
                f"gradvac.group_type {self.params['group_type']!r} is not supported: only 'whole_model' "
                "(per-layer groups need parameter boundaries and do not exist at grad_level=feature)"
            )
        self.register_buffer("targets", torch.zeros(self.n_tasks, self.n_tasks, dtype=torch.float64))
        register_generator(self, self.params["seed"])
        self._pairs = 0
        self._adjustments = 0

    def adjusted(self, grads: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Coefficients C of the adjusted gradients; updates the targets."""
        gram = gramian64(grads)
        with generator_of(self) as gen:
            orders = random_orders(self.n_tasks, gen)
        coef, targets, adjustments = gradvac_coefficients(
            gram, self.targets.detach().cpu().numpy(), orders, self.params["beta"]
        )
        self.targets.copy_(torch.as_tensor(targets))
        return torch.as_tensor(coef, dtype=grads.dtype, device=grads.device), adjustments

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, None]:
        coef, adjustments = self.adjusted(grads)
        self._pairs += self.n_tasks * (self.n_tasks - 1)
        self._adjustments += adjustments
        return coef.sum(0) @ grads.detach(), None

    def epoch_diagnostics(self) -> dict[str, float]:
        """Fraction of (i, j) visits that adjusted, and the mean target similarity."""
        out: dict[str, float] = {}
        if self._pairs:
            off = ~torch.eye(self.n_tasks, dtype=torch.bool, device=self.targets.device)
            out = {"adjust_rate": self._adjustments / self._pairs, "target_mean": float(self.targets[off].mean())}
        self._pairs = self._adjustments = 0
        return out
