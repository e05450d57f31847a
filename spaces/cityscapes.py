"""The Cityscapes spaces of `002` §3.3: R50, R18, Inst. Seg., HR and 19C.

Grid (`002` §3.3): lr in {0.005, 0.001, 0.0005, 0.0001} x weight decay in {1e-4, 1e-5, 0},
batch 32; Adam with ExponentialLR(0.95) and 150 epochs as the `002` authors' scripts run it
(``scripts/cityscapes/*.sh``: ``--batch_size 32 --decay_lr --num_epochs 150 --p 0``). The
optimizer is a searched choice per `003` (fix ``--param optimizer=adam`` to reproduce `002`).
Method ranges that differ on Cityscapes (`002` Appendix A.6, Cityscapes table): Auto-Lambda's
auxiliary lr scale {100 ... 0.0001}; RotoGrad's feature size 512 (its aux_lr_scale is the
range it declares). tpe/random/nsga2 draw the lr and Auto-Lambda's scale log-uniformly between
their grids' ends; the weight decay is searched over its grid (see below).
"""

from __future__ import annotations

from spaces.base import OPTIMIZERS, SearchSpace, categorical, log_uniform

CITYSCAPES_LR_GRID = (0.005, 0.001, 0.0005, 0.0001)
CITYSCAPES_WEIGHT_DECAY_GRID = (1e-4, 1e-5, 0.0)
# The weight decay stays categorical: 0 (no decay) is one of the grid's values and has no
# place on a log scale, and a linear range over [0, 1e-4] would draw 90 % of its values
# above 1e-5, the grid's other value; so every search picks from the three values.
_COMMON = {
    "lr": log_uniform(CITYSCAPES_LR_GRID),
    "weight_decay": categorical(CITYSCAPES_WEIGHT_DECAY_GRID),
    "optimizer": categorical(OPTIMIZERS),
}
#: ImageNet-pretrained encoders, as the `002` authors' runs (torchvision's weights from the local
#: torch hub cache; offline without them a one-line error says where to put them).
_CONSTANTS = {"batch_size": 32, "lr_decay": 0.95, "pretrained": "true"}
_DEVIATIONS = (
    "the optimizer is searched (adam, adamw, sgd), as `003` asks; `002` used Adam (--param optimizer=adam)",
    "with the MTAN .npy layout, or an official layout that lacks some listed frames, the split is a "
    "fixed-seed random one of the same sizes, not the authors' frames",
)
_METHOD_OVERRIDES = {
    "auto_lambda": {"aux_lr_scale": log_uniform((100.0, 10.0, 1.0, 0.1, 0.01, 0.001, 0.0001))},
    "rotograd": {"feature_size": categorical((512,))},
}


def cityscapes_space(variant: str, description: str) -> SearchSpace:
    return SearchSpace(
        name=f"cityscapes_{variant}",
        problem="cityscapes",
        problem_options={"variant": variant},
        description=description,
        common=_COMMON,
        constants=_CONSTANTS,
        method_overrides=_METHOD_OVERRIDES,
        default_methods=("ew", "uw", "cagrad", "famo", "nash_mtl", "single_task"),
        max_epochs=150,
        reproduces="`002` §3.3, as run by its authors' scripts/cityscapes/*.sh "
                   "(Gabriel-SGama/UnitScal_vs_SMTOs): their train / validation / test frames "
                   "(split=auto uses their lists when the official layout holds every listed frame)",
        deviations=_DEVIATIONS,
    )


CITYSCAPES_R50 = cityscapes_space("r50", "Cityscapes R50: ResNet-50 + DeepLab heads, 128x256, 7-class seg + disparity (`002` §3.3)")
CITYSCAPES_R18 = cityscapes_space("r18", "Cityscapes R18: ResNet-18 + DeepLab heads, 128x256, 7-class seg + disparity (`002` §3.3)")
CITYSCAPES_INST = cityscapes_space("inst", "Cityscapes Inst. Seg.: R18 + instance offsets, 128x256, 7 classes (`002` §3.3)")
CITYSCAPES_HR = cityscapes_space("hr", "Cityscapes HR: Inst. Seg. at 256x512 (`002` §3.3)")
CITYSCAPES_19C = cityscapes_space("19c", "Cityscapes 19C: ResNet-18, 256x512, 19-class seg + disparity + instance (`002` §3.3, the hard problem)")
