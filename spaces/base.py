"""A named search space: a problem configuration plus the ranges a search draws from.

Every searched value has a ``SearchRange`` (``trainables.search_range``): the paper's grid,
which ``--search grid`` trains point by point, and, for a continuous value, the interval
tpe/random/nsga2 draw from (log-uniform for learning rates and scales). A method's own
parameters declare their ranges with the method (``Hyperparameter.search``); a space may
override them (``method_overrides``).

``suggest`` is the define-by-run function OptunaSearch calls for every trial: it picks the
method, the common hyperparameters from the space's ranges, and then only that method's
own parameters (conditional on the method), named ``<method>.<param>`` so that each
method's parameters keep one distribution across the study.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from spaces import simplex
from trainables.errors import ConfigError
from trainables.search_range import SearchRange

#: `002` §3.1: the Multi-MNIST learning-rate grid as printed (with 0.0075).
MNIST_LR_GRID = (0.01, 0.0075, 0.005, 0.0025, 0.001, 0.00075, 0.0005)
#: The same grid as the `002` authors' code literally ran it (0.075, a typo of 0.0075).
MNIST_LR_GRID_AS_RUN = (0.01, 0.075, 0.005, 0.0025, 0.001, 0.00075, 0.0005)
MNIST_DROPOUT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
#: `003` §4.1: the optimizer is a hyperparameter like the others (Adam first: `002` used it).
OPTIMIZERS = ("adam", "adamw", "sgd")


def log_uniform(grid: Sequence[float]) -> SearchRange:
    """A paper's grid kept for ``--search grid``, and log-uniform between its ends for the
    other searches (learning rates: their grids are spaced by factors, not by steps)."""
    return SearchRange(grid=tuple(grid), low=min(grid), high=max(grid), log=True)


def uniform(grid: Sequence[float]) -> SearchRange:
    """A paper's grid kept for ``--search grid``, and uniform between its ends (dropout)."""
    return SearchRange(grid=tuple(grid), low=min(grid), high=max(grid))


def categorical(values: Sequence[Any]) -> SearchRange:
    """A grid that every search picks from as a categorical choice (optimizers, a weight
    decay grid with 0 in it); the typed form of the plain tuple a space file may give."""
    return SearchRange(grid=tuple(values))


def _ranges(values: Mapping[str, Any], prefix: str = "") -> dict[str, SearchRange]:
    return {k: SearchRange.of(v, prefix + k) for k, v in values.items()}


@dataclass(frozen=True)
class SearchSpace:
    """Everything a search over one benchmark configuration needs."""

    name: str
    problem: str
    description: str
    #: Options of the problem (e.g. the Multi-MNIST variant).
    problem_options: Mapping[str, Any] = field(default_factory=dict)
    #: Common hyperparameters (and problem options) searched, each a ``SearchRange`` (at run
    #: time a plain list or tuple, as a space file may give, is converted to a categorical grid).
    common: Mapping[str, SearchRange] = field(default_factory=dict)
    #: Constants every trial gets (batch size, ...).
    constants: Mapping[str, Any] = field(default_factory=dict)
    #: Per-method ranges that replace the ones the method declares (``Hyperparameter.search``).
    method_overrides: Mapping[str, Mapping[str, SearchRange]] = field(default_factory=dict)
    #: Methods searched when the user names none.
    default_methods: Sequence[str] = ("ew", "uw", "cagrad")
    #: Default number of epochs of a trial.
    max_epochs: int = 10
    #: The paper, table and code whose set-up the space reproduces ("" when it reproduces none).
    reproduces: str = ""
    #: Every deliberate deviation from that set-up that remains, one sentence each.
    deviations: Sequence[str] = ()

    def __post_init__(self) -> None:
        # a frozen dataclass: the ranges are converted once here (also on dataclasses.replace)
        object.__setattr__(self, "common", _ranges(self.common))
        overrides: dict[str, dict[str, SearchRange]] = {}
        for method, ranges in self.method_overrides.items():
            if not isinstance(ranges, Mapping):
                raise ConfigError(f"method_overrides of {method} must map its parameters to ranges, got {ranges!r}")
            overrides[method] = _ranges(ranges, f"{method}.")
        object.__setattr__(self, "method_overrides", overrides)

    def method_ranges(self, method: str, tasks: Sequence[str] = ()) -> dict[str, SearchRange]:
        """The ranges of one method's own parameters in this space: those the method declares,
        then the space's overrides; ``single_task``'s ``task`` over ``tasks``."""
        from trainables.methods import METHODS

        declared = METHODS.get(method).hyperparameters
        ranges = {k: hp.search for k, hp in declared.items() if hp.search is not None}
        ranges.update(self.method_overrides.get(method, {}))
        if method == "single_task" and tasks:
            ranges["task"] = SearchRange(grid=tuple(tasks))
        return ranges

    def describe(self, methods: Sequence[str] | None = None, tasks: Sequence[str] = ()) -> dict[str, Any]:
        """A JSON-able summary (for ``searcher spaces``): ``common`` and ``methods`` give the
        grids (what ``--search grid`` trains), ``ranges`` every range in full."""
        methods = list(methods or self.default_methods)
        by_method = {m: self.method_ranges(m, tasks) for m in methods}
        return {
            "name": self.name,
            "problem": self.problem,
            "problem_options": dict(self.problem_options),
            "description": self.description,
            "common": {k: list(r.grid) for k, r in self.common.items()},
            "constants": dict(self.constants),
            "methods": {m: {k: list(r.grid) for k, r in ranges.items()} for m, ranges in by_method.items()},
            "ranges": {
                "common": {k: r.to_json() for k, r in self.common.items()},
                "methods": {m: {k: r.to_json() for k, r in ranges.items()} for m, ranges in by_method.items()},
            },
            "default_methods": list(self.default_methods),
            "max_epochs": self.max_epochs,
            "reproduces": self.reproduces,
            "deviations": list(self.deviations),
        }


def check_ranges(
    space: SearchSpace,
    methods: Sequence[str],
    tasks: Sequence[str],
    options: Mapping[str, Any],
    skip: Sequence[str] = (),
) -> None:
    """Refuse, on the driver, a range that could give a trial a value it cannot run with:
    every grid point and both ends of every range are read as the hyperparameter reads them
    (``COMMON``'s, the method's own, or a problem option typed as its default in ``options``,
    as ``trainables.config.resolve`` reads it),
    and a continuous range must suit the type (a number; ``integer`` for an int). Keys in
    ``skip`` (fixed by ``--param``) are not searched and not checked."""
    from trainables.config import COMMON, option_schema
    from trainables.methods import METHODS
    from trainables.methods.base import Hyperparameter

    def check(owner: str, name: str, hp: Hyperparameter, rng: SearchRange) -> None:
        label = f"{owner}.{name}" if owner else name
        if rng.continuous and hp.type not in (int, float):
            raise ConfigError(f"{label} is a {hp.type.__name__}: its range must be a list of values, not {rng.describe()}")
        if rng.continuous and hp.type is int and not rng.integer:
            raise ConfigError(f"{label} is an int: its range {rng.describe()} needs integer: true")
        for value in rng.values_to_check():
            hp.parse(owner, name, value)

    for name, rng in space.common.items():
        if name in skip:
            continue
        if name in COMMON:
            check("", name, COMMON[name], rng)
        elif name in options:  # a problem option: typed as its default (text: any value)
            schema = option_schema(options[name])
            if schema is not None:
                check("", name, schema, rng)
            elif rng.continuous:
                raise ConfigError(f"{name} (an option of the problem, default {options[name]!r}) takes a list of "
                                  f"values, not the range {rng.describe()}")
        else:
            known = ", ".join(sorted({*COMMON, *options}))
            raise ConfigError(f"{name!r} is not a hyperparameter or an option of the problem (known: {known})")
    for method in methods:
        declared = METHODS.get(method).hyperparameters
        for name, rng in space.method_ranges(method, tasks).items():
            if f"{method}.{name}" in skip:
                continue
            if name not in declared:
                raise ConfigError(f"method {method} has no parameter {name!r} (has: {', '.join(declared) or 'none'})")
            check(method, name, declared[name], rng)


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
    """Define-by-run space for OptunaSearch (tpe, random, nsga2): each range's interval where it
    has one (log-uniform where declared), else its grid as a categorical choice. ``fixed``
    values are not searched.

    Returns the constants of the trial (Optuna records the suggested values itself), which
    include the weights string of a ``fixed`` trial whose simplex point was searched.
    """
    constants: dict[str, Any] = {"run_index": trial.number, **space.constants}
    if len(methods) == 1:
        method = methods[0]
        constants["method"] = method
    else:
        method = trial.suggest_categorical("method", list(methods))
    for name, rng in space.common.items():
        if name in fixed:
            continue
        rng.suggest(trial, name)
    for name, rng in space.method_ranges(method, tasks).items():
        key = f"{method}.{name}"
        if key in fixed:
            continue
        rng.suggest(trial, key)
    if _searches_weights(method, fixed):
        constants["fixed.weights"] = simplex.suggest_simplex(trial, tasks)
    constants.update({k: v for k, v in fixed.items() if "." not in k or k.startswith(method + ".")})
    return constants


def grid_points(
    space: SearchSpace, methods: Sequence[str], tasks: Sequence[str], fixed: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every point of the space's grid, once: per method, the product of the common grids and
    the grids of the method's own ranges (``fixed`` values excluded), and for ``fixed`` without
    weights the simplex lattice. This is `002`'s protocol (§3.1: every grid point trained once).
    A searched range with no grid (continuous only) is a ``ConfigError`` naming it."""
    points: list[dict[str, Any]] = []
    for method in methods:
        axes: dict[str, list[Any]] = {k: r.grid_values(k) for k, r in space.common.items() if k not in fixed}
        for name, rng in space.method_ranges(method, tasks).items():
            key = f"{method}.{name}"
            if key not in fixed:
                axes[key] = rng.grid_values(key)
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
