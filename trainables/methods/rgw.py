"""RGW: Random Gradient Weighting (Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022, the gradient-level variant of
RLW).

At every step fresh weights w = softmax(λ̃), λ̃ ~ N(0, I_T), are drawn and the update on the
shared part is Σ_t w_t g_t; the weights are positive and sum to 1, as in LibMTL's RGW.py
(by the paper's authors). As there, the task heads get the plain sum of their losses: only
the shared gradients are reweighted (LibMTL computes the heads' gradients by the per-task
backward passes and resets only the shared ones).

Since the weights do not depend on the gradients, Σ_t w_t g_t is the gradient of Σ_t w_t L_t:
the trainer takes it by one plain backward (``reused_weights``), so a step costs what EW's
does, at either ``grad_level`` (the two coincide). ``aggregate`` is kept for the
direction-level tests and for callers that already hold G.

The samples come from the method's own generator, whose state is a buffer (``seed``; -1
derives it from the run's torch seed), so runs are reproducible and resume exactly.

Implements: Lin et al., TMLR 2022, random gradient weighting (RGW): w = softmax(λ̃), λ̃ ~ N(0,
I).

Deviates from the authors' code: none known against LibMTL's RGW.py
(median-research-group/LibMTL, by the paper's authors): the same weights on the shared gradients
and the plain sum for the heads; the weights come from the method's own seeded generator, and
one backward of sum_t w_t L_t replaces the per-task backward passes (the same direction).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.methods.capabilities import ReusesWeights
from trainables.methods.seeded import SEED_HELP, generator_of, register_generator
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec


class RandomGradientWeighting(ReusesWeights, GradientAggregator):
    name = "rgw"
    properties = frozenset({Property.HOMOGENEOUS})
    summary = "random gradient weighting: softmax of standard normal samples weights the task gradients"
    paper = "Lin et al., TMLR 2022 (Random Weighting, RGW; LibMTL RGW.py)"
    heads_use_weights = False
    hyperparameters = {"seed": Hyperparameter(-1, int, SEED_HELP)}

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        register_generator(self, self.params["seed"])

    def sample(self) -> torch.Tensor:
        """Weights (T,) on the probability simplex, float64 on the CPU."""
        with generator_of(self) as gen:
            draw = torch.randn(self.n_tasks, generator=gen, dtype=torch.float64)
        return torch.softmax(draw, dim=0)

    @classmethod
    def needs(cls) -> str:
        return "losses only: Σ_t w_t g_t is the gradient of Σ_t w_t L_t, one plain backward (no per-task gradients)"

    def reused_weights(self) -> torch.Tensor:
        """Every step: fresh weights applied without per-task gradients."""
        return self.sample()

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # never reached in training (reused_weights always answers); kept for a direct call
        weights = self.sample().to(device=grads.device, dtype=grads.dtype)
        return weights @ grads.detach(), weights
