"""Optuna samplers adapted to being driven by Ray Tune (ask and tell, not ``study.optimize``).

Ray pickles the search algorithm, sampler included, when the Tuner starts and at every
experiment checkpoint, so every sampler ``plan_search`` hands to ``OptunaSearch`` must pickle
and keep working once unpickled (``tests/test_search_strategies.py`` checks each one).
"""

from __future__ import annotations

import threading
import zlib
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


class CommonRandomSampler(optuna.samplers.RandomSampler):
    """Optuna's random sampler with common random numbers across arms: the value of a parameter
    in trial k depends only on the seed, k and the parameter's name.

    Each arm (method) has its own study and sampler. Optuna's sampler draws from one stream in
    the order of the suggestions, so a method with parameters of its own (CAGrad's c) shifted
    that stream: from its second trial on it drew other learning rates than EW with the same
    seed. Here the k-th trial of every arm draws the same lr, dropout and optimizer, and the
    methods differ only in what differs between them.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.seed = int(seed)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        key = zlib.crc32(f"{self.seed}/{trial.number}/{param_name}".encode())
        return optuna.samplers.RandomSampler(seed=key).sample_independent(study, trial, param_name, param_distribution)


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
