"""The CelebA space of `003`: 40 binary attributes on a ResNet-18 with a linear head each.

What `003` ran on CelebA (§4 "Networks", A3.1, Table A1): ResNet-18 + one linear layer per
attribute, 64x64 images, the official 162,770 / 19,867 / 19,962 split, batch 512, 100 epochs,
the lr halved every 30 epochs, weight decay fixed at 1e-5 (A3.1, "for all datasets"); Adam at
lr 1e-3 is RLW's CelebA set-up (Table A1), the problem's default.

Our grid: `003` §4.1.2's ten learning rates {0.5, 0.1, 0.05, ..., 1e-5} with the optimizer as
a searched choice (`003` §4.1, as the other spaces); tpe/random/nsga2 draw the lr
log-uniformly between the grid's ends. Methods: the MTOs `003` compares (EW, UW, RLW, PCGrad,
CAGrad, IMTL) and the single-task reference.
"""

from __future__ import annotations

from spaces.base import OPTIMIZERS, SearchSpace, categorical, log_uniform

#: `003` §4.1.2: "ten different initial learning rates from [0.5, 0.1, 0.05, ..., 0.00001]".
CELEBA_LR_GRID = (0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001)
#: `003` A3.1: batch 512, lr x 0.5 every 30 epochs (StepLR), weight decay 1e-5.
_CONSTANTS = {"batch_size": 512, "weight_decay": 1e-5, "lr_decay": 0.5, "lr_step_every": 30}

CELEBA = SearchSpace(
    name="celeba",
    problem="celeba",
    description="CelebA: 40 binary attributes, ResNet-18 + a linear head per attribute, 64x64 (`003` A3.1)",
    common={"lr": log_uniform(CELEBA_LR_GRID), "optimizer": categorical(OPTIMIZERS)},
    constants=_CONSTANTS,
    default_methods=("ew", "uw", "rlw_normal", "pcgrad", "cagrad", "imtl", "single_task"),
    max_epochs=100,
    reproduces="`003` A3.1 CelebA set-up (ResNet-18 + linear heads, 64x64, official split, batch 512, "
               "100 epochs, lr halved every 30 epochs, weight decay 1e-5)",
    deviations=(
        "the optimizer is searched over adam, adamw and sgd (momentum 0.9); `003` compares Adam and SGD+momentum",
        "the aligned 178x218 faces are resized whole to 64x64 (no crop) and standardized with ImageNet's mean "
        "and std; `003` says only 'resized to 64x64'",
        "the best epoch is picked by the mean validation accuracy over the attributes, not Δm: no seed gives "
        "per-attribute single-task accuracies",
    ),
)
