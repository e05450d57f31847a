"""DB-MTL: Dual-Balancing Multi-Task Learning (Lin et al., "Dual-Balancing for Multi-Task
Learning", arXiv 2023; LibMTL DB_MTL.py, by the same group).

Two balancing steps:

* loss-scale balancing: every task minimizes log(L_t + ε) (ε = 1e-8), whose gradient is
  ĝ_t = g_t / (L_t + ε);
* gradient-magnitude balancing: an EMA of those gradients,
  m_t <- β_s m_t + (1 - β_s) ĝ_t  with β_s = β / s^β_σ at step s (m = 0 at the start), then
  each m_t is rescaled to the largest norm, α_t = max_k ||m_k|| / (||m_t|| + 1e-8), and the
  shared update is d = Σ_t α_t m_t, so every task contributes the same norm.

Defaults β = 0.9, β_σ = 0 as in LibMTL's configuration.

Weights. With β = 0 (no EMA) d = Σ_t (α_t / (L_t + ε)) g_t exactly; with the EMA, m_t is a
moving average of ĝ_t = g_t / (L_t + ε), so the per-task multiplier of the raw gradients is
α_t / (L_t + ε) up to the EMA's smoothing (the current step's g_t itself enters with
(1 - β_s) α_t / (L_t + ε), the same factor for every task). The returned weights are
α_t / (L_t + ε): exact when β = 0, otherwise the multipliers on the smoothed gradients.

Heads. In LibMTL the heads are trained by the per-task backward passes of log(L_t + ε), i.e.
with weights 1 / (L_t + ε), not with the returned α_t / (L_t + ε). The interface gives the
heads either the returned weights or the plain sum, so ``heads_use_weights`` is False and
``extra_loss`` adds Σ_t (1/(L_t + ε) - 1) L_t (the factor detached): the heads' gradient is
then Σ_t ∇L_t / (L_t + ε) = ∇ Σ_t log(L_t + ε), as in LibMTL, and the term reaches only the
heads (the shared part gets d).

Losses. log(L + ε) needs L > -ε. A task-step with a negative loss (e.g. the CAGrad toy's
objectives) has no loss-scale balancing: its factor is 1 instead of 1/(L + ε) (LibMTL would
produce NaN), and it is counted in ``negative_losses``. A loss of exactly 0 gives the factor
1/ε = 1e8, as in LibMTL; the largest factor of the epoch is reported as ``max_loss_scale``.
The EMA buffer (T x d) is sized on the first step (checkpoints restore its size).

grad_level=feature. LibMTL refuses DB-MTL with representation gradients. Here it runs, but
the coordinates of a representation gradient are (position in the batch, feature), so the
EMA averages the gradients of different samples that occupy the same batch position. A
batch of another size (the last, smaller batch of an epoch) cannot be averaged
coordinate-wise: the EMA restarts at that step's log-loss gradients, counted as
``ema_restarts``.

Implements: Lin et al., 2023 (DB-MTL), loss-scale balancing (log losses) and gradient-magnitude
balancing (EMA, rescaled to the largest norm).

Deviates from the authors' code: against LibMTL's DB_MTL.py (median-research-group/LibMTL, by
the paper's authors): a negative loss keeps factor 1 where LibMTL gives NaN; it also runs at
grad_level=feature, which LibMTL refuses, with the EMA restarting on a batch of another size;
the heads get sum_t log(L_t + ε) through ``extra_loss`` (the same gradient as LibMTL's per-task
backward passes).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.methods.capabilities import AddsHeadsLoss
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

LOG_EPS = 1e-8
NORM_EPS = 1e-8


def loss_scales(losses: torch.Tensor) -> torch.Tensor:
    """d log(L + ε) / dL = 1 / (L + ε) for L >= 0; 1 (no balancing) for negative losses."""
    losses = losses.detach()
    return torch.where(losses >= 0, 1.0 / (losses.clamp_min(0) + LOG_EPS), torch.ones_like(losses))


class DBMTL(AddsHeadsLoss, GradientAggregator):
    name = "db_mtl"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS, Property.TASK_SCALE_INVARIANT})
    summary = "dual balancing: log-loss gradients, EMA, each rescaled to the largest norm"
    paper = "Lin et al., 2023 (Dual-Balancing for Multi-Task Learning; LibMTL DB_MTL.py)"
    heads_use_weights = False
    hyperparameters = {
        "beta": Hyperparameter(0.9, float, "EMA rate of the log-loss gradients, in [0, 1)"),
        "beta_sigma": Hyperparameter(0.0, float, "decay exponent of beta: beta / t^beta_sigma (>= 0)"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    grad_buffer: torch.Tensor
    step: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if not 0.0 <= self.params["beta"] < 1.0:
            raise ConfigError(f"db_mtl.beta must be in [0, 1), got {self.params['beta']}")
        if not self.params["beta_sigma"] >= 0.0:
            raise ConfigError(f"db_mtl.beta_sigma must be >= 0, got {self.params['beta_sigma']}")
        self.register_buffer("grad_buffer", torch.zeros(0))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._negative = 0
        self._max_scale = 0.0
        self._restarts = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        key = prefix + "grad_buffer"
        if key in state_dict and state_dict[key].shape != self.grad_buffer.shape:
            self.grad_buffer = torch.zeros_like(state_dict[key], device=self.grad_buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grads = grads.detach()
        self.step += 1
        scales = loss_scales(losses).to(device=grads.device, dtype=grads.dtype)
        self._negative += int((losses < 0).sum())
        self._max_scale = max(self._max_scale, float(scales.max()))
        log_grads = grads * scales.unsqueeze(1)
        if self.grad_buffer.numel() == 0:  # first step: m = 0
            self.grad_buffer = torch.zeros_like(grads)
        elif self.grad_buffer.shape != grads.shape:  # another batch size at grad_level=feature
            self.grad_buffer = log_grads.clone()
            self._restarts += 1
        beta_t = self.params["beta"] / float(self.step) ** self.params["beta_sigma"]
        buf = self.grad_buffer.to(grads.dtype)
        buf = log_grads + beta_t * (buf - log_grads)
        self.grad_buffer = buf
        norms = buf.norm(dim=1)
        alpha = norms.max() / (norms + NORM_EPS)
        return alpha @ buf, alpha * scales

    def extra_loss(self, losses: torch.Tensor) -> torch.Tensor:
        """Σ (s_t - 1) L_t with s_t = 1/(L_t + ε) detached: the heads then descend Σ log(L_t + ε)."""
        scales = loss_scales(losses).to(losses.dtype)
        return ((scales - 1.0) * losses).sum()

    def epoch_diagnostics(self) -> dict[str, float]:
        out = {
            "negative_losses": float(self._negative),
            "max_loss_scale": self._max_scale,
            "ema_restarts": float(self._restarts),
        }
        self._negative = self._restarts = 0
        self._max_scale = 0.0
        return out
