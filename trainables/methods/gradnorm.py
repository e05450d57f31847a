"""GradNorm: gradient normalization (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm:
Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018,
eqs. 1-2 and Algorithm 1).

Loss weights w_t (Σ w_t = T, all 1 at the start) are learned so that the weighted gradient
norms G_W(t) = ||∇_W w_t L_t|| = w_t ||g_t|| follow a common scale modulated by each task's
relative inverse training rate:

    L̃_t = L_t / L_t(0),   r_t = L̃_t / mean_k L̃_k,   Ḡ_W = mean_k G_W(k)
    L_grad = Σ_t | G_W(t) - Ḡ_W · r_t^α |               (eq. 2; the targets Ḡ_W r_t^α are constants)

Each step (Algorithm 1): the network takes the gradient of Σ_t w_t L_t with the current
weights (direction Σ_t w_t g_t, returned weights w), then w takes one gradient step on
L_grad, whose gradient in closed form is ∂L_grad/∂w_t = sign(G_W(t) - target_t) ||g_t||,
with its own learning rate ``w_lr``, and is renormalized to Σ w = T. The weights are a
buffer updated here by hand (not by the main optimizer). L_t(0) are the losses of the first
step, also a buffer. The heads get the weighted losses (the paper trains the whole network
on Σ w_t L_t; LibMTL gives them the plain sum).

W and the gradients. The paper measures G_W on the last shared layer to save time. Here
||g_t|| is the norm of the task gradient we receive: over all shared parameters at
grad_level=param, and over the shared representation at grad_level=feature, which is the
`004` feature-level surrogate (LibMTL's ``rep_grad``).

Numerical domain. L̃ and r assume positive losses: L_t(0) = 0 is replaced by ε = 1e-8 in the
ratio, a non-positive mean L̃ gives r = 1 for all tasks, and a negative r_t (a negative loss,
e.g. the CAGrad toy) is raised to 0 before r^α (undefined otherwise); such steps are counted
as ``invalid_ratios``. A plain SGD step can push a weight below 0, which the paper's
renormalization does not prevent: weights are raised to 0 before renormalizing (a task at
0 regains weight at the next step, since its G_W is then below target), counted as
``clamped_weights``. ``grad_loss`` is the epoch's mean L_grad.

Implements: Chen et al., ICML 2018, eq. 2 and Algorithm 1.

Deviates from the authors' code: not compared with the authors' code (we know of no public
release); against LibMTL's GradNorm.py (median-research-group/LibMTL): G_W is the norm of the
whole shared gradient (or of the representation's), not of the last shared layer's; the heads
get the weighted losses (LibMTL the plain sum); the weight step uses the closed-form gradient of
L_grad, and negative weights and ratios are raised to 0 (above).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec

EPS = 1e-8


def gradnorm_update(
    weights: torch.Tensor, norms: torch.Tensor, losses: torch.Tensor, initial: torch.Tensor, alpha: float, lr: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """One GradNorm step on the weights (all float64, (T,)); returns new weights and diagnostics."""
    t = weights.numel()
    weighted = weights * norms  # G_W(t)
    mean_weighted = weighted.mean()
    base = torch.where(initial == 0, torch.full_like(initial, EPS), initial)
    inverse_rate = losses / base  # L̃
    mean_rate = inverse_rate.mean()
    invalid = 0
    if mean_rate > 0:
        ratio = inverse_rate / mean_rate
    else:
        ratio = torch.ones_like(inverse_rate)
        invalid = 1
    if (ratio < 0).any():
        invalid = 1
        ratio = ratio.clamp_min(0.0)
    target = mean_weighted * ratio**alpha
    grad_loss = (weighted - target).abs().sum()
    new = weights - lr * torch.sign(weighted - target) * norms
    clamped = int((new < 0).sum())
    new = new.clamp_min(0.0)
    total = new.sum()
    new = new * (t / total) if total > 0 else torch.ones_like(new)
    return new, {"grad_loss": float(grad_loss), "invalid_ratios": invalid, "clamped_weights": clamped}


class GradNorm(GradientAggregator):
    name = "gradnorm"
    # not HOMOGENEOUS: its weight update follows the gradient norms' scale, so a second step differs
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    trains = "task weights, by their own update rule"
    summary = "GradNorm: learn loss weights so weighted gradient norms track relative training rates"
    paper = "Chen et al., ICML 2018 (GradNorm, eq. 2 and Algorithm 1)"
    heads_use_weights = True
    hyperparameters = {
        "alpha": Hyperparameter(1.5, float, "strength of the restoring force towards equal training rates (>= 0)"),
        "w_lr": Hyperparameter(0.025, float, "learning rate of the loss weights (> 0)"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    loss_weights: torch.Tensor
    initial_losses: torch.Tensor
    started: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if not self.params["alpha"] >= 0.0:
            raise ConfigError(f"gradnorm.alpha must be >= 0, got {self.params['alpha']}")
        if not self.params["w_lr"] > 0.0:
            raise ConfigError(f"gradnorm.w_lr must be > 0, got {self.params['w_lr']}")
        self.register_buffer("loss_weights", torch.ones(self.n_tasks, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self._reset_diagnostics()

    def _reset_diagnostics(self) -> None:
        self._steps = 0
        self._grad_loss = 0.0
        self._invalid = 0.0
        self._clamped = 0.0

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grads = grads.detach()
        losses64 = losses.detach().double().to(self.loss_weights.device)
        if not bool(self.started):
            self.initial_losses.copy_(losses64)
            self.started.fill_(True)
        weights = self.loss_weights.clone()
        norms = grads.norm(dim=1).double().to(weights.device)
        new, diag = gradnorm_update(
            weights, norms, losses64, self.initial_losses, self.params["alpha"], self.params["w_lr"]
        )
        self.loss_weights.copy_(new)
        self._steps += 1
        self._grad_loss += diag["grad_loss"]
        self._invalid += diag["invalid_ratios"]
        self._clamped += diag["clamped_weights"]
        applied = weights.to(device=grads.device, dtype=grads.dtype)
        return applied @ grads, applied

    def epoch_diagnostics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._steps:
            out = {
                "grad_loss": self._grad_loss / self._steps,
                "invalid_ratios": float(self._invalid),
                "clamped_weights": float(self._clamped),
            }
        self._reset_diagnostics()
        return out
