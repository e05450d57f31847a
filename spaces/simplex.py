"""Fixed task weights as searched hyperparameters: the probability simplex.

`searcher tune --methods fixed` searches the weights themselves (issue: fixed-weight
discovery). A sampler that proposes independent numbers cannot propose points of the simplex
directly, so the weights are parameterized Dirichlet-style: one ``u_t`` in (0, 1] per task and
``w_t = -log(u_t) / sum_s -log(u_s)``. With ``u_t`` uniform, ``-log(u_t)`` is Exp(1) and the
normalized vector is Dirichlet(1, ..., 1), i.e. uniform on the simplex (the standard gamma
construction of the Dirichlet distribution), so random search samples the simplex evenly and
TPE or NSGA-II move over it smoothly.

For ``--search grid`` the simplex is a lattice instead: every ``w = k / n`` with integer
``k_t >= 1`` and ``sum k_t = n`` (no task switched off).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

from trainables.errors import ConfigError

#: Prefix of the searched simplex coordinates in a trial's config (not a method parameter).
PREFIX = "simplex."
#: Smallest u: keeps -log(u) finite (a weight ratio of at most ~14 / 1e-6 at the extremes).
U_MIN = 1e-6
#: Lattice resolution of the simplex grid (w in multiples of 1/10).
GRID_STEPS = 10
#: Largest simplex grid accepted (C(n-1, T-1) points).
GRID_MAX_POINTS = 500


def weights_from_u(u: Sequence[float]) -> list[float]:
    """The simplex point of coordinates ``u`` (all equal u -> equal weights)."""
    e = [-math.log(min(max(x, U_MIN), 1.0)) for x in u]
    total = sum(e)
    if total <= 0.0:  # every u_t = 1: the centre of the simplex
        return [1.0 / len(e)] * len(e)
    return [x / total for x in e]


def format_weights(weights: Sequence[float]) -> str:
    """The ``fixed.weights`` string for weights (6 significant digits)."""
    return ",".join(f"{w:.6g}" for w in weights)


def suggest_simplex(trial: Any, tasks: Sequence[str]) -> str:
    """Suggest one ``u_t`` per task on an Optuna trial; return the weights string."""
    u = [trial.suggest_float(f"{PREFIX}{t}", U_MIN, 1.0) for t in tasks]
    return format_weights(weights_from_u(u))


def simplex_lattice(n_tasks: int, steps: int = GRID_STEPS) -> list[list[float]]:
    """All interior lattice points ``k / steps`` of the simplex (``k_t >= 1``)."""
    if n_tasks < 1 or steps < n_tasks:
        return []
    points = []
    # stars and bars: choose T-1 cut points among the steps-1 inner gaps
    for cuts in itertools.combinations(range(1, steps), n_tasks - 1):
        bounds = (0, *cuts, steps)
        points.append([(b - a) / steps for a, b in zip(bounds, bounds[1:])])
    return points


def simplex_grid(tasks: Sequence[str], steps: int = GRID_STEPS) -> list[str]:
    """The grid of weight strings for ``--search grid`` over the simplex."""
    points = simplex_lattice(len(tasks), steps)
    if not points or len(points) > GRID_MAX_POINTS:
        raise ConfigError(
            f"a grid over the weights of {len(tasks)} tasks in steps of 1/{steps} has {len(points)} points; "
            "fix the weights with --param weights=... or search them with --search tpe, random or nsga2"
        )
    return [format_weights(p) for p in points]
