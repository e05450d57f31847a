"""SI: the scale-invariant baseline, minimize the sum of the log losses.

From Navon et al., "Multi-Task Learning as a Bargaining Game" (Nash-MTL, ICML 2022), its
baseline "SI": minimize sum_t log L_t, as ``ScaleInvariantLinearScalarization`` in the
official code (AvivNavon/nash-mtl, methods/weight_methods.py: sum(log(losses) * 1)). Since
grad log L_t = grad L_t / L_t, the weights applied are w_t = 1 / L_t, and multiplying any
task's loss by a constant leaves the gradient unchanged. (The gradient is that of UW-O,
``uw_o.py``.)

Deviations, each for a reason:

* The `002` authors' copy (optimizers/scale_inv.py) multiplies every log by 1/T, a global
  learning-rate factor; we follow the original Nash-MTL form (task weights 1).
* That copy reports the constant 1/T as the task weights; we report the weights actually
  applied to the losses, 1/L_t, so fixed weights can be extracted from them.
* log L_t is taken as log(L_t + 1e-8), the guard of FAMO's official code, so a loss of
  exactly 0 stays finite (weight 1e8). A negative loss (the CAGrad toy's objectives go
  below 0) has no logarithm: that task is left out of the step (weight 0), and such
  task-steps are counted in ``epoch_diagnostics`` as ``negative_losses``.

Implements: Navon et al., ICML 2022 (Nash-MTL), its SI baseline: minimize sum_t log L_t.

Deviates from the authors' code: against AvivNavon/nash-mtl (methods/weight_methods.py,
ScaleInvariantLinearScalarization) only the guard log(L_t + 1e-8) and the negative-loss rule
(above); against the `002` copy (Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/scale_inv.py) also
its 1/T factor and its reported weights (above).
"""

from __future__ import annotations

import torch

from trainables.methods.log_losses import LogLossWeighting
from trainables.methods.properties import Property


class ScaleInvariant(LogLossWeighting):
    name = "si"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT, Property.LOSS_SCALE_INVARIANT})
    summary = "scale-invariant baseline: minimize the sum of log losses (weights 1/L_t)"
    paper = "Navon et al., ICML 2022 (Nash-MTL), SI baseline: sum_t log L_t"

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside, shifted = self.positive(losses)
        total = torch.where(inside, torch.log(shifted), torch.zeros_like(shifted)).sum()
        weights = torch.where(inside, 1.0 / shifted.detach(), torch.zeros_like(shifted.detach()))
        return total, weights
