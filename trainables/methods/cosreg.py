"""CosReg: orthogonal-gradient regularization (Suteu & Guo, "Regularizing Deep Multi-Task
Networks using Orthogonal Gradients", arXiv 1912.06844, 2019).

The training loss adds a penalty on the squared cosine similarity of the task gradients:

    L = sum_t L_t + lambda P,   P = mean_{i != j} cos²(g_i, g_j)

(normalized over the T(T-1) ordered pairs as the public implementation does,
``((C**2).sum() - T) / (T² - T)`` of the cosine matrix C). The update is sum_t g_t +
lambda grad_theta P, and grad_theta P contains the Hessian-vector products of every task loss:
the trainer builds the per-task gradients with their graph (it declares ``PenalizesGradients``) and
back-propagates ``gradient_penalty(G)`` through the heads and the encoder (a double backward,
as the reference does with ``create_graph=True``). At ``grad_level=feature`` the penalty is
on the gradients with respect to the shared representation instead (`004`'s surrogate).

The weights applied to the task gradients are 1 each (the heads get the plain sum); the
penalty is an extra term, not a weighting.

Implements: Suteu & Guo, 2019, the squared-cosine penalty on the task gradients.

Deviates from the authors' code: not compared with the authors' code (we know of no release by
Suteu & Guo; the public implementation whose normalization we follow, above, is not named here);
at grad_level=feature the penalty is on the representation gradients instead, `004`'s surrogate.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.methods.capabilities import PenalizesGradients
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

EPS = 1e-8


def cosine_penalty(grads: torch.Tensor) -> torch.Tensor:
    """mean over i != j of cos²(g_i, g_j) for G (T x d); differentiable; 0 for T = 1."""
    t = grads.shape[0]
    if t < 2:
        return grads.sum() * 0.0
    unit = grads / (grads.norm(dim=1, keepdim=True) + EPS)
    cos = unit @ unit.T
    off = ~torch.eye(t, dtype=torch.bool, device=grads.device)
    return cos[off].pow(2).sum() / (t * (t - 1))


class CosReg(PenalizesGradients, GradientAggregator):
    name = "cosreg"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS})
    summary = "orthogonal-gradient regularization: sum of losses plus a penalty on squared gradient cosines"
    paper = "Suteu & Guo, 2019 (Regularizing Deep Multi-Task Networks using Orthogonal Gradients)"
    heads_use_weights = False
    hyperparameters = {"penalty": Hyperparameter(1.0, float, "weight lambda of the squared-cosine penalty (>= 0)")}

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if not (math.isfinite(self.params["penalty"]) and self.params["penalty"] >= 0.0):
            raise ConfigError(f"cosreg.penalty must be a finite number >= 0, got {self.params['penalty']}")
        self._penalty_sum = 0.0
        self._calls = 0

    def gradient_penalty(self, grads: torch.Tensor) -> torch.Tensor:
        """lambda P(G), to back-propagate through the model (G built with create_graph=True)."""
        penalty = cosine_penalty(grads)
        self._penalty_sum += float(penalty.detach())
        self._calls += 1
        return self.params["penalty"] * penalty

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.ones(self.n_tasks, dtype=grads.dtype, device=grads.device)
        return grads.sum(0), weights

    def epoch_diagnostics(self) -> dict[str, float]:
        out = {"mean_squared_cosine": self._penalty_sum / self._calls} if self._calls else {}
        self._penalty_sum, self._calls = 0.0, 0
        return out
