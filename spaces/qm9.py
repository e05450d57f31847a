"""The QM9 space of `002` §3.4 and Table 10 (A.6): lr grid, no dropout or weight decay, batch 120.

The paper's text lost the learning-rate values ("{, , }"); the grid is the one the `002`
authors ran for every QM9 method (scripts/QM9/*_opt*.sh in Gabriel-SGama/UnitScal_vs_SMTOs):
{0.005, 0.001, 0.0005, 0.0001}, dropout 0, weight decay 0, batch 120, 300 epochs. Method
ranges as A.6 Table 10 (CAGrad c, CDTT alpha, FAMO gamma as on the other benchmarks; Nash-MTL
with 20 optimizer iterations, fixed), except Auto-Lambda's auxiliary lr scale {100, 10, 1}.
The reference runs decay the lr with ReduceLROnPlateau(0.7, patience 5, min 1e-5) on the
validation Δm: ``lr_schedule=plateau`` here too. ``qm9_nashmtl`` is Nash-MTL's own set-up
(Adam at lr 1e-3, nothing common searched).
"""

from __future__ import annotations

from spaces.base import OPTIMIZERS, SearchSpace, categorical, log_uniform

#: `002` QM9 learning rates as run (the paper's Table 10 picks 0.005, 0.001 and 0.0005).
QM9_LR_GRID = (0.005, 0.001, 0.0005, 0.0001)

#: Nash-MTL's QM9 schedule (experiments/quantum_chemistry/trainer.py), also the `002` authors'.
PLATEAU = {"lr_schedule": "plateau", "plateau_factor": 0.7, "plateau_patience": 5, "plateau_min_lr": 1e-5}

QM9 = SearchSpace(
    name="qm9",
    problem="qm9",
    description="QM9: 11 molecular properties, Nash-MTL's message-passing network (`002` §3.4)",
    common={"lr": log_uniform(QM9_LR_GRID), "optimizer": categorical(OPTIMIZERS)},
    constants={"batch_size": 120, "dropout": 0.0, "weight_decay": 0.0, **PLATEAU},
    # `002` Table 10: Auto-Lambda's auxiliary lr scale {100, 10, 1}; log-uniform between its ends.
    method_overrides={"auto_lambda": {"aux_lr_scale": log_uniform((100.0, 10.0, 1.0))}},
    default_methods=("ew", "uw", "cagrad", "famo", "nash_mtl", "single_task"),
    max_epochs=300,
    reproduces="`002` §3.4 and Table 10 (A.6), as run by its authors' scripts/QM9/*_opt*.sh "
               "(Gabriel-SGama/UnitScal_vs_SMTOs)",
    deviations=(
        "the optimizer is searched (adam, adamw, sgd), as `003` asks; the `002` runs used Adam "
        "(--param optimizer=adam, or the space qm9_nashmtl, pins it)",
        "targets are z-scored with the training molecules' mean and std; the reference code's "
        "train_dataset.data held all 130,831 molecules",
    ),
)

QM9_NASHMTL = SearchSpace(
    name="qm9_nashmtl",
    problem="qm9",
    description="QM9 as Nash-MTL trains it: Adam lr 1e-3, ReduceLROnPlateau(0.7, 5, 1e-5), batch 120, 300 epochs",
    common={},  # nothing common is searched: every trial of a method differs in its seed and own parameters
    constants={"batch_size": 120, "dropout": 0.0, "weight_decay": 0.0, "optimizer": "adam", "lr": 1e-3, **PLATEAU},
    default_methods=("ew", "uw", "cagrad", "famo", "nash_mtl", "single_task"),
    max_epochs=300,
    reproduces="Nash-MTL (Navon et al., ICML 2022), QM9: AvivNavon/nash-mtl experiments/quantum_chemistry/"
               "trainer.py (Adam lr 1e-3, ReduceLROnPlateau(mode min, factor 0.7, patience 5, min_lr 1e-5) "
               "stepped on the validation Δm against utils.py's BASE, batch 120, 300 epochs, the epoch of the "
               "best validation Δm reported), with its model (models.py Net) and targets (utils.py target_idx)",
    deviations=(
        "the split is the `002` authors' fixed one (110,831 / 10,000 / 10,000); Nash-MTL's "
        "dataset.shuffle() depends on torch's global seed",
        "targets are z-scored with the training molecules' mean and std; Nash-MTL's "
        "train_dataset.data held all 130,831 molecules",
        "each method's own parameters are searched over the ranges it declares (`searcher methods`); "
        "Nash-MTL's script fixes them (give them with --param to match)",
        "single-task runs select their epoch, and step the plateau schedule, on Δm of their task "
        "against BASE; Nash-MTL's STL runs use the task's raw validation MAE (the same epochs, the "
        "1e-4 relative threshold of the schedule applied to another quantity)",
    ),
)
