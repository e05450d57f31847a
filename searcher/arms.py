"""The competitors of a search ("arms") and the fairness rule between them.

An arm is one method, or ``single_task`` on one task (each task's reference is its own
competitor: `002`'s protocol tunes every single-task model as it tunes every method). Every
arm gets its own budget (``--num-samples`` trials each), its own sampler state (its own Optuna
study: what one method's trials score never steers another's) and its own pruning (ASHA ranks
a trial only against trials of its arm); all arms still share one Ray Tune run, one cluster,
one ``--resume`` and one MLflow parent run.

``PerArmSearch`` (a Ray Tune ``Searcher``) hands out trials round-robin over the arms that
have budget left, each from that arm's own ``OptunaSearch``; ``PerArmScheduler`` (a Ray Tune
``TrialScheduler``) keeps one ASHA per arm, and none for the single-task references unless
asked, because every Δm divides by them.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from searcher.run_record import STL, arm_key

TASK_KEY = "single_task.task"


@dataclass(frozen=True)
class Arm:
    """One competitor: a method, or ``single_task`` on ``task``."""

    method: str
    task: str | None = None

    @property
    def key(self) -> str:
        """The arm's name in tables and logs: ``cagrad``, ``single_task[CL]``."""
        return arm_key(self.method, self.task)

    @property
    def is_reference(self) -> bool:
        return is_reference(self.key)

    def fixed(self) -> dict[str, Any]:
        """The values that make a trial this arm's (the task of a single-task reference)."""
        return {TASK_KEY: self.task} if self.task is not None else {}


def is_reference(arm: str) -> bool:
    """Whether the arm named ``arm`` (a key of ``arm_key``) is a single-task reference."""
    return arm == STL or arm.startswith(STL + "[")


def arm_of_config(config: Mapping[str, Any]) -> str:
    """The arm a trial's flat config belongs to (the one rule, used by the scheduler and the tables)."""
    method = str(config.get("method", ""))
    task = config.get(TASK_KEY)
    return arm_key(method, str(task) if task not in (None, "") else None)


def arms_of(methods: Sequence[str], tasks: Sequence[str], fixed: Mapping[str, Any]) -> list[Arm]:
    """The arms of a search over ``methods``: ``single_task`` is one arm per task (or only the
    task fixed with ``--param task=...``)."""
    arms: list[Arm] = []
    for method in methods:
        if method != STL:
            arms.append(Arm(method))
        elif TASK_KEY in fixed:
            arms.append(Arm(method, str(fixed[TASK_KEY])))
        else:
            arms.extend(Arm(method, task) for task in tasks)
    return arms


class PickledState:
    """``save``/``restore`` of a Ray Tune searcher or scheduler: its whole state, pickled
    (the arms' own searchers and schedulers travel inside it)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class PerArmSearch(PickledState, Searcher):
    """One search algorithm per arm behind Ray Tune's single ``search_alg``.

    ``suggest`` gives the next trial to the arm with the fewest trials so far among those
    with budget left (ties in the arms' order), so the arms advance together and each ends
    with exactly its budget; results and completions go back to the arm that suggested the
    trial, and nowhere else. When every budget is spent it returns ``FINISHED``.
    """

    def __init__(self, searchers: Mapping[str, Searcher], budgets: Mapping[str, int],
                 metric: str | list[str] | None, mode: str | list[str] | None) -> None:
        # Ray's Searcher annotates str | None but takes lists too (multi-objective: it checks them)
        super().__init__(metric=metric, mode=mode)  # type: ignore[arg-type]
        if set(searchers) != set(budgets):
            raise ValueError("every arm needs a searcher and a budget")
        self._searchers = dict(searchers)
        self._budgets = {k: int(budgets[k]) for k in searchers}
        self._suggested = {k: 0 for k in searchers}
        self._owner: dict[str, str] = {}

    @property
    def budgets(self) -> dict[str, int]:
        return dict(self._budgets)

    @property
    def suggested(self) -> dict[str, int]:
        """Trials handed out per arm so far."""
        return dict(self._suggested)

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return False  # every arm's searcher already holds its space, metric and mode

    # Ray's Searcher.suggest annotates dict | None, while its docstring says "dict | FINISHED | None"
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        if trial_id in self._owner:  # asked again for the same trial: same arm, same answer
            return self._searchers[self._owner[trial_id]].suggest(trial_id)
        open_arms = [k for k in self._searchers if self._suggested[k] < self._budgets[k]]
        if not open_arms:
            return Searcher.FINISHED
        arm = min(open_arms, key=lambda k: self._suggested[k])
        config = self._searchers[arm].suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return None
        self._owner[trial_id] = arm
        self._suggested[arm] += 1
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._owner:
            self._searchers[self._owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._owner:
            self._searchers[self._owner[trial_id]].on_trial_complete(trial_id, result=result, error=error)


class PerArmScheduler(PickledState, FIFOScheduler):
    """A scheduler per arm: trials of one arm are ranked only against each other.

    Each arm gets its own ``ASHAScheduler(**asha)``, made on its first trial; arms in
    ``unpruned`` (the single-task references, by default) run every trial to the end; arms in
    ``given`` use the scheduler given for them (``--scheduler pbt``: PBT in the ``fixed`` arm
    only, so exploitation happens only among ``fixed`` trials, ``searcher.pbt``). Trials
    are started first come, first served, as by Ray's own FIFO and ASHA schedulers. (Built
    from plain values, not callables, because Ray pickles the scheduler with the experiment.)
    """

    def __init__(self, asha: Mapping[str, Any], unpruned: Sequence[str] = (),
                 metric: str | None = None, mode: str | None = None,
                 given: Mapping[str, TrialScheduler] | None = None) -> None:
        super().__init__()
        self._asha = dict(asha)
        self._unpruned = frozenset(unpruned)
        self._metric, self._mode = metric, mode
        self._schedulers: dict[str, TrialScheduler] = dict(given or {})
        for scheduler in self._schedulers.values():
            scheduler.set_search_properties(metric, mode)
        self._arm_of: dict[str, str] = {}

    @property
    def unpruned(self) -> frozenset[str]:
        return self._unpruned

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return all(s.set_search_properties(metric, mode, **spec) for s in self._schedulers.values())

    def scheduler_for(self, arm: str) -> TrialScheduler:
        """The arm's own scheduler (made on its first trial)."""
        if arm not in self._schedulers:
            scheduler = FIFOScheduler() if arm in self._unpruned else ASHAScheduler(**self._asha)
            scheduler.set_search_properties(self._metric, self._mode)
            self._schedulers[arm] = scheduler
        return self._schedulers[arm]

    def _of(self, trial: Any) -> TrialScheduler:
        arm = self._arm_of.setdefault(trial.trial_id, arm_of_config(trial.config))
        return self.scheduler_for(arm)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{arm}: {s.debug_string()}" for arm, s in self._schedulers.items())
