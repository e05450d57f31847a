"""DTP: Dynamic Task Prioritization (Guo, Haque, Huang, Yeung & Fei-Fei, ECCV 2018).

The paper weights each task by a focal term of its key performance indicator (KPI)
kappa_t in [0, 1] (§3, task-level prioritization; focal loss of Lin et al. 2017):

    kappa_bar_t <- alpha kappa_t + (1 - alpha) kappa_bar_t       (moving average)
    FL(kappa_bar_t; gamma) = -(1 - kappa_bar_t)^gamma log(kappa_bar_t)
    L_DTP = sum_t FL(kappa_bar_t; gamma) L_t                      (weights not differentiated)

so a task with a low KPI (hard, "not yet learned") gets a high weight, and gamma (the focusing
parameter) sharpens the preference.

KPIs: the method declares ``ObservesKPIs``, so the trainer passes each step's batch KPI per task
(``Problem.kpi``: e.g. batch accuracy of Multi-MNIST's classification tasks) before
``combine``. They are smoothed by the paper's moving average above, with the same ``alpha``
(weight of the newest value), starting at the first observed KPI and including the current
step. As in the DTP of the AMTL authors' code (Samsung/Achievement-based-MTL,
core/losses/multi_task/accuracy_based.py ``DTPBase``), log kappa is taken as
log(kappa + 1e-20), so a KPI of exactly 0 gives a large but finite weight (about 46).

KPI surrogate for tasks without a KPI (our choice, documented here because it changes the
method): where the problem defines none (NaN from the trainer, e.g. reconstructions, the toy
problem, or ``combine`` called without ``observe_kpis``), we use the loss-based KPI

    kappa_t = exp(-ell_bar_t),  ell_bar_t = alpha L_t + (1 - alpha) ell_bar_t  (EMA of the loss),

which lies in (0, 1], is 1 for a zero loss and falls towards 0 as the loss grows. Then
-log kappa_t = ell_bar_t exactly, and the weight is w_t = (1 - exp(-ell_bar_t))^gamma ell_bar_t,
computed with expm1 (no log of a tiny number, no epsilon needed). The EMA starts at the
first step's losses and includes the current step (the paper's order). ``alpha`` is the
weight of the newest value (paper's alpha); default 0.1 (about a ten-step window) is ours,
as the paper gives no default. gamma defaults to 2.0.

A negative moving-average loss (the CAGrad toy's objectives go below 0) would give a
surrogate KPI above 1, outside the KPI's definition; it is taken as kappa = 1 (weight 0) and
such task-steps are counted in ``epoch_diagnostics`` as ``negative_losses``. The KPIs in use
at the end of each epoch (smoothed real KPI, else the surrogate) are reported as
``kappa/<task>``.

Implements: Guo et al., ECCV 2018, §3 (task-level prioritization, focal KPI weights); Lin et al.
2017 (focal loss) for the focal term.

Deviates from the authors' code: not compared with the authors' code (we know of no public
release); against the DTP of Samsung/Achievement-based-MTL
(core/losses/multi_task/accuracy_based.py ``DTPBase``): the same log(kappa + 1e-20); the KPIs
are training-batch KPIs smoothed per step, and the loss surrogate exp(-EMA loss) for tasks
without a KPI (above) is ours.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import Hyperparameter
from trainables.methods.capabilities import ObservesKPIs
from trainables.methods.log_losses import LogLossWeighting
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec


#: log(kappa + KPI_EPS) as in the AMTL authors' DTP (core/losses/multi_task/accuracy_based.py).
KPI_EPS = 1e-20


def dtp_weights(level: torch.Tensor, gamma: float) -> torch.Tensor:
    """FL(kappa; gamma) with kappa = exp(-level), level >= 0: (1 - e^-level)^gamma * level."""
    return (-torch.expm1(-level)).pow(gamma) * level


def dtp_kpi_weights(kappa: torch.Tensor, gamma: float) -> torch.Tensor:
    """FL(kappa; gamma) = -(1 - kappa)^gamma log(kappa + 1e-20) for KPIs kappa in [0, 1]."""
    return (1 - kappa).pow(gamma) * -torch.log(kappa + KPI_EPS)


class DynamicTaskPrioritization(ObservesKPIs, LogLossWeighting):
    name = "dtp"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    summary = (
        "dynamic task prioritization: focal weights -(1-k)^g log k of the smoothed task KPIs k "
        "(exp(-EMA loss) where a task has none)"
    )
    paper = "Guo et al., Dynamic Task Prioritization for Multitask Learning, ECCV 2018, §3 (focal KPI weights)"
    hyperparameters = {
        "gamma": Hyperparameter(2.0, float, "focusing parameter of the focal weight (>= 0)"),
        "alpha": Hyperparameter(0.1, float, "moving-average weight of the newest KPI (and loss), in (0, 1]"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    loss_ema: torch.Tensor
    steps: torch.Tensor
    kpi_ema: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        gamma, alpha = self.params["gamma"], self.params["alpha"]
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ConfigError(f"dtp.gamma must be a finite number >= 0, got {gamma}")
        if not (0 < alpha <= 1):
            raise ConfigError(f"dtp.alpha must be in (0, 1], got {alpha}")
        self.register_buffer("loss_ema", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        #: Smoothed real KPIs; NaN for a task that has not had one yet.
        self.register_buffer("kpi_ema", torch.full((self.n_tasks,), math.nan, dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before DTP used real KPIs have no ``kpi_ema``: no KPI seen yet.
        state_dict.setdefault(prefix + "kpi_ema", torch.full_like(self.kpi_ema, math.nan))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def observe_kpis(self, kpis: torch.Tensor) -> None:
        k = kpis.detach().to(self.kpi_ema)
        valid = ~torch.isnan(k)
        if ((k[valid] < 0) | (k[valid] > 1)).any():
            raise ValueError(f"dtp: KPIs must lie in [0, 1], got {k.tolist()}")
        alpha = self.params["alpha"]
        k = torch.where(valid, k, torch.zeros_like(k))
        blended = torch.where(torch.isnan(self.kpi_ema), k, alpha * k + (1 - alpha) * self.kpi_ema)
        self.kpi_ema.copy_(torch.where(valid, blended, self.kpi_ema))

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        current = losses.detach().to(self.loss_ema)
        alpha = self.params["alpha"]
        ema = torch.where(self.steps == 0, current, alpha * current + (1 - alpha) * self.loss_ema)
        self.loss_ema.copy_(ema)
        self.steps += 1
        gamma = self.params["gamma"]
        has_kpi = ~torch.isnan(self.kpi_ema)
        negative = (ema < 0) & ~has_kpi
        level = torch.where(ema < 0, torch.zeros_like(ema), ema)
        kappa = torch.where(has_kpi, self.kpi_ema, torch.ones_like(self.kpi_ema))
        weights = torch.where(has_kpi, dtp_kpi_weights(kappa, gamma), dtp_weights(level, gamma)).to(losses.dtype)
        self.count_negative(negative.sum())
        return (weights * losses).sum(), weights

    def epoch_diagnostics(self) -> dict[str, float]:
        surrogate = torch.exp(-self.loss_ema.clamp_min(0))
        kappa = torch.where(torch.isnan(self.kpi_ema), surrogate, self.kpi_ema).tolist()
        return {**super().epoch_diagnostics(), **{f"kappa/{t}": k for t, k in zip(self.task_names, kappa)}}
