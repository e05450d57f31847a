"""The NYUv2 spaces: SegNet (MTAN's split baseline) and ResNet-50 + DeepLab heads.

What the seeds ran on NYUv2:

* `000` Table 1 (LibMTL, and MTAN / CAGrad / Nash-MTL): Adam, lr 1e-4, weight decay 0,
  batch 2, 200 epochs, lr halved every 100 epochs, augmentation on.
* `003` §4.1.2 and A3: SegNet and DeepLabV3+ (ResNet-50), lr searched over
  {0.5, 0.1, 0.05, ..., 1e-5} for Adam and for SGD with momentum, weight decay 1e-5,
  batch 8, 200 epochs, 159 of the 795 training images held out for validation.
* `001` A.2: dilated ResNet-50 + DeepLabV3, Adam, lr in {8e-4, 4e-4, 2e-4, 1e-4, 8e-5},
  weight decay 5e-4, batch 8, 100 epochs.

Our grid: `003`'s learning rates with the optimizer as a searched choice (`003` §4.1), and
weight decay over the three values the seeds used. Batch 8 and 200 epochs (`003`); the lr is
halved every 100 epochs as `000` does it (as an ExponentialLR of the same lr at epochs 100 and
200, the problem's default). MTAN's ``val`` folder is the test split; validation is a seeded
20 % of ``train`` (see ``trainables.problems.nyuv2``). Depth and normal errors are pooled over a
split's valid pixels (LibMTL) in ``nyuv2`` and ``nyuv2_r50``, averaged per batch (MTAN,
Nash-MTL) in ``nyuv2_mtan`` (problem option ``metric_average``).
"""

from __future__ import annotations

from spaces.base import OPTIMIZERS, SearchSpace, categorical, log_uniform

#: `003` §4.1.2: "ten different initial learning rates from [0.5, 0.1, 0.05, ..., 0.00001]".
NYUV2_LR_GRID = (0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001)
#: `001` A.2 (AMTL, ResNet-50 + DeepLabV3, Adam): a finer grid around Adam's 1e-4.
NYUV2_LR_GRID_AMTL = (8e-4, 4e-4, 2e-4, 1e-4, 8e-5)
#: Weight decay of `000` Table 1 (0), `003` A3.1 (1e-5) and `001` A.2 (5e-4).
NYUV2_WEIGHT_DECAY_GRID = (0.0, 1e-5, 5e-4)
#: `003` A3.1: batch 8 for 200 epochs.
_CONSTANTS = {"batch_size": 8}

#: The methods of `000` Table 2 and `003` Table A5 that we have, plus the single-task reference.
DEFAULT_METHODS = ("ew", "uw", "dwa", "rlw_normal", "mgda", "pcgrad", "cagrad", "imtl", "nash_mtl", "single_task")

# tpe/random/nsga2 draw the lr log-uniformly from [1e-5, 0.5], the grid's ends. The weight
# decay stays categorical: 0 is one of its values and has no place on a log scale, and a
# linear range over [0, 5e-4] would almost never draw 1e-5 or below.
_COMMON = {
    "lr": log_uniform(NYUV2_LR_GRID),
    "weight_decay": categorical(NYUV2_WEIGHT_DECAY_GRID),
    "optimizer": categorical(OPTIMIZERS),
}

NYUV2 = SearchSpace(
    name="nyuv2",
    problem="nyuv2",
    problem_options={"model": "segnet"},
    description="NYUv2 (MTAN npy): 13-class seg + depth + normals, MTAN's SegNet split (`000` Table 2, `003`)",
    common=_COMMON,
    constants=_CONSTANTS,
    default_methods=DEFAULT_METHODS,
    max_epochs=200,
)

NYUV2_R50 = SearchSpace(
    name="nyuv2_r50",
    problem="nyuv2",
    problem_options={"model": "resnet50_deeplab"},
    description="NYUv2 (MTAN npy): seg + depth + normals, dilated ResNet-50 + DeepLab heads (`001`, `003`)",
    common=_COMMON,
    constants=_CONSTANTS,
    default_methods=DEFAULT_METHODS,
    max_epochs=200,
)

NYUV2_MTAN = SearchSpace(
    name="nyuv2_mtan",
    problem="nyuv2",
    problem_options={"model": "segnet_mtan"},
    description="NYUv2 as MTAN / `000` Table 2 / Nash-MTL: SegNet + MTAN attention, all 795 training images",
    common={},  # the reference runs fix every common setting
    constants={"batch_size": 2, "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "dropout": 0.0,
               "validation": "test", "metric_average": "per_batch"},
    default_methods=DEFAULT_METHODS,
    max_epochs=200,
    reproduces="MTAN (Liu et al., CVPR 2019) and `000` Table 2 (LibMTL, Nash-MTL): lorenmt/mtan "
               "im2im_pred/model_segnet_mtan.py (SegNet + task attention, Adam lr 1e-4, StepLR(100, 0.5), "
               "batch 2, 200 epochs, trained on all 795 training images, the best epoch reported on the 654 "
               "test images; depth and normal errors averaged per batch of the test images, as MTAN's "
               "multi_task_trainer and Nash-MTL's experiments/nyuv2/trainer.py, mIoU and pixel accuracy "
               "over the whole split)",
    deviations=(
        "augmentation (random zoom 1.0/1.2/1.5 and flip) is on, as Nash-MTL's and CAGrad's runs and `000` "
        "Table 1 (aug: True); MTAN's paper trained without it (--param augment=false)",
        "`000` Table 2's LibMTL rows pool depth and normal errors over every valid test pixel; to compare "
        "with them use --param metric_average=pooled",
        "runs log fractions (mIoU 0.38); reports print percent (38.0), as the papers",
    ),
)
