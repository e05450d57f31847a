"""Mathematical properties a method may declare, each checked by the contract tests.

A declared property is a promise about the method's outputs that its paper (or its math)
makes, and ``tests/test_contracts.py`` checks it on every method that declares it, over several
random inputs and two successive steps (so that a method's state must keep it too). TorchJD's
aggregator property tests (``permutation invariant``, ``linear under scaling``) are the model.

With G the per-task gradients (T x d), L the task losses (T,), P a permutation of the tasks,
c > 0 a scalar and C = diag(c_1..c_T) > 0, and writing a method's step as (direction d,
weights w) for a gradient aggregator or (∂total/∂L, w) for a loss weighting:

* ``PERMUTATION_EQUIVARIANT``: reordering the tasks reorders the weights and leaves the
  update as it is: d(PG, PL) = d(G, L) and w(PG, PL) = P w(G, L) (for a loss weighting,
  ∂total/∂L permutes with the losses). Randomized methods whose draws follow the task order
  (PCGrad's and GradVac's random orders, RLW, RGW) hold it only in distribution and do not
  declare it; nor do methods that single out tasks (single-task, fixed weights).
* ``HOMOGENEOUS``: the direction scales with the gradients: d(cG, L) = c d(G, L) (TorchJD's
  linear under scaling, for one common c): the method changes where the update points, not
  the step size the learning rate sets.
* ``TASK_SCALE_INVARIANT``: scaling one task's loss by c_t scales its gradient by c_t and
  leaves the direction unchanged: d(CG, CL) = d(G, L). Nash-MTL (Navon et al., ICML 2022, §3:
  the bargaining solution is invariant to each player's utility scale) and DB-MTL (Lin et al.
  2023, §3: log losses and gradient-magnitude balancing) promise it.
* ``LOSS_SCALE_INVARIANT``: for a loss weighting, scaling the losses leaves the update
  unchanged: C ∂total/∂L (CL) = ∂total/∂L (L), the gradient reaching the model is the same.
  SI (Σ log L_t; Navon et al., ICML 2022, §6) and UW-O (w_t = 1/L_t; `003` eq. 2) promise it.
"""

from __future__ import annotations

from enum import Enum


class Property(str, Enum):
    """A property a method declares in ``Method.properties`` (see the module docstring)."""

    PERMUTATION_EQUIVARIANT = "permutation_equivariant"
    HOMOGENEOUS = "homogeneous"
    TASK_SCALE_INVARIANT = "task_scale_invariant"
    LOSS_SCALE_INVARIANT = "loss_scale_invariant"

    #: The method kinds (``Method.kind``) the property is defined for.
    @property
    def kinds(self) -> tuple[str, ...]:
        if self in (Property.HOMOGENEOUS, Property.TASK_SCALE_INVARIANT):
            return ("gradient",)
        if self is Property.LOSS_SCALE_INVARIANT:
            return ("loss",)
        return ("loss", "gradient")
