"""The QM9 space of `002` §3.4 and Table 10 (A.6): lr grid, no dropout or weight decay, batch 120.

The paper's text lost the learning-rate values ("{, , }"); the grid is the one the `002`
authors ran for every QM9 method (scripts/QM9/*_opt*.sh in Gabriel-SGama/UnitScal_vs_SMTOs):
{0.005, 0.001, 0.0005, 0.0001}, dropout 0, weight decay 0, batch 120, 300 epochs. Method
ranges as A.6 Table 10 (CAGrad c, CDTT alpha, FAMO gamma as on the other benchmarks; Nash-MTL
with 20 optimizer iterations, fixed), except Auto-Lambda's auxiliary lr scale {100, 10, 1}.
The reference runs decay the lr with ReduceLROnPlateau(0.7, patience 5); the trainer has an
ExponentialLR only, so the lr is constant here (``lr_decay`` 1.0).
"""

from __future__ import annotations

from spaces.base import OPTIMIZERS, SearchSpace, log_uniform

#: `002` QM9 learning rates as run (the paper's Table 10 picks 0.005, 0.001 and 0.0005).
QM9_LR_GRID = (0.005, 0.001, 0.0005, 0.0001)

QM9 = SearchSpace(
    name="qm9",
    problem="qm9",
    description="QM9: 11 molecular properties, Nash-MTL's message-passing network (`002` §3.4)",
    common={"lr": log_uniform(QM9_LR_GRID), "optimizer": OPTIMIZERS},
    constants={"batch_size": 120, "dropout": 0.0, "weight_decay": 0.0, "lr_decay": 1.0},
    # `002` Table 10: Auto-Lambda's auxiliary lr scale {100, 10, 1}; log-uniform between its ends.
    method_overrides={"auto_lambda": {"aux_lr_scale": log_uniform((100.0, 10.0, 1.0))}},
    default_methods=("ew", "uw", "cagrad", "famo", "nash_mtl", "single_task"),
    max_epochs=300,
)
