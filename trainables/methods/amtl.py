"""AMTL: achievement-based multi-task loss (Yun & Cho, ICCV 2023, `001`).

"Achievement-based Training Progress Balancing for Multi-Task Learning". The achievement of
task t is its current accuracy (KPI) over its single-task accuracy, the task's "potential";
a task far from its potential gets a larger (focal) weight, and the multi-task loss is a
weighted GEOMETRIC mean of the task losses, so that no task dominates by its scale:

    kappa_bar_t <- m kappa_t + (1 - m) kappa_bar_t       (KPI moving average, m = momentum)
    a_t   = kappa_bar_t / p_t,       p_t = potential_t (1 + margin)
    w_t   = softmax_t( (1 - a_t)^gamma )                  (focal weights, sum to 1)
    L     = prod_t L_t^{w_t}                              (w_t not differentiated)

We follow the official code (Samsung/Achievement-based-MTL, core/losses/multi_task/
accuracy_based.py ``AMTL`` + geometric.py ``Geometric``, built as ``AMTLG`` by
loss_factory.py for ``--loss_metric amtl``) in every detail it fixes:

* KPI smoothing: momentum 0.1 on the newest value; the first KPI is taken as it is (the
  official moving average starts from NaN).
* Focusing exponent gamma = 2 (the class default and every AMTL config of the repository;
  the argparse default 0.5 is DTP's recommendation).
* Potentials are multiplied by (1 + margin), margin = 0.05 in every AMTL config; without
  potentials the official potential is 1.0 *without* margin, i.e. achievement = KPI. We do
  the same: ``potentials`` (string "TASK=value,...", or T values in task order) default to
  1.0 for every task (achievement = KPI), and the margin applies to the potentials given.
* Normalization: softmax over tasks of the focal terms (``normal_type='softmax'``, the
  default, which the factory does not override); before the first KPI the weights are the
  uniform 1/T (softmax of the equal initial weights), i.e. GLS's plain geometric mean.
* Geometric mean: L = prod_t pow(L_t, w_t) with the weights as constants. We compute it as
  exp(sum_t w_t log L_t) (no overflow or underflow with eleven tasks); its derivative is
  dL/dL_t = w_t L / L_t, and those are the weights reported (direction = sum_t that x grad L_t).

Cadence (``update``): the official code updates the KPIs once per evaluation, i.e. after
each epoch (test_freq = 1), from validation metrics; the weights stay fixed within an epoch.
Our trainer gives a method per-batch training KPIs (``observe_kpis``), not validation
metrics, so:

* ``update=epoch`` (default, the official cadence): the batch KPIs of an epoch are
  averaged, that mean enters the moving average at ``end_epoch``, and the new weights hold
  for the whole next epoch (the first epoch uses 1/T). Deviation: training-batch accuracy
  during the epoch instead of validation accuracy after it (a hook giving methods the
  validation KPIs after evaluation would remove it).
* ``update=step``: every step's batch KPI enters the moving average before that step's
  weights are formed (DTP's cadence; ``momentum`` then acts per step).

Tasks without a KPI (NaN from ``Problem.kpi``, e.g. Multi-MNIST reconstructions, the toy):
our fallback, as in ``dtp.py``, is the loss-based KPI surrogate kappa_t = exp(-ell_bar_t),
ell_bar_t the moving average (same momentum and cadence: per-epoch mean losses or per-step
losses) of the task loss. It lies in (0, 1], is 1 for a zero loss and falls as the loss
grows; a potential given for such a task divides it like a KPI.

Numerics: log L_t is taken as log(L_t + 1e-8) (FAMO's guard, as ``gls.py``), so a loss of
exactly 0 gives finite values. A negative loss (the CAGrad toy goes below 0) has no place in
a geometric mean: that task is left out of the step (weight 0) and the other tasks' weights
are renormalized to sum 1; such task-steps are counted as ``negative_losses``. An
achievement above 1 (KPI above its potential, or a surrogate of a negative mean loss) would
make (1 - a)^gamma undefined for non-integer gamma in the official code; we take 1 - a = 0
there (the smallest focal term) and count such task-updates as ``over_potential``. The
achievements in use are reported as ``achievement/<task>``.

Implements: `001` (AMTL: focal softmax weights of the achievements, weighted geometric mean of
the losses).

Deviates from the authors' code: against Samsung/Achievement-based-MTL
(core/losses/multi_task/accuracy_based.py, geometric.py): the KPIs are training-batch KPIs
averaged over the epoch instead of validation metrics after it (``update=epoch``), or per step
(``update=step``); the loss surrogate exp(-EMA loss) for tasks without a KPI; log(L_t + 1e-8)
and the negative-loss and over-potential rules (all above).
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

UPDATES = ("epoch", "step")


def parse_potentials(raw: str, task_names: Sequence[str]) -> list[float | None]:
    """'CL=0.9,RR=0.5' (any subset of tasks) or '0.9,0.5' (every task, in order) -> per-task
    potential, None for a task not named (potential 1.0 without margin)."""
    parts = [p.strip() for p in str(raw).split(",") if p.strip()]
    if not parts:
        return [None] * len(task_names)
    if all("=" in p for p in parts):
        pairs = [(key.strip(), value.strip()) for key, value in (p.split("=", 1) for p in parts)]
        named = dict(pairs)
        if len(named) != len(pairs):
            raise ConfigError(f"amtl.potentials names a task twice: {raw!r}")
        unknown = sorted(set(named) - set(task_names))
        if unknown:
            raise ConfigError(f"amtl.potentials names unknown task {unknown[0]!r} (tasks: {', '.join(task_names)})")
        texts: list[str | None] = [named.get(t) for t in task_names]
    elif any("=" in p for p in parts):
        raise ConfigError(f"amtl.potentials mixes TASK=value pairs and plain values: {raw!r}")
    elif len(parts) != len(task_names):
        raise ConfigError(
            f"amtl.potentials needs {len(task_names)} values (tasks {', '.join(task_names)}) or TASK=value pairs, got {raw!r}"
        )
    else:
        texts = list(parts)
    values: list[float | None] = []
    for text in texts:
        if text is None:
            values.append(None)
            continue
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"amtl.potentials must be numbers, got {raw!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"amtl.potentials must be finite and > 0, got {raw!r}")
        values.append(value)
    return values


def focal_softmax_weights(achievement: torch.Tensor, gamma: float) -> torch.Tensor:
    """softmax_t((1 - a_t)^gamma), with 1 - a_t taken as 0 where a_t > 1."""
    return torch.softmax((1.0 - achievement).clamp_min(0.0).pow(gamma), dim=-1)


class AMTL(ObservesKPIs, LogLossWeighting):
    name = "amtl"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    summary = "achievement-based MTL: focal softmax weights of KPI / single-task KPI, weighted geometric mean of losses"
    paper = (
        "Yun & Cho, Achievement-based Training Progress Balancing for Multi-Task Learning, ICCV 2023: "
        "w = softmax((1 - kpi/potential)^gamma), L = prod_t L_t^w_t"
    )
    hyperparameters = {
        "gamma": Hyperparameter(2.0, float, "focusing exponent of (1 - achievement)^gamma (>= 0; official 2)"),
        "momentum": Hyperparameter(0.1, float, "moving-average weight of the newest KPI, in (0, 1] (official 0.1)"),
        "potentials": Hyperparameter(
            "", str, "single-task KPIs 'TASK=value,...'; default 1.0 per task (achievement = KPI)"
        ),
        "margin": Hyperparameter(0.05, float, "given potentials are multiplied by 1 + margin (>= 0; official 0.05)"),
        "update": Hyperparameter("epoch", str, "when KPIs update the weights: 'epoch' (official cadence) or 'step'"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    potential: torch.Tensor
    kpi_ema: torch.Tensor
    loss_ema: torch.Tensor
    kpi_sum: torch.Tensor
    kpi_count: torch.Tensor
    task_weights: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        p = self.params
        if not (math.isfinite(p["gamma"]) and p["gamma"] >= 0):
            raise ConfigError(f"amtl.gamma must be a finite number >= 0, got {p['gamma']}")
        if not (0 < p["momentum"] <= 1):
            raise ConfigError(f"amtl.momentum must be in (0, 1], got {p['momentum']}")
        if not (math.isfinite(p["margin"]) and p["margin"] >= 0):
            raise ConfigError(f"amtl.margin must be a finite number >= 0, got {p['margin']}")
        if p["update"] not in UPDATES:
            raise ConfigError(f"amtl.update must be one of {', '.join(UPDATES)}, got {p['update']!r}")
        given = parse_potentials(p["potentials"], self.task_names)
        potential = [1.0 if v is None else v * (1 + p["margin"]) for v in given]
        t, f64 = self.n_tasks, torch.float64
        self.register_buffer("potential", torch.tensor(potential, dtype=f64))
        self.register_buffer("kpi_ema", torch.full((t,), math.nan, dtype=f64))
        self.register_buffer("loss_ema", torch.full((t,), math.nan, dtype=f64))
        self.register_buffer("kpi_sum", torch.zeros(t, dtype=f64))
        self.register_buffer("kpi_count", torch.zeros(t, dtype=torch.long))
        self.register_buffer("task_weights", torch.full((t,), 1.0 / t, dtype=f64))
        self._over: torch.Tensor | None = None

    # ------------------------------------------------------------------ state updates
    def _smooth(self, ema: torch.Tensor, new: torch.Tensor, valid: torch.Tensor) -> None:
        """ema <- new where ema is unset, m new + (1 - m) ema elsewhere; only where ``valid``."""
        m = self.params["momentum"]
        blended = torch.where(torch.isnan(ema), new, m * new + (1 - m) * ema)
        ema.copy_(torch.where(valid, blended, ema))

    def achievements(self) -> torch.Tensor:
        """a_t = KPI / potential, the loss surrogate exp(-EMA loss) where no KPI; NaN if neither yet."""
        surrogate = torch.exp(-self.loss_ema)
        kappa = torch.where(torch.isnan(self.kpi_ema), surrogate, self.kpi_ema)
        return kappa / self.potential

    def _refresh_weights(self) -> None:
        a = self.achievements()
        if torch.isnan(a).any():
            return  # nothing observed yet for some task: keep the current (initially uniform) weights
        over = (a > 1).sum()
        self._over = over if self._over is None else self._over + over
        self.task_weights.copy_(focal_softmax_weights(a, self.params["gamma"]))

    def observe_kpis(self, kpis: torch.Tensor) -> None:
        k = kpis.detach().to(self.kpi_ema)
        valid = ~torch.isnan(k)
        if ((k[valid] < 0) | (k[valid] > 1)).any():
            raise ValueError(f"amtl: KPIs must lie in [0, 1], got {k.tolist()}")
        if self.params["update"] == "step":
            self._smooth(self.kpi_ema, torch.where(valid, k, torch.zeros_like(k)), valid)
        else:
            self.kpi_sum += torch.where(valid, k, torch.zeros_like(k))
            self.kpi_count += valid.long()

    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        if self.params["update"] != "epoch":
            return
        losses = mean_losses.detach().to(self.loss_ema)
        self._smooth(self.loss_ema, losses, torch.isfinite(losses))
        seen = self.kpi_count > 0
        mean_kpi = self.kpi_sum / self.kpi_count.clamp_min(1)
        self._smooth(self.kpi_ema, mean_kpi, seen)
        self.kpi_sum.zero_()
        self.kpi_count.zero_()
        self._refresh_weights()

    # ------------------------------------------------------------------ the loss
    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.params["update"] == "step":
            current = losses.detach().to(self.loss_ema)
            self._smooth(self.loss_ema, current, torch.ones_like(current, dtype=torch.bool))
            self._refresh_weights()
        return self.weighted_geometric_mean(losses, self.task_weights)

    def epoch_diagnostics(self) -> dict[str, float]:
        over = 0.0 if self._over is None else float(self._over)
        self._over = None
        diag = {**super().epoch_diagnostics(), "over_potential": over}
        for task, a in zip(self.task_names, self.achievements().tolist()):
            if math.isfinite(a):
                diag[f"achievement/{task}"] = a
        return diag
