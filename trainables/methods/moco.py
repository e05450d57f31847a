"""MoCo: multi-objective gradient correction (Fernando et al., "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023, Algorithm 1; the
authors' code: github.com/heshandevaka/MoCo).

MoCo tracks the task gradients with Y (T x d) and the MGDA weights with λ on the simplex:

    Y   <- Y - β_t (Y - G)                   (tracking the stochastic gradients)
    λ   <- Π_Δ(λ - γ_t (Y Yᵀ + ρ I) λ)       (a projected gradient step on ½ ||Yᵀλ||² + ½ ρ ||λ||²,
                                              with the updated Y)
    d    = Yᵀ λ                              (with the updated λ)

with β_t = β / t^β_σ and γ_t = γ / t^γ_σ (step t = 1, 2, ...), Y = 0 and λ = 1/T at the start.
The paper also projects each row of Y on a bounded set (for its analysis); LibMTL and the
authors' code do not, nor do we. Defaults β = 0.5, β_σ = 0.5, γ = 0.1, γ_σ = 0.5, ρ = 0 are
LibMTL's (MoCo.py, "implemented based on the authors' sharing code"). With constant G, Y -> G and λ -> the minimizer of
½ λᵀ(GGᵀ + ρI)λ on the simplex (the regularized min-norm point of MGDA).

The authors' code comes in variants, selectable here:

* ``projection``: "simplex" (default) is the Euclidean projection Π_Δ of the paper and of
  the authors' ``Tracking`` weighting (sort-based, Duchi et al. 2008); "softmax" is LibMTL's
  and the authors' NYUv2 code's λ <- softmax(λ - γ_t (YYᵀ + ρI) λ), which stays positive and
  does not converge to the min-norm point. The authors' ``Tracking`` code also doubles the
  step (2 YᵀYλ, the gradient of ||Yᵀλ||²), which is γ -> 2γ here.
* ``grad_norm``: "none" (default, the paper) tracks the raw gradients; "loss" tracks
  g_t / (||g_t|| + 1e-8) · L_t as LibMTL does (the authors' "raw_loss" option). That
  rescaling assumes positive losses: a task with a negative loss would have its gradient
  reversed, so such task-steps use |L_t| instead and are counted (``negative_losses``).

The returned weights are λ, the weights on the TRACKED gradients Y (d = Yᵀλ), not on the
current batch's gradients; the heads get the plain sum of their losses (LibMTL and the
authors' code reset only the shared gradients). Y, λ and the step counter are buffers; Y is
sized on the first step (checkpoints restore its size).

grad_level=feature. LibMTL refuses MoCo with representation gradients. Here it runs, but the
coordinates of a representation gradient are (position in the batch, feature), so Y averages
the gradients of different samples that occupy the same batch position. A batch of another
size (the last, smaller batch of an epoch) cannot be tracked coordinate-wise: Y restarts at
that step's gradients (as if β_t = 1), counted as ``tracking_restarts``.

Implements: Fernando et al., ICLR 2023 (MoCo), Algorithm 1.

Deviates from the authors' code: against heshandevaka/MoCo and LibMTL's MoCo.py
(median-research-group/LibMTL): no projection of Y's rows on a bounded set (neither does
theirs); defaults as in LibMTL but ``projection="simplex"`` and ``grad_norm="none"`` (the paper)
where LibMTL uses the softmax and the loss-scaled gradients; |L_t| for a negative loss under
``grad_norm="loss"``; it also runs at grad_level=feature, which LibMTL refuses (all above).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

EPS = 1e-8
PROJECTIONS = ("simplex", "softmax")
GRAD_NORMS = ("none", "loss")


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of v (T,) onto the probability simplex (sort-based)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    cond = u - css / ind > 0
    rho = int(torch.nonzero(cond).max()) + 1  # cond[0] is always true
    theta = css[rho - 1] / rho
    return torch.clamp(v - theta, min=0.0)


class MoCo(GradientAggregator):
    name = "moco"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    summary = "MoCo: track task gradients and MGDA weights with stochastic corrections"
    paper = "Fernando et al., ICLR 2023 (MoCo, Algorithm 1; LibMTL MoCo.py)"
    heads_use_weights = False
    hyperparameters = {
        "beta": Hyperparameter(0.5, float, "step size of the gradient tracking Y, in (0, 1]"),
        "beta_sigma": Hyperparameter(0.5, float, "decay exponent of beta: beta / t^beta_sigma (>= 0)"),
        "gamma": Hyperparameter(0.1, float, "step size of the weights lambda (> 0)"),
        "gamma_sigma": Hyperparameter(0.5, float, "decay exponent of gamma: gamma / t^gamma_sigma (>= 0)"),
        "rho": Hyperparameter(0.0, float, "l2 regularization of lambda (>= 0)"),
        "projection": Hyperparameter("simplex", str, "lambda update: 'simplex' (paper) or 'softmax' (LibMTL)"),
        "grad_norm": Hyperparameter("none", str, "track 'none' (raw gradients, paper) or 'loss' (g/||g|| L, LibMTL)"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    tracked: torch.Tensor
    lambd: torch.Tensor
    step: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        p = self.params
        if not 0.0 < p["beta"] <= 1.0:
            raise ConfigError(f"moco.beta must be in (0, 1], got {p['beta']}")
        if not p["gamma"] > 0.0:
            raise ConfigError(f"moco.gamma must be > 0, got {p['gamma']}")
        for key in ("beta_sigma", "gamma_sigma", "rho"):
            if not p[key] >= 0.0:
                raise ConfigError(f"moco.{key} must be >= 0, got {p[key]}")
        if p["projection"] not in PROJECTIONS:
            raise ConfigError(f"moco.projection must be one of {', '.join(PROJECTIONS)}, got {p['projection']!r}")
        if p["grad_norm"] not in GRAD_NORMS:
            raise ConfigError(f"moco.grad_norm must be one of {', '.join(GRAD_NORMS)}, got {p['grad_norm']!r}")
        self.register_buffer("tracked", torch.zeros(0))
        self.register_buffer("lambd", torch.full((self.n_tasks,), 1.0 / self.n_tasks, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._negative = 0
        self._restarts = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        key = prefix + "tracked"
        if key in state_dict and state_dict[key].shape != self.tracked.shape:
            self.tracked = torch.zeros_like(state_dict[key], device=self.tracked.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        grads = grads.detach()
        self.step += 1
        t = float(self.step)
        if p["grad_norm"] == "loss":
            scale = losses.detach().to(grads.dtype)
            self._negative += int((scale < 0).sum())
            scale = scale.abs() / (grads.norm(dim=1) + EPS)
            grads = grads * scale.unsqueeze(1)
        beta_t = p["beta"] / t ** p["beta_sigma"]
        gamma_t = p["gamma"] / t ** p["gamma_sigma"]
        if self.tracked.numel() == 0:  # first step: Y = 0
            self.tracked = torch.zeros_like(grads)
        elif self.tracked.shape != grads.shape:  # another batch size at grad_level=feature
            self.tracked = grads.clone()
            self._restarts += 1
        y = self.tracked.to(grads.dtype)
        y = y - beta_t * (y - grads)
        self.tracked = y
        gram = (y @ y.T).double() + p["rho"] * torch.eye(self.n_tasks, dtype=torch.float64, device=y.device)
        lambd = self.lambd.to(device=y.device)
        moved = lambd - gamma_t * (gram @ lambd)
        lambd = project_simplex(moved) if p["projection"] == "simplex" else torch.softmax(moved, 0)
        self.lambd.copy_(lambd)
        weights = lambd.to(grads.dtype)
        return weights @ y, weights

    def epoch_diagnostics(self) -> dict[str, float]:
        out = {"tracking_restarts": float(self._restarts)}
        if self.params["grad_norm"] == "loss":
            out["negative_losses"] = float(self._negative)
        self._negative = self._restarts = 0
        return out
