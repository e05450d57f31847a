"""UW-O: uncertainty weighting at its analytical optimum (`003` §4.1.3, eq. 2; App. A1.1).

Uncertainty weighting (Kendall et al.) minimizes L_t / sigma_t + log sigma_t over sigma_t
(Laplace form, `003` eq. 1 / eq. 7). That is a one-dimensional convex problem with the
closed-form minimizer sigma_t = L_t (eqs. 8-10). Putting it back and stopping the gradient
through sigma gives (eq. 11, simplified to eq. 12 = eq. 2 of the main text)

    L = sum_t L_t / sg[L_t],

so the weight applied to task t is w_t = 1 / sg[L_t] and every weighted loss equals 1 in
value. No constant factor is used: eq. 2 / eq. 12 divide by sg[L_t] itself for every task
(the Gaussian or softmax likelihoods of UW would give 1 / (2 sg[L_t]); `003` states the
Laplace form and uses it for all losses, and so do we). Multiplying a task's loss by
alpha_t leaves the gradient unchanged (eq. 13): the method is loss-scale invariant.

Its gradient, sum_t grad L_t / L_t, is the gradient of SI's sum_t log L_t (``si.py``): the
two differ only in the value of the combined loss.

Numerics (no reference code is published for UW-O; we follow FAMO's guard): the denominator
is sg[L_t] + 1e-8, so a loss of exactly 0 gets the large but finite weight 1e8. The
derivation needs sigma_t = L_t > 0; a task whose loss is negative (the CAGrad toy's
objectives go below 0) is outside it and gets weight 0 that step. Such steps are counted in
``epoch_diagnostics`` as ``negative_losses`` (task-steps per epoch) rather than hidden.

Implements: `003` §4.1.3, eq. 2 (App. A1.1, eqs. 7-13).

Deviates from the authors' code: not compared with the authors' code (`003` publishes none for
UW-O); the 1e-8 guard and the negative-loss rule (above) are ours.
"""

from __future__ import annotations

import torch

from trainables.methods.log_losses import LogLossWeighting
from trainables.methods.properties import Property


class AnalyticalUncertaintyWeighting(LogLossWeighting):
    name = "uw_o"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.LOSS_SCALE_INVARIANT})
    summary = "uncertainty weighting at its analytical optimum: weights 1/sg(L_t), loss-scale invariant"
    paper = "Elich et al., Challenging Common Assumptions in MTL (`003`), §4.1.3 eq. 2, App. A1.1 eqs. 7-13"

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside, shifted = self.positive(losses)
        weights = torch.where(inside, 1.0 / shifted.detach(), torch.zeros_like(shifted.detach()))
        return (weights * losses).sum(), weights
