"""The Multi-MNIST spaces of `002` §3.1-3.2: lr x dropout grids, weight decay 0, batch 256; optimizer per `003`."""

from __future__ import annotations

from spaces.base import (
    MNIST_DROPOUT_GRID,
    MNIST_LR_GRID,
    OPTIMIZERS,
    SearchSpace,
    categorical,
    log_uniform,
    uniform,
)

# `002` ran Adam only; `003` §4.1 makes the optimizer a searched choice (fix it with
# --param optimizer=adam to reproduce `002`'s grid). tpe/random/nsga2 draw the lr
# log-uniformly from [0.0005, 0.01] and dropout uniformly from [0, 0.5], the grids' ends.
_COMMON = {
    "lr": log_uniform(MNIST_LR_GRID),
    "dropout": uniform(MNIST_DROPOUT_GRID),
    "optimizer": categorical(OPTIMIZERS),
}
_CONSTANTS = {"batch_size": 256, "weight_decay": 0.0, "lr_decay": 0.95}


def multi_mnist_space(variant: str, description: str) -> SearchSpace:
    return SearchSpace(
        name=f"mnist_{variant.lower()}",
        problem="multi_mnist",
        problem_options={"variant": variant},
        description=description,
        common=_COMMON,
        constants=_CONSTANTS,
        default_methods=("ew", "uw", "cagrad", "single_task"),
        max_epochs=10,
    )


MNIST_CL_CR = multi_mnist_space("CL_CR", "Multi-MNIST: classify the left and the right digit (`002` §3.2)")
MNIST_CL_RR = multi_mnist_space("CL_RR", "Multi-MNIST: classify left, reconstruct right (`002` §3.1, the screening problem)")
MNIST_RL_RR = multi_mnist_space("RL_RR", "Multi-MNIST: reconstruct the left and the right digit (`002` §3.2)")
