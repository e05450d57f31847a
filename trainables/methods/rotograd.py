"""RotoGrad (Javaloy & Valera, ICLR 2022): rotate each task's view of the representation so
the task gradients align, and homogenize their magnitudes.

Task k's head sees r_k = R_k z, with R_k orthogonal (parameterized R_k = expm(A_k - A_kᵀ),
identity at the start; the official package uses geotorch's expm trivialization), rotating
the first ``feature_size`` features of z (all of them by default). Every step, as the official
package does it (adrianjav/rotograd, ``RotateOnly._rep_grad`` and ``RotoGrad._rep_grad``):

* rotations: with g_k = dL_k/dz (the task gradients in z's frame) rescaled to the norm of
  their mean, the target is their mean v; each R_k takes one Adam step (learning rate
  ``aux_lr_scale`` x lr, `002` App. A.6) on  mean_b || R_k v_b - (R̄_k g_k)_b ||²  (R̄_k: the
  rotation used in the forward pass, i.e. dL_k/dr_k), pulling every task's gradient towards
  the common direction;
* magnitudes (RotoGrad's "gradient homogenization", paper eq. 5 / the package): with
  ratios c_k = ||g_k|| / ||g_k(0)|| (the norms at the first step, re-taken at ``burn_in``),
  alpha_k = c_k / sum_j c_j and S = sum_k alpha_k ||g_k||, the encoder receives
  sum_k (S / ||g_k||) g_k. The per-task weights applied are therefore S / ||g_k||.

RotoGrad works on the representation (``grad_level`` is forced to "feature"); the heads get
the plain sum of their losses (the package's ``normalize_losses=False`` default). A
representation with more than two dimensions is flattened per sample; only ``feature_size``
leading features are rotated then (required when the flattened size exceeds 4096).

Implements: Javaloy & Valera, ICLR 2022 (RotoGrad: rotations, and the gradient homogenization of
eq. 5).

Deviates from the authors' code: against adrianjav/rotograd: R_k = expm(A_k - A_kᵀ) stepped by
the method's own Adam (the package parametrizes R_k through geotorch); the rotations' learning
rate is ``aux_lr_scale`` x lr (`002` A.6); representations of more than two dimensions are
flattened per sample and only ``feature_size`` leading features are rotated (above).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.methods.capabilities import RepresentsTasks
from trainables.methods.buffer_adam import adam_step
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec
from trainables.search_range import SearchRange

TINY = 1e-15
MAX_ROTATED = 4096


def rotate(z: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Apply ``rotation`` (m x m) to the first m features of z (B, F)."""
    m = rotation.shape[-1]
    head = torch.einsum("ij,bj->bi", rotation, z[:, :m])
    return head if m == z.shape[1] else torch.cat([head, z[:, m:]], dim=1)


class RotoGrad(RepresentsTasks, GradientAggregator):
    name = "rotograd"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS})
    trains = "per-task rotations, with their own Adam"
    summary = "rotates each task's view of the representation to align task gradients, and balances their norms"
    paper = "Javaloy & Valera, RotoGrad, ICLR 2022 (official package adrianjav/rotograd)"
    forced_grad_level = "feature"
    heads_use_weights = False
    hyperparameters = {
        "aux_lr_scale": Hyperparameter(
            1.0, float, "learning rate of the rotations as a multiple of lr (> 0)", low=0.0, open_low=True,
            # `002` A.6 (Tables 6-10): {5.0, 1.0, 0.5, 0.1} on every benchmark (a scale of the lr:
            # RotoGrad gives no range). Continuous: log-uniform between the grid's ends (a scale
            # spanning a factor of 50).
            search=SearchRange(grid=(5.0, 1.0, 0.5, 0.1), low=0.1, high=5.0, log=True),
        ),
        "feature_size": Hyperparameter(0, int, "leading features rotated (0: all; `002`: 50 on Multi-MNIST, 512 on Cityscapes)"),
        "burn_in": Hyperparameter(20, int, "step at which the reference gradient norms are taken again"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    skew: torch.Tensor | None
    exp_avg: torch.Tensor | None
    exp_avg_sq: torch.Tensor | None
    initial_norms: torch.Tensor | None
    steps: torch.Tensor
    adam_steps: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if not (math.isfinite(self.params["aux_lr_scale"]) and self.params["aux_lr_scale"] > 0):
            raise ConfigError(f"rotograd.aux_lr_scale must be > 0, got {self.params['aux_lr_scale']}")
        if self.params["feature_size"] < 0:
            raise ConfigError(f"rotograd.feature_size must be >= 0, got {self.params['feature_size']}")
        self.aux_lr = self.params["aux_lr_scale"] * 1e-3
        for name in ("skew", "exp_avg", "exp_avg_sq", "initial_norms"):
            self.register_buffer(name, None)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self._shape: torch.Size | None = None
        self._rotation_loss = 0.0
        self._calls = 0

    def configure(self, config: Mapping[str, Any]) -> None:
        self.aux_lr = self.params["aux_lr_scale"] * float(config["lr"])

    # ------------------------------------------------------------------ rotations
    def _ensure(self, features: int, like: torch.Tensor) -> None:
        if self.skew is not None:
            return
        m = self.params["feature_size"] or features
        if m > features:
            raise ConfigError(f"rotograd.feature_size {m} exceeds the representation's {features} features")
        if m > MAX_ROTATED:
            raise ConfigError(f"the representation has {features} features: set rotograd.feature_size <= {MAX_ROTATED}")
        shape = (self.n_tasks, m, m)
        for name in ("skew", "exp_avg", "exp_avg_sq"):
            setattr(self, name, torch.zeros(shape, dtype=like.dtype, device=like.device))

    def rotations(self, skew: torch.Tensor | None = None) -> torch.Tensor:
        """R_k = expm(A_k - A_kᵀ) for every task: (T, m, m), orthogonal."""
        a = self.skew if skew is None else skew
        assert a is not None, "rotations before task_representations built them"
        return torch.linalg.matrix_exp(a - a.transpose(-1, -2))

    def task_representations(self, z: torch.Tensor) -> list[torch.Tensor]:
        self._shape = z.shape
        flat = z.reshape(1, -1) if z.dim() == 1 else z.reshape(z.shape[0], -1)
        self._ensure(flat.shape[1], flat)
        rotations = self.rotations().detach().to(flat.dtype)
        return [rotate(flat, rotations[k]).reshape(z.shape) for k in range(self.n_tasks)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for name in ("skew", "exp_avg", "exp_avg_sq", "initial_norms"):
            if getattr(self, name) is None and prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ the step
    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.n_tasks
        batch = 1 if self._shape is None or len(self._shape) == 1 else self._shape[0]
        g = grads.detach().reshape(t, batch, -1)
        norms = g.flatten(1).norm(dim=1)
        self._update_rotations(g, norms)

        safe = norms.clamp_min(TINY)
        if self.initial_norms is None or int(self.steps) == self.params["burn_in"]:
            self.initial_norms = safe.clone()
        self.steps += 1
        ratios = safe / self.initial_norms.to(safe)
        alphas = ratios / ratios.sum().clamp_min(TINY)
        total = (alphas * norms).sum()
        weights = torch.where(norms > 0, total / safe, torch.zeros_like(norms))
        return weights @ grads, weights

    def _update_rotations(self, g: torch.Tensor, norms: torch.Tensor) -> None:
        assert self.skew is not None and self.exp_avg is not None and self.exp_avg_sq is not None
        m = self.skew.shape[-1]
        mean = g.mean(0)
        mean_norm = mean.norm()
        scaled = g * (mean_norm / norms.clamp_min(TINY)).view(-1, 1, 1)
        target = scaled.mean(0)[:, :m]
        current = self.rotations().detach().to(g.dtype)
        rotated_grads = torch.einsum("kij,kbj->kbi", current, g[:, :, :m])  # dL_k / dr_k
        with torch.enable_grad():
            skew = self.skew.detach().clone().requires_grad_(True)
            live = self.rotations(skew).to(g.dtype)
            residual = torch.einsum("kij,bj->kbi", live, target) - rotated_grads
            loss = residual.pow(2).sum(-1).mean(-1).sum()
            (grad,) = torch.autograd.grad(loss, skew)
        if torch.isfinite(grad).all():
            adam_step(self.skew, grad, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.aux_lr)
        self._rotation_loss += float(loss.detach())
        self._calls += 1

    def epoch_diagnostics(self) -> dict[str, float]:
        out = {"rotation_loss": self._rotation_loss / self._calls} if self._calls else {}
        self._rotation_loss, self._calls = 0.0, 0
        return out
