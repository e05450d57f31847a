"""GradDrop: gradient sign dropout (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask
Models with Gradient Sign Dropout", NeurIPS 2020, eq. 1 and Algorithm 1).

Per coordinate of the task gradients G (T x d), the gradient positive sign purity is

    P = ½ (1 + Σ_i g_i / Σ_i |g_i|)                       (eq. 1; P = ½ where all g_i = 0)

and with U ~ Uniform[0, 1) the positive side is chosen where U < f(P), the negative side
otherwise; each task keeps its components of the chosen sign, M_i = 1[g_i > 0] or
1[g_i < 0], and the output is Σ_i g_i (ℓ + (1 - ℓ) M_i) with leak ℓ (Algorithm 1; 0 for
"pure" GradDrop, the default of the paper's experiments, of lingvo and of LibMTL).

Hyperparameters as in the authors' lingvo layer (lingvo/core/graddrop.py), which the `002`
authors adapted (optimizers/graddrop.py) and ran with "k: 1.0, p: 0.5" (`002` A.6, Table 7):

* ``k`` is lingvo's ``keep_prob_function_scale`` of the linear keep function,
  f(P) = ½ + k (P - ½); k = 1 gives the paper's f(P) = P. k >= 1 keeps f(1) >= 1 and
  f(0) <= 0, so coordinates on which all tasks agree are always kept (k < 1 would drop them
  with probability (1 - k)/2, which the paper's f(0) = 0, f(1) = 1 rules out: rejected).
* ``p`` in `002` is only read when ``use_sign=False``, a "random GradDrop" ablation that
  masks entries with a fixed probability regardless of sign; with their ``use_sign=True``
  it is unused, so it is not a parameter here.
* ``keep_gradnorm_constant`` (lingvo's default True, and `002`): the output is rescaled to
  the norm of the plain sum Σ_i g_i. lingvo multiplies by ||out|| / ||Σ g|| (inverted);
  we use ||Σ g|| / ||out|| as the `002` code does, which is what the option's help states.
  The paper and LibMTL do not rescale (set it to false). The factor is unbounded when the
  kept minority signs are small; its epoch mean and max are reported (``rescale_mean``,
  ``rescale_max``).

Where the gradients are taken. GradDrop is defined at the shared representation: lingvo
multiplies each task's activation gradient by sign(input) (§3.2, "use_input_sign_only") and
sums it over the batch, so P is computed per feature and the mask is shared by all samples.
Our interface passes only the flattened gradients (T, batch x features) at
grad_level=feature, without the activations or the batch shape, so here each coordinate
(sample, feature) gets its own P and mask and no input-sign correction is applied; at
grad_level=param each shared parameter is a coordinate, which is the `002` code's
``use_params_grads=True`` mode ("Section 3.2 ... does not apply"). Where the reference uses
P = ½ + Σg / (2 Σ|g| + ε), we set P = ½ exactly where Σ|g| = 0 and use U < f(P) (LibMTL's
strict test), so agreeing coordinates are kept with probability exactly one; elsewhere the
two agree up to ε.

GradDrop defines no task weights (each coordinate keeps a different subset of tasks); the
heads get the plain sum of their losses (lingvo and `002`: GradDrop only changes the
gradient flowing into the shared part).

Implements: Chen et al., NeurIPS 2020 (GradDrop), eq. 1 and Algorithm 1, with the keep function
and norm rescaling of the authors' lingvo layer.

Deviates from the authors' code: against lingvo (tensorflow/lingvo, lingvo/core/graddrop.py) and
the `002` copy (Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/graddrop.py): no input-sign
correction and a mask per (sample, feature) coordinate at grad_level=feature, P = ½ exactly
where Σ|g| = 0, the strict test U < f(P), the norm factor ||Σ g|| / ||out|| (lingvo's is
inverted), and ``p`` dropped (all above).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import GradientAggregator, Hyperparameter
from trainables.methods.seeded import SEED_HELP, generator_of, register_generator
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec


def sign_purity(grads: torch.Tensor) -> torch.Tensor:
    """P = ½ (1 + Σ g / Σ |g|) per coordinate (d,); ½ where every task's component is 0."""
    total = grads.sum(0)
    mass = grads.abs().sum(0)
    safe = torch.where(mass > 0, mass, torch.ones_like(mass))
    return torch.where(mass > 0, 0.5 * (1.0 + total / safe), torch.full_like(mass, 0.5))


def graddrop_masks(grads: torch.Tensor, uniform: torch.Tensor, k: float = 1.0) -> torch.Tensor:
    """Boolean keep masks (T, d): the positive components where U < f(P), else the negative ones."""
    keep_positive = uniform < 0.5 + k * (sign_purity(grads) - 0.5)
    return torch.where(keep_positive.unsqueeze(0), grads > 0, grads < 0)


class GradDrop(GradientAggregator):
    name = "graddrop"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.HOMOGENEOUS})
    summary = "gradient sign dropout: per coordinate keep only one sign, chosen by its sign purity"
    paper = "Chen et al., NeurIPS 2020 (Just Pick a Sign, eq. 1 and Algorithm 1; lingvo graddrop.py)"
    defines_weights = False
    heads_use_weights = False
    hyperparameters = {
        "k": Hyperparameter(1.0, float, "scale of the linear keep function f(P) = 1/2 + k (P - 1/2) (k >= 1)"),
        "leak": Hyperparameter(0.0, float, "leak ratio in [0, 1]: part of each gradient passed through unmasked"),
        "keep_gradnorm_constant": Hyperparameter(True, bool, "rescale the output to the norm of the plain sum"),
        "seed": Hyperparameter(-1, int, SEED_HELP),
    }

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if not self.params["k"] >= 1.0:
            raise ConfigError(f"graddrop.k must be >= 1 (f(0) = 0 and f(1) = 1), got {self.params['k']}")
        if not 0.0 <= self.params["leak"] <= 1.0:
            raise ConfigError(f"graddrop.leak must be in [0, 1], got {self.params['leak']}")
        register_generator(self, self.params["seed"])
        self._rescales: list[float] = []

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, None]:
        grads = grads.detach()
        with generator_of(self) as gen:
            uniform = torch.rand(grads.shape[1], generator=gen, dtype=torch.float64)
        uniform = uniform.to(device=grads.device, dtype=grads.dtype)
        masks = graddrop_masks(grads, uniform, self.params["k"]).to(grads.dtype)
        leak = self.params["leak"]
        out = (grads * (leak + (1.0 - leak) * masks)).sum(0)
        if self.params["keep_gradnorm_constant"]:
            out_norm = out.norm()
            if out_norm > 0:
                factor = grads.sum(0).norm() / out_norm
                out = out * factor
                self._rescales.append(float(factor))
        return out, None

    def epoch_diagnostics(self) -> dict[str, float]:
        """Mean and max of the norm-restoring factor ||Σ g|| / ||out|| over the epoch's steps."""
        out = {}
        if self._rescales:
            out = {"rescale_mean": sum(self._rescales) / len(self._rescales), "rescale_max": max(self._rescales)}
        self._rescales = []
        return out
