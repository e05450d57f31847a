"""DWA: Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, MTAN, eq. 7).

With L_t(k) the mean training loss of task t in epoch k, the weights of epoch k are

    r_t = L_t(k-1) / L_t(k-2),        w_t(k) = T exp(r_t / temp) / sum_i exp(r_i / temp),

so they sum to the number of tasks T; a task whose loss falls more slowly gets more weight.
As in the official MTAN code (lorenmt/mtan, ``lambda_weight``) and LibMTL's DWA, the first
two epochs (no two previous epochs to compare) use weights 1. The weights are constant
within an epoch and are recomputed in ``end_epoch`` from the epoch's mean losses, which the
trainer passes in. temp (the paper's T) defaults to 2.0, the paper's value.

Numerics: the paper leaves the ratio unbounded; a previous-epoch loss of (nearly) 0 is
replaced by +-1e-8 in the denominator so the ratio stays finite (softmax is shift-stable, so
a huge ratio just puts all the weight on that task). The ratios in use are reported through
``epoch_diagnostics`` as ``ratio/<task>`` instead of being clipped.

Implements: Liu, Johns & Davison, CVPR 2019 (MTAN), eq. 7.

Deviates from the authors' code: none known in the weights (compared with lorenmt/mtan's
``lambda_weight`` and LibMTL's DWA.py); a previous-epoch mean loss of (nearly) 0 is replaced by
±1e-8 in the ratio's denominator (above), where the official code would divide by 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import Hyperparameter, LossWeighting
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

EPS = 1e-8


class DynamicWeightAverage(LossWeighting):
    name = "dwa"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    summary = "dynamic weight average: softmax of the last two epochs' loss ratios (MTAN)"
    paper = "Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019, eq. 7"
    hyperparameters = {
        "temperature": Hyperparameter(2.0, float, "softmax temperature T of the loss ratios (> 0; paper: 2)"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    epoch_losses: torch.Tensor
    epochs_seen: torch.Tensor
    ratios: torch.Tensor
    weights: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        temp = self.params["temperature"]
        if not (math.isfinite(temp) and temp > 0):
            raise ConfigError(f"dwa.temperature must be a finite number > 0, got {temp}")
        # epoch_losses[0]: epoch k-2, epoch_losses[1]: epoch k-1 (mean training losses)
        self.register_buffer("epoch_losses", torch.zeros(2, self.n_tasks, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("ratios", torch.ones(self.n_tasks, dtype=torch.float64))
        self.register_buffer("weights", torch.ones(self.n_tasks, dtype=torch.float64))

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.weights.to(device=losses.device, dtype=losses.dtype)
        return (weights * losses).sum(), weights

    @torch.no_grad()
    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        latest = mean_losses.detach().to(self.epoch_losses)
        self.epoch_losses[0] = self.epoch_losses[1].clone()
        self.epoch_losses[1] = latest
        self.epochs_seen += 1
        if int(self.epochs_seen) < 2:
            return
        older, newer = self.epoch_losses[0], self.epoch_losses[1]
        tiny = older.abs() < EPS
        denom = torch.where(tiny, torch.copysign(torch.full_like(older, EPS), older), older)
        self.ratios.copy_(newer / denom)
        self.weights.copy_(self.n_tasks * torch.softmax(self.ratios / self.params["temperature"], dim=0))

    def epoch_diagnostics(self) -> dict[str, float]:
        if int(self.epochs_seen) < 2:
            return {}
        return {f"ratio/{t}": float(r) for t, r in zip(self.task_names, self.ratios.tolist())}
