"""Problem registry: name -> Problem class. One line per problem."""

from __future__ import annotations

from typing import Any, Mapping

from trainables.errors import ConfigError
from trainables.problems.base import MTLModel, Problem, Splits, TaskSpec
from trainables.problems.celeba import CelebA
from trainables.problems.cityscapes import Cityscapes
from trainables.problems.multi_mnist import MultiMNIST
from trainables.problems.nyuv2 import NYUv2
from trainables.problems.qm9 import QM9
from trainables.problems.toy import CAGradToy
from trainables.registry import Registry

PROBLEMS: Registry[type[Problem]] = Registry("problem")
PROBLEMS.register(MultiMNIST.name, MultiMNIST)
PROBLEMS.register(CAGradToy.name, CAGradToy)
PROBLEMS.register(Cityscapes.name, Cityscapes)
PROBLEMS.register(NYUv2.name, NYUv2)
PROBLEMS.register(QM9.name, QM9)
PROBLEMS.register(CelebA.name, CelebA)


def build_problem(name: str, options: Mapping[str, Any] | None = None) -> Problem:
    """Instantiate a registered problem with its configuration (e.g. a variant)."""
    cls = PROBLEMS.get(name)
    try:
        return cls(**dict(options or {}))
    except TypeError as err:
        raise ConfigError(f"bad options for problem {name!r}: {err}") from None


__all__ = ["PROBLEMS", "Problem", "MTLModel", "Splits", "TaskSpec", "build_problem"]
