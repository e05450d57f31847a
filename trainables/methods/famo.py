"""FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023).

The method keeps task logits xi (T,), with weights z = softmax(xi), and each step follows
(paper §3, Algorithm 1; official code Cranial-XIX/FAMO, ``famo.py`` and
``methods/weight_methods.py``, copied by the `002` authors as optimizers/famo.py):

* the model step back-propagates
      D_t = L_t - L_t* + 1e-8,    c = sum_t z_t / D_t  (no gradient),
      loss = sum_t z_t log D_t / c,
  whose gradient is sum_t w_t grad L_t with w_t = z_t / (c D_t): the per-task weights
  applied, which sum to 1. L_t* is the lower bound of the loss (``min_losses`` in the code,
  0 by default; the official toy run sets it to -21);
* after the optimizer step the same batch is re-evaluated without gradients (the trainer
  does this because it declares ``ActsAfterStep``) and
      delta = log D(before) - log D(after),    g = J_softmax(xi)ᵀ delta = z * (delta - z·delta),
  and xi takes one Adam step on g with learning rate ``w_lr`` (0.025) and L2 weight decay
  ``gamma`` (torch.optim.Adam(weight_decay=gamma), the paper's regularizer gamma xi).

A task whose log-loss fell less than the others gets a negative g_t, so its logit and its
weight grow. Equal losses and equal logits keep the weights equal (`002` App. A.4 Prop. 6).

The logits and the Adam moments are buffers (not nn.Parameters, so the trainer's main
optimizer never touches them) updated by hand in ``after_step``: the update reproduces
torch.optim.Adam (betas 0.9/0.999, eps 1e-8, bias correction) step for step, and the whole
state is in the module's state_dict, so checkpoints restore it.

Deviations, each for a reason:

* The official ``backward`` clips the shared parameters' gradient norm to ``max_norm`` = 1;
  a loss weighting cannot reach the gradients here (the trainer owns backward), so we do
  not clip. The `002` authors' copy (and weight_methods.py) calls clip_grad_norm_ *before*
  loss.backward(), where it has no effect, so the runs of `002` did not clip either.
* The reported weights are the exact derivative z_t / (c D_t); the `002` copy logs
  z / (c (L - L*) + 1e-8), which differs only by where the 1e-8 sits.
* Default gamma = 0.01, the default of the official ``famo.py`` and of the `002` copy; `002`
  App. A.6 searches gamma in {0.01, 0.001, 0.0001} with w_lr fixed at 0.025.
* A loss below its bound L* has no logarithm (the reference code gives NaN): that task is
  left out of the step (weight 0, left out of c, so the other tasks' weights still sum to 1)
  and its log-decrease delta_t counts as 0 in the logit update. Such task-steps are counted
  in ``epoch_diagnostics`` as ``losses_below_min``; the logits are reported as
  ``logit/<task>``.

Implements: Liu et al., FAMO, NeurIPS 2023, §3 and Algorithm 1.

Deviates from the authors' code: against Cranial-XIX/FAMO (famo.py, methods/weight_methods.py)
and the `002` copy (Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/famo.py): no gradient clipping
to max_norm = 1, the exact derivative as reported weights, and tasks below their bound left out
of the step (all above).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import Hyperparameter, LossWeighting
from trainables.methods.capabilities import ActsAfterStep
from trainables.methods.buffer_adam import adam_step
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec
from trainables.search_range import SearchRange

EPS = 1e-8


def softmax_vjp(z: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """J_softmax(xi)ᵀ delta at z = softmax(xi): (diag z - z zᵀ) delta."""
    return z * (delta - (z * delta).sum())


class FAMO(ActsAfterStep, LossWeighting):
    name = "famo"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    trains = "task logits, with their own Adam"
    summary = "fast adaptive multitask optimization: softmax task logits updated from each step's log-loss decrease"
    paper = "Liu et al., FAMO, NeurIPS 2023, §3 and Algorithm 1 (official code Cranial-XIX/FAMO)"
    hyperparameters = {
        "gamma": Hyperparameter(
            0.01, float, "weight decay of the task logits (>= 0; `002` A.6: 0.01, 0.001, 0.0001)", low=0.0,
            # `002` A.6 (Tables 6-10): gamma in {0.01, 0.001, 0.0001}; the logits' lr stays 0.025.
            # Continuous: log-uniform between the grid's ends (two orders of magnitude).
            search=SearchRange(grid=(0.01, 0.001, 0.0001), low=0.0001, high=0.01, log=True),
        ),
        "w_lr": Hyperparameter(0.025, float, "Adam learning rate of the task logits (> 0)"),
        "min_loss": Hyperparameter(0.0, float, "lower bound L* of every task loss (official min_losses; toy: -21)"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    logits: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    adam_steps: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        gamma, w_lr, min_loss = self.params["gamma"], self.params["w_lr"], self.params["min_loss"]
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ConfigError(f"famo.gamma must be a finite number >= 0, got {gamma}")
        if not (math.isfinite(w_lr) and w_lr > 0):
            raise ConfigError(f"famo.w_lr must be a finite number > 0, got {w_lr}")
        if not math.isfinite(min_loss):
            raise ConfigError(f"famo.min_loss must be a finite number, got {min_loss}")
        t = self.n_tasks
        self.register_buffer("logits", torch.zeros(t))
        self.register_buffer("exp_avg", torch.zeros(t))
        self.register_buffer("exp_avg_sq", torch.zeros(t))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self._below: torch.Tensor | None = None

    def _gap(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D = L - L* + eps where L >= L*, eps elsewhere; and the mask L >= L*."""
        gap = losses - self.params["min_loss"]
        inside = gap.detach() >= 0
        return torch.where(inside, gap, torch.zeros_like(gap)) + EPS, inside

    def task_weights(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """z = softmax(xi), the weights on the log losses."""
        return torch.softmax(self.logits.to(dtype), dim=0)

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, inside = self._gap(losses)
        z = self.task_weights(losses.dtype).to(losses.device)
        zero = torch.zeros_like(z)
        c = torch.where(inside, z / d.detach(), zero).sum()
        c = torch.where(c > 0, c, torch.ones_like(c))  # every task below its bound: nothing to weigh
        total = torch.where(inside, z * torch.log(d), zero).sum() / c
        weights = torch.where(inside, z / (c * d.detach()), zero)
        count = (~inside).sum()
        self._below = count if self._below is None else self._below + count
        return total, weights

    @torch.no_grad()
    def after_step(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        d_before, in_before = self._gap(losses_before.detach())
        d_after, in_after = self._gap(losses_after.detach())
        delta = torch.log(d_before) - torch.log(d_after)
        delta = torch.where(in_before & in_after, delta, torch.zeros_like(delta)).to(self.logits)
        self._adam_step(softmax_vjp(self.task_weights(self.logits.dtype), delta))

    def _adam_step(self, grad: torch.Tensor) -> None:
        """One step of torch.optim.Adam (L2 weight decay gamma) on the logits."""
        adam_step(self.logits, grad, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.params["w_lr"], self.params["gamma"])

    def epoch_diagnostics(self) -> dict[str, float]:
        below = 0.0 if self._below is None else float(self._below)
        self._below = None
        logits = {f"logit/{t}": v for t, v in zip(self.task_names, self.logits.tolist())}
        return {"losses_below_min": below, **logits}
