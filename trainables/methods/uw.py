"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

Each task has a learned log standard deviation eta_t = log sigma_t, trained jointly with the
network. From the paper's likelihoods (eqs. 7 and 10 and their L1 analogue):

* Gaussian (L2 regression):   L_t / (2 sigma^2) + log sigma  =  exp(-2 eta) L_t / 2 + eta
* softmax (classification):   L_t / sigma^2 + log sigma      =  exp(-2 eta) L_t + eta
* Laplace (L1 regression):    L_t / sigma + log sigma        =  exp(-eta) L_t + eta

as in the `002` authors' implementation. The weights applied are the factors of L_t.

Implements: Kendall et al. (Kendall, Gal & Cipolla, CVPR 2018), eqs. 7-10 and their L1 (Laplace)
analogue.

Deviates from the authors' code: not compared with Kendall et al.'s code (we know of no public
release); against the `002` copy (Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/uw.py) none known:
the same three forms, chosen there by task name (CL/CR/S softmax, RL/RR/QM9 Gaussian, D/I
Laplace) and here by ``TaskSpec.likelihood``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from trainables.methods.base import LossWeighting
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

# likelihood -> (power p, fraction f): weight = exp(-p * eta) / f
LIKELIHOOD_TERMS = {"gaussian": (2.0, 2.0), "softmax": (2.0, 1.0), "laplace": (1.0, 1.0)}


class UncertaintyWeighting(LossWeighting):
    name = "uw"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    trains = "task log-variances, trained with the model"
    summary = "uncertainty weighting: learned homoscedastic task uncertainties (Kendall et al.)"
    paper = "Kendall, Gal & Cipolla, CVPR 2018, eqs. 7-10"

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    power: torch.Tensor
    fraction: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        terms = [LIKELIHOOD_TERMS.get(t.likelihood, LIKELIHOOD_TERMS["gaussian"]) for t in self.tasks]
        self.log_sigma = nn.Parameter(torch.zeros(self.n_tasks))
        self.register_buffer("power", torch.tensor([p for p, _ in terms]))
        self.register_buffer("fraction", torch.tensor([f for _, f in terms]))

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eta = self.log_sigma.to(losses.dtype)
        weights = torch.exp(-self.power.to(losses.dtype) * eta) / self.fraction.to(losses.dtype)
        return (weights * losses + eta).sum(), weights.detach()
