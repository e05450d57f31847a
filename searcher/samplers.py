"""Optuna samplers adapted to being driven by Ray Tune (ask and tell, not ``study.optimize``)."""

from __future__ import annotations

from typing import Any

import optuna


class ExhaustiveGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, minus its ``study.stop()`` once the grid is exhausted.

    That call raises outside ``study.optimize``; under Ray Tune, ``num_samples`` (the grid's
    size) ends the search instead. Defined at module level so Ray can checkpoint it.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def grid_sampler(size: int, seed: int) -> ExhaustiveGridSampler:
    """A grid over ``grid_point`` indices 0 .. size-1, visited in a seeded random order."""
    return ExhaustiveGridSampler({"grid_point": list(range(size))}, seed=seed)
