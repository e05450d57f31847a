"""Space registry: name -> SearchSpace. Adding a space is one module plus one line."""

from __future__ import annotations

from spaces.base import SearchSpace, grid_points, suggest, suggest_grid_point
from spaces.multi_mnist import MNIST_CL_CR, MNIST_CL_RR, MNIST_RL_RR
from spaces.toy import TOY
from trainables.registry import Registry

SPACES: Registry[SearchSpace] = Registry("space")
for _space in (
    MNIST_CL_CR,
    MNIST_CL_RR,
    MNIST_RL_RR,
    TOY,
):
    SPACES.register(_space.name, _space)

__all__ = ["SPACES", "SearchSpace", "grid_points", "suggest", "suggest_grid_point"]
