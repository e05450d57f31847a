"""GLS: the geometric loss strategy (Chennupati et al., CVPR Workshops 2019).

"MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task
Learning": minimize the geometric mean of the task losses,

    L_GLS = (prod_t L_t)^(1/T).

Its derivative with respect to L_t is L_GLS / (T L_t), so those are the weights applied
(direction = sum_t w_t grad L_t). LibMTL's GLS (LibMTL/weighting/GLS.py) back-propagates the
same loss; we compute it in log space, exp(mean_t log L_t), so that eleven large or small
losses neither overflow nor underflow, and we report the exact weights L_GLS / (T L_t)
(LibMTL logs L_t / (T prod L), which is not the derivative).

Numerics: log L_t is taken as log(L_t + 1e-8) (FAMO's guard), so a loss of exactly 0 gives
finite values. A negative loss (the CAGrad toy's objectives go below 0) has no place in a
geometric mean: that task is left out of the step (weight 0; the mean runs over the other
tasks), and such task-steps are counted in ``epoch_diagnostics`` as ``negative_losses``.

Implements: Chennupati et al., CVPR Workshops 2019, the geometric loss strategy L = (prod_t
L_t)^(1/T).

Deviates from the authors' code: not compared with the authors' code (we know of no public
release); against LibMTL's GLS.py (median-research-group/LibMTL): the same loss, computed in log
space; the reported weights are the exact derivative L_GLS / (T L_t) (LibMTL logs L_t / (T prod
L)); the guard log(L_t + 1e-8) and the negative-loss rule (above) are ours.
"""

from __future__ import annotations

import torch

from trainables.methods.log_losses import LogLossWeighting
from trainables.methods.properties import Property


class GeometricLossStrategy(LogLossWeighting):
    name = "gls"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    summary = "geometric loss strategy: minimize the geometric mean of the task losses"
    paper = "Chennupati et al., MultiNet++, CVPR Workshops 2019: L = (prod_t L_t)^(1/T)"

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weighted_geometric_mean(losses, torch.ones_like(losses))
