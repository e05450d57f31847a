"""Optuna samplers adapted to being driven by Ray Tune (ask and tell, not ``study.optimize``).

Ray pickles the search algorithm, sampler included, when the Tuner starts and at every
experiment checkpoint, so every sampler ``plan_search`` hands to ``OptunaSearch`` must pickle
and keep working once unpickled (``tests/test_search_strategies.py`` checks each one).
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

_LOCK_TYPES = (type(threading.Lock()),)


class ExhaustiveGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, minus its ``study.stop()`` once the grid is exhausted.

    That call raises outside ``study.optimize``; under Ray Tune, ``num_samples`` (the grid's
    size) ends the search instead. Defined at module level so Ray can checkpoint it.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler that survives pickling.

    Since Optuna 5.1 the genetic samplers' base class keeps a ``threading.Lock`` (to guard its
    generation cache), which cannot be pickled, so ``tune.Tuner`` failed at once with
    ``cannot pickle '_thread.lock' object``. A lock guards nothing across processes: it is left
    out of the pickle and a fresh, unlocked one is made on unpickling. Everything else (the
    population settings, the RNG state, the generation cache) travels as it is.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not isinstance(v, _LOCK_TYPES)}
        state["_unpickled_locks"] = [k for k, v in self.__dict__.items() if isinstance(v, _LOCK_TYPES)]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for key in state.pop("_unpickled_locks", []):
            state[key] = threading.Lock()
        self.__dict__.update(state)


def grid_sampler(size: int, seed: int) -> ExhaustiveGridSampler:
    """A grid over ``grid_point`` indices 0 .. size-1, visited in a seeded random order."""
    return ExhaustiveGridSampler({"grid_point": list(range(size))}, seed=seed)
