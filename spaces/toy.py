"""CAGrad's 2-D toy problem (`003` §4.1.1): learning rates around Adam's 1e-3 and the three starts."""

from __future__ import annotations

from spaces.base import OPTIMIZERS, SearchSpace, categorical, log_uniform

TOY = SearchSpace(
    name="toy",
    problem="toy",
    description="CAGrad's 2-D toy (two conflicting objectives of one point; no data, seconds per trial)",
    # the lr log-uniform over [0.001, 0.1] (grid kept for --search grid); the start point is
    # one of the toy's three start points (categorical)
    common={
        "lr": log_uniform((0.1, 0.05, 0.01, 0.005, 0.001)),
        "start": categorical((0, 1, 2)),
        "optimizer": categorical(OPTIMIZERS),
    },
    constants={"steps_per_epoch": 100, "lr_decay": 1.0},
    default_methods=("ew", "cagrad"),
    max_epochs=10,
)
