"""A named search space: a problem configuration plus the ranges Optuna searches.

``suggest`` is the define-by-run function OptunaSearch calls for every trial: it picks the
method, the common hyperparameters from the space's grids, and then only that method's
own parameters (conditional on the method), named ``<method>.<param>`` so that each
method's parameters keep one distribution across the study.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from spaces import simplex
from spaces.method_ranges import METHOD_RANGES

#: `002` §3.1: the Multi-MNIST learning-rate grid as printed (with 0.0075).
MNIST_LR_GRID = (0.01, 0.0075, 0.005, 0.0025, 0.001, 0.00075, 0.0005)
#: The same grid as the `002` authors' code literally ran it (0.075, a typo of 0.0075).
MNIST_LR_GRID_AS_RUN = (0.01, 0.075, 0.005, 0.0025, 0.001, 0.00075, 0.0005)
MNIST_DROPOUT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
#: `003` §4.1: the optimizer is a hyperparameter like the others (Adam first: `002` used it).
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class SearchSpace:
    """Everything a search over one benchmark configuration needs."""

    name: str
    problem: str
    description: str
    #: Options of the problem (e.g. the Multi-MNIST variant).
    problem_options: Mapping[str, Any] = field(default_factory=dict)
    #: Common hyperparameters searched, each a grid of values.
    common: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    #: Constants every trial gets (batch size, ...).
    constants: Mapping[str, Any] = field(default_factory=dict)
    #: Per-method ranges that replace the defaults of ``spaces.method_ranges``.
    method_overrides: Mapping[str, Mapping[str, Sequence[Any]]] = field(default_factory=dict)
    #: Methods searched when the user names none.
    default_methods: Sequence[str] = ("ew", "uw", "cagrad")
    #: Default number of epochs of a trial.
    max_epochs: int = 10

    def method_ranges(self, method: str, tasks: Sequence[str] = ()) -> dict[str, list[Any]]:
        """The ranges of one method's own parameters in this space."""
        ranges = {k: list(v) for k, v in METHOD_RANGES.get(method, {}).items()}
        ranges.update({k: list(v) for k, v in self.method_overrides.get(method, {}).items()})
        if method == "single_task" and tasks:
            ranges["task"] = list(tasks)
        return ranges

    def describe(self, methods: Sequence[str] | None = None, tasks: Sequence[str] = ()) -> dict[str, Any]:
        """A JSON-able summary (for ``searcher spaces``)."""
        methods = list(methods or self.default_methods)
        return {
            "name": self.name,
            "problem": self.problem,
            "problem_options": dict(self.problem_options),
            "description": self.description,
            "common": {k: list(v) for k, v in self.common.items()},
            "constants": dict(self.constants),
            "methods": {m: self.method_ranges(m, tasks) for m in methods},
            "default_methods": list(self.default_methods),
            "max_epochs": self.max_epochs,
        }


def _searches_weights(method: str, fixed: Mapping[str, Any]) -> bool:
    """``fixed`` with no weights given searches the weight simplex (``spaces.simplex``)."""
    return method == "fixed" and "fixed.weights" not in fixed


def suggest(
    trial: Any,
    space: SearchSpace,
    methods: Sequence[str],
    tasks: Sequence[str],
    fixed: Mapping[str, Any],
) -> dict[str, Any]:
    """Define-by-run space for OptunaSearch. ``fixed`` values are not searched.

    Returns the constants of the trial (Optuna records the suggested values itself), which
    include the weights string of a ``fixed`` trial whose simplex point was searched.
    """
    constants: dict[str, Any] = {"run_index": trial.number, **space.constants}
    if len(methods) == 1:
        method = methods[0]
        constants["method"] = method
    else:
        method = trial.suggest_categorical("method", list(methods))
    for name, grid in space.common.items():
        if name in fixed:
            continue
        trial.suggest_categorical(name, list(grid))
    for name, grid in space.method_ranges(method, tasks).items():
        key = f"{method}.{name}"
        if key in fixed:
            continue
        trial.suggest_categorical(key, list(grid))
    if _searches_weights(method, fixed):
        constants["fixed.weights"] = simplex.suggest_simplex(trial, tasks)
    constants.update({k: v for k, v in fixed.items() if "." not in k or k.startswith(method + ".")})
    return constants


def grid_points(
    space: SearchSpace, methods: Sequence[str], tasks: Sequence[str], fixed: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every point of the space's grid, once: per method, the product of the common grids and
    the method's own ranges (``fixed`` values excluded), and for ``fixed`` without weights the
    simplex lattice. This is `002`'s protocol (§3.1: every grid point trained once)."""
    points: list[dict[str, Any]] = []
    for method in methods:
        axes: dict[str, list[Any]] = {k: list(v) for k, v in space.common.items() if k not in fixed}
        axes.update({f"{method}.{k}": v for k, v in space.method_ranges(method, tasks).items() if f"{method}.{k}" not in fixed})
        if _searches_weights(method, fixed):
            axes["fixed.weights"] = simplex.simplex_grid(tasks)
        for values in itertools.product(*axes.values()):
            points.append({"method": method, **dict(zip(axes, values))})
    return points


def suggest_grid_point(
    trial: Any, space: SearchSpace, points: Sequence[Mapping[str, Any]], fixed: Mapping[str, Any]
) -> dict[str, Any]:
    """Define-by-run function of ``--search grid``: Optuna's GridSampler picks an unvisited
    ``grid_point`` index and the trial gets that point's values as constants.

    (GridSampler needs one Cartesian product of named values; a conditional space, where each
    method has its own parameters, is a union of products, hence the index.)
    """
    index = trial.suggest_categorical("grid_point", list(range(len(points))))
    point = dict(points[index])
    method = point["method"]
    extra = {k: v for k, v in fixed.items() if "." not in k or k.startswith(method + ".")}
    return {"run_index": trial.number, **space.constants, **extra, **point}
