"""Equal weighting / unitary scalarization: minimize the plain sum of the task losses.

Implements: Kurin et al. 2022, unitary scalarization (the plain sum of the task losses); Xin et
al. 2022, the same baseline.

Deviates from the authors' code: the `002` authors' Baseline (Gabriel-SGama/UnitScal_vs_SMTOs,
optimizers/baselines.py) defaults to weights 1/T, the mean of the losses, although `002`'s text
speaks of "the sum of the losses"; we follow the text and Kurin et al.'s own Baseline
(yobibyte/unitary-scalarization-dmtl, optimizers/baselines.py: weights 1), so an EW step here is
T times that of the `002` runs, a global learning-rate factor.
"""

from __future__ import annotations

import torch

from trainables.methods.base import LossWeighting
from trainables.methods.properties import Property


class EqualWeighting(LossWeighting):
    name = "ew"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})
    summary = "equal weights: the plain sum of task losses (unitary scalarization)"
    paper = "Kurin et al. 2022; Xin et al. 2022 (the baseline of `002`)"

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return losses.sum(), torch.ones_like(losses.detach())
