"""Auto-Lambda (Liu, James, Davison & Johns, TMLR 2022): task weights learned by meta-gradient.

The weights lambda (init ``init_weight``, 0.1 in `002` App. A.6) scale the task losses of the
training step. Before each step, as in the official code (lorenmt/auto-lambda, also the `002`
authors' optimizers/auto_lambda.py):

1. virtual step on a copy of the model: theta' = theta - alpha (m + grad sum_i lambda_i L_i
   + wd theta), with alpha the current learning rate and m SGD's momentum buffer (0 for Adam);
2. the validation loss of the primary tasks (all tasks here, weight 1 each) at theta', and its
   gradient d = grad_theta' L_val;
3. the second-order term by finite differences (their compute_hessian, after DARTS, Liu,
   Simonyan & Yang, ICLR 2019):
   h_i = (L_i(theta + eps d) - L_i(theta - eps d)) / (2 eps) on the training batch, with
   eps = 0.01 / ||d||;
4. d lambda = -alpha h, one Adam step on lambda with lr = ``aux_lr_scale`` x the run's initial
   lr (`002` A.6 defines the auxiliary learning rate as a scale of the learning rate; like the
   reference code's meta optimizer, it does not follow the lr schedule).

The weights applied are lambda itself (not normalized). Costs about three extra forward and
two extra backward passes per step, and a copy of the model.

Implements: Liu et al., Auto-Lambda, TMLR 2022, the one-step look-ahead meta-gradient with the
finite-difference second-order term.

Deviates from the authors' code: against lorenmt/auto-lambda (auto_lambda.py, trainer_dense.py):
the weights' Adam learning rate is ``aux_lr_scale`` x the run's initial lr (`002` A.6) instead
of the absolute ``--autol_lr`` (default 1e-4); every task is primary; a step whose validation
gradient is zero or not finite, or whose second-order term is not finite, leaves the weights as
they are.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import Hyperparameter, LossWeighting
from trainables.methods.capabilities import LooksAhead, StepContext
from trainables.methods.buffer_adam import adam_step
from trainables.methods.properties import Property
from trainables.problems.base import MTLModel, TaskSpec
from trainables.search_range import SearchRange


class AutoLambda(LooksAhead, LossWeighting):
    name = "auto_lambda"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    trains = "task weights, with their own Adam (meta-gradient)"
    summary = "task weights learned by a one-step look-ahead meta-gradient on validation data"
    paper = "Liu et al., Auto-Lambda, TMLR 2022 (official code lorenmt/auto-lambda)"
    hyperparameters = {
        "aux_lr_scale": Hyperparameter(
            1.0, float, "learning rate of the task weights, as a multiple of lr (> 0)", low=0.0, open_low=True,
            # `002` A.6, Multi-MNIST CL_CR / CL_RR (Tables 6-7): {1000, 100, 10, 1, 0.1, 0.01, 0.001}
            # (Table 8, RL_RR, prints 0.0001 for 0.1; Cityscapes and QM9 override it in their
            # spaces); the initial weight stays 0.1.
            # Continuous: log-uniform between the grid's ends (six orders of magnitude).
            search=SearchRange(grid=(1000.0, 100.0, 10.0, 1.0, 0.1, 0.01, 0.001), low=0.001, high=1000.0, log=True),
        ),
        "init_weight": Hyperparameter(0.1, float, "initial task weight (`002` A.6: 0.1)"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    weights: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    adam_steps: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if not (math.isfinite(self.params["aux_lr_scale"]) and self.params["aux_lr_scale"] > 0):
            raise ConfigError(f"auto_lambda.aux_lr_scale must be > 0, got {self.params['aux_lr_scale']}")
        self.register_buffer("weights", torch.full((self.n_tasks,), float(self.params["init_weight"])))
        self.register_buffer("exp_avg", torch.zeros(self.n_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(self.n_tasks))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self._shadow: list[MTLModel] = []  # the look-ahead copy (a list: not a submodule)
        self.meta_lr = self.params["aux_lr_scale"] * 1e-3

    def configure(self, config: Mapping[str, Any]) -> None:
        self.meta_lr = self.params["aux_lr_scale"] * float(config["lr"])

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights.to(losses)
        return (w * losses).sum(), w

    def before_step(self, ctx: StepContext) -> None:
        group = ctx.optimizer.param_groups[0]
        alpha = float(group["lr"])
        params = [p for p in ctx.model.parameters()]
        if not self._shadow:
            self._shadow.append(copy.deepcopy(ctx.model))
        shadow = self._shadow[0]
        shadow.train(ctx.model.training)
        shadow_params = list(shadow.parameters())

        # 1. virtual step theta' = theta - alpha (m + g + wd theta)
        train_losses = ctx.task_losses(ctx.model, ctx.inputs, ctx.targets)
        grads = torch.autograd.grad((self.weights.to(train_losses) * train_losses).sum(), params, allow_unused=True)
        momentum = float(group.get("momentum", 0.0) or 0.0) if "momentum" in group else 0.0
        wd = float(group.get("weight_decay", 0.0))
        with torch.no_grad():
            for p, q, g in zip(params, shadow_params, grads):
                step = torch.zeros_like(p) if g is None else g
                buf = ctx.optimizer.state.get(p, {}).get("momentum_buffer")
                if momentum and buf is not None:
                    step = step + momentum * buf
                q.copy_(p - alpha * (step + wd * p))

        # 2. gradient of the primary tasks' validation loss at theta'
        val_inputs, val_targets = ctx.next_val_batch()
        val_loss = ctx.task_losses(shadow, val_inputs, val_targets).sum()
        raw = torch.autograd.grad(val_loss, shadow_params, allow_unused=True)
        d_model = [torch.zeros_like(q) if d is None else d for q, d in zip(shadow_params, raw)]

        # 3. finite-difference second-order term
        norm = torch.sqrt(sum(((d.double() ** 2).sum() for d in d_model), torch.zeros((), dtype=torch.float64)))
        if not torch.isfinite(norm) or norm == 0:
            return
        eps = float(0.01 / norm)
        with torch.no_grad():
            for p, d in zip(params, d_model):
                p.add_(d, alpha=eps)
            plus = ctx.task_losses(ctx.model, ctx.inputs, ctx.targets)
            for p, d in zip(params, d_model):
                p.sub_(d, alpha=2 * eps)
            minus = ctx.task_losses(ctx.model, ctx.inputs, ctx.targets)
            for p, d in zip(params, d_model):
                p.add_(d, alpha=eps)
        hessian = (plus - minus) / (2 * eps)

        # 4. one Adam step on the weights
        if torch.isfinite(hessian).all():
            adam_step(self.weights, -alpha * hessian, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.meta_lr)
