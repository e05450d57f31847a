"""RLW: Random Loss Weighting (Lin, Ye, Zhang & Tsang, TMLR 2022).

"Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning"
(arXiv 2111.10603): at every step draw fresh weights lambda = f(lambda~) with
lambda~ ~ p and minimize sum_t lambda_t L_t. Two of the paper's distributions, as run by the
`002` authors (optimizers/rlw.py, adapted from the RLW authors' release):

* ``rlw_normal``: lambda = softmax(lambda~), lambda~ ~ N(0, I);
* ``rlw_dirichlet``: lambda ~ Dirichlet(1, ..., 1) (already on the simplex).

Both are then rescaled to sum to the number of tasks T ("normalize to m * simplex" in the
`002` code), so their expectation is equal weighting, w_t = 1 on average. (LibMTL's RLW
keeps the sum at 1, a global learning-rate factor.)

The samples come from torch's global CPU generator, which the trainer seeds and checkpoints,
so runs are reproducible and independent of the device; the `002` code draws the Dirichlet
gammas from Python's ``random`` instead, the same distribution.

Implements: Lin et al., TMLR 2022, random loss weighting with the normal distribution + softmax
(``rlw_normal``) and with Dirichlet(1) (``rlw_dirichlet``).

Deviates from the authors' code: against the `002` copy of the authors' release
(Gabriel-SGama/UnitScal_vs_SMTOs, optimizers/rlw.py) none in the distributions or the rescaling
to sum T; the samples come from torch's seeded generator instead of Python's ``random``
(Dirichlet). LibMTL's RLW.py (median-research-group/LibMTL, by the same group) keeps the sum at
1, a global learning-rate factor T.
"""

from __future__ import annotations

import torch

from trainables.methods.base import LossWeighting


class _RandomLossWeighting(LossWeighting):
    """Shared step: sample weights on the simplex, rescale them to sum to T, apply them."""

    def sample(self) -> torch.Tensor:
        """Weights (T,) on the probability simplex, float32 on the CPU."""
        raise NotImplementedError

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.sample()
        w = w * (self.n_tasks / w.sum())
        weights = w.to(device=losses.device, dtype=losses.dtype)
        return (weights * losses).sum(), weights


class RLWNormal(_RandomLossWeighting):
    name = "rlw_normal"
    summary = "random loss weighting: softmax of standard normal samples each step, scaled to sum T"
    paper = "Lin et al., TMLR 2022 (Random Loss Weighting), normal distribution + softmax"

    def sample(self) -> torch.Tensor:
        return torch.softmax(torch.randn(self.n_tasks), dim=0)


class RLWDirichlet(_RandomLossWeighting):
    name = "rlw_dirichlet"
    summary = "random loss weighting: Dirichlet(1) samples each step, scaled to sum T"
    paper = "Lin et al., TMLR 2022 (Random Loss Weighting), Dirichlet distribution"

    def sample(self) -> torch.Tensor:
        return torch.distributions.Dirichlet(torch.ones(self.n_tasks)).sample()
