"""Space registry: name -> SearchSpace. Adding a space is one module plus one line."""

from __future__ import annotations

from spaces.base import SearchSpace, grid_points, suggest, suggest_grid_point
from spaces.celeba import CELEBA
from spaces.cityscapes import CITYSCAPES_19C, CITYSCAPES_HR, CITYSCAPES_INST, CITYSCAPES_R18, CITYSCAPES_R50
from spaces.multi_mnist import MNIST_CL_CR, MNIST_CL_RR, MNIST_RL_RR
from spaces.nyuv2 import NYUV2, NYUV2_MTAN, NYUV2_R50
from spaces.qm9 import QM9, QM9_NASHMTL
from spaces.toy import TOY
from trainables.registry import Registry

SPACES: Registry[SearchSpace] = Registry("space")
for _space in (
    MNIST_CL_CR,
    MNIST_CL_RR,
    MNIST_RL_RR,
    TOY,
    CITYSCAPES_R50, CITYSCAPES_R18, CITYSCAPES_INST, CITYSCAPES_HR, CITYSCAPES_19C,
    NYUV2, NYUV2_R50, NYUV2_MTAN,
    QM9, QM9_NASHMTL,
    CELEBA,
):
    SPACES.register(_space.name, _space)


def get_space(name_or_path: str) -> SearchSpace:
    """A registered space by name, or one read from a ``.yaml`` / ``.py`` file."""
    from spaces.files import is_space_file, load_space_file

    if name_or_path not in SPACES and is_space_file(name_or_path):
        return load_space_file(name_or_path, {n: SPACES.get(n) for n in SPACES.names()})
    return SPACES.get(name_or_path)


__all__ = ["SPACES", "SearchSpace", "grid_points", "suggest", "suggest_grid_point", "get_space"]
