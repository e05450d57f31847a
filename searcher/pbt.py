"""Population-based fixed weights: ``searcher tune --methods fixed --scheduler pbt`` (issue 16).

`002` §3.5 names population-based training (Royer et al.) as the efficient alternative to a
grid over the weight simplex. This is Ray Tune's own ``PopulationBasedTraining`` (Jaderberg et
al. 2017, asynchronous), acting in the ``fixed`` arm only: every ``interval`` epochs a trial in
the bottom quantile of the ``fixed`` population (by its current validation score) takes the
checkpoint of one in the top quantile (exploit) and a perturbed copy of its weights (explore).
The other arms of the same search keep their ASHA (or FIFO) and are never compared with the
``fixed`` trials (the fairness rule of ``searcher.arms``).

The weights stay in the one weights schema, the trial's ``fixed.weights`` string (read with
``parse_weights``, written with ``spaces.simplex.format_weights``); ``explore`` perturbs them in
log space and puts them back on the simplex of the parent's total (sum 1 for a searched
simplex point). The search's Optuna sampler (tpe or random) draws only the initial population.

``--scheduler pb2`` is Ray's ``PB2`` (Parker-Holder et al. 2020, "Provably Efficient Online
Hyperparameter Optimization with Population-Based Bandits") in the same place: the same exploit,
but the explore step picks the new point with a GP bandit over numeric keys, so it moves the
simplex coordinates ``simplex.<task>`` the search drew and the weights are rebuilt from them.
"""

from __future__ import annotations

import math
import posixpath
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ray.train._internal.session import _TrainingResult
from ray.tune import Checkpoint
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

from spaces.simplex import PREFIX as SIMPLEX_PREFIX
from spaces.simplex import U_MIN, format_weights, weights_from_u
from trainables.errors import ConfigError
from trainables.methods.fixed import parse_weights

WEIGHTS_KEY = "fixed.weights"
#: The only arm PBT acts in: the method whose hyperparameters (its weights) PBT can mutate.
PBT_METHOD = "fixed"
#: What PBT ranks trials by: the current epoch's validation score. Not the search metric
#: (``best/val_score``, the running best): a trial whose weights got worse must rank low now.
PBT_METRIC = "val/score"
#: Log-normal step of each weight: w_t * exp(N(0, SIGMA)); 0.2 is about Ray's default 0.8/1.2 factors.
SIGMA = 0.2
#: Ray's default perturbation factors, for lr (``--pbt-lr``).
LR_FACTORS = (0.8, 1.2)
#: A weight never falls below this share of the total (so that a log-space step can move it again).
FLOOR = 1e-6
#: The population-based schedulers (``--scheduler``): Ray's PBT and PB2.
POPULATION_SCHEDULERS = ("pbt", "pb2")
#: Searches PBT accepts: they only draw the initial population (a grid or NSGA-II would plan
#: points PBT then moves away from).
PBT_SEARCHES = ("tpe", "random")
#: The MLflow artifact of a trial's exploits (``searcher.tracking.TrialLogger``).
LINEAGE_ARTIFACT = "pbt_lineage.json"


def default_interval(max_epochs: int) -> int:
    """Epochs between perturbations when ``--pbt-interval`` is not given: five per run."""
    return max(1, max_epochs // 5)


def perturb_weights(weights: Sequence[float], rng: random.Random, sigma: float = SIGMA) -> list[float]:
    """``w_t * exp(N(0, sigma))`` for each task, back on the simplex of the same total.

    The log-space step is PBT's multiplicative perturbation (Jaderberg et al. 2017, §3.2 "explore":
    perturb by a random factor) with a continuous factor: with Ray's 0.8/1.2 for every task, two
    tasks drawing the same factor would not move after renormalization. Each weight is first
    floored at ``FLOOR`` of the total, so every weight stays positive and can move.
    """
    total = float(sum(weights))
    if not math.isfinite(total) or total <= 0:
        raise ConfigError(f"cannot perturb weights {list(weights)}: they must be finite and not all zero")
    floored = [max(float(w), FLOOR * total) for w in weights]
    moved = [w * math.exp(rng.gauss(0.0, sigma)) for w in floored]
    scale = total / sum(moved)
    return [w * scale for w in moved]


@dataclass
class WeightExplorer:
    """Ray's ``custom_explore_fn``: the parent's config with perturbed ``fixed.weights`` (and lr).

    Plain values only (Ray pickles the scheduler with the experiment); ``rng`` is seeded from
    the search's ``--seed``, so a search's perturbations repeat.
    """

    tasks: tuple[str, ...]
    seed: int = 0
    sigma: float = SIGMA
    mutate_lr: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        new = dict(config)
        if WEIGHTS_KEY in new:
            weights = parse_weights(new[WEIGHTS_KEY], self.tasks)
            new[WEIGHTS_KEY] = format_weights(perturb_weights(weights, self.rng, self.sigma))
        if self.mutate_lr and "lr" in new:
            new["lr"] = float(new["lr"]) * self.rng.choice(LR_FACTORS)
        return new


def _own_copy(checkpoint: Checkpoint, trial_id: str) -> Checkpoint:
    """A copy of ``checkpoint`` (``<experiment>/<trial dir>/checkpoint_k``) at
    ``<experiment>/pbt_exploits/<trial_id>``, on the same filesystem (local or a cluster's storage)."""
    import pyarrow.fs

    fs = checkpoint.filesystem
    assert fs is not None  # Ray's Checkpoint resolves it from the path when none is given
    experiment = posixpath.dirname(posixpath.dirname(checkpoint.path.rstrip("/")))
    target = posixpath.join(experiment, "pbt_exploits", trial_id)
    if fs.get_file_info(target).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(target)
    fs.create_dir(target)
    pyarrow.fs.copy_files(checkpoint.path, target, source_filesystem=fs, destination_filesystem=fs)
    return Checkpoint(path=target, filesystem=fs)


class _WithoutSearchAlg:
    """A view of Ray's tune controller that shows no search algorithm (see ``PopulationBasedWeights``)."""

    search_alg = None

    def __init__(self, controller: Any) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


if TYPE_CHECKING:  # the mixin's methods call PopulationBasedTraining's (PB2 is one too)
    _SchedulerBase = PopulationBasedTraining
else:  # at run time a plain mixin, first in the bases of the schedulers below
    _SchedulerBase = object


class InASearch(_SchedulerBase):
    """What Ray's ``PopulationBasedTraining`` (and ``PB2``) need to live in one arm of a search,
    behind ``PerArmScheduler`` (a mixin, first in the bases).

    Ray refuses PBT beside a search algorithm (the searcher would be told results of configs
    PBT changed); here the arm's Optuna sampler only draws the initial population, so
    ``on_trial_add`` hides the search algorithm from that check. It ranks by its own metric
    (``PBT_METRIC``), whatever the search optimizes, so ``set_search_properties`` keeps it. No
    exploit at the last epoch. And an exploiting trial restores its own copy of the parent's
    checkpoint (``_exploit``).
    """

    #: The run's last epoch: no exploit there (the trial would restart with nothing left to train).
    max_epochs: int | None = None

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(_WithoutSearchAlg(tune_controller), trial)  # type: ignore[arg-type]  # a view of it
        self._resume_state(trial)

    def _resume_state(self, trial: Any) -> None:
        """A trial with results is one of a resumed search: Ray does not save a scheduler's state,
        it adds every restored trial to the one pickled at the start. Its PBT state starts again
        from what the trial reported last: its score (so it ranks at once) and its perturbation
        cadence (the last multiple of the interval it reached; not 0, which would make every
        restored trial due at its next epoch). PB2's GP data is not rebuilt: it learns again."""
        last = trial.last_result or {}
        state = self._trial_state.get(trial)
        if state is None or last.get(self._time_attr) is None:
            return
        interval = int(self._perturbation_interval)  # epochs (make_pbt, make_pb2)
        state.last_perturbation_time = int(last[self._time_attr]) // interval * interval
        op = self._metric_op  # +1 or -1, set with the metric and mode (both given here)
        if op is not None and last.get(self._metric) is not None:
            state.last_score = op * float(last[self._metric])

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.max_epochs is not None and int(result.get("epoch", 0)) >= self.max_epochs:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        """Ray's exploit, then the parent's checkpoint copied for the exploiting trial to restore.

        Ray points the trial at the parent's checkpoint itself; a trial paused to share the
        CPUs (a population larger than the cluster) may start long after the parent, still
        training, has rotated that checkpoint away (``CheckpointConfig.num_to_keep``), and the
        restore then fails. The copy, ``<experiment>/pbt_exploits/<trial>``, belongs to the
        trial (its next exploit replaces it: by then it has restored from it)."""
        super()._exploit(tune_controller, trial, trial_to_clone)
        manager = trial.run_metadata.checkpoint_manager
        result = manager._latest_checkpoint_result
        if result is None or result.checkpoint is None:
            return
        manager._latest_checkpoint_result = _TrainingResult(
            checkpoint=_own_copy(result.checkpoint, trial.trial_id), metrics=result.metrics)


class PopulationBasedWeights(InASearch, PopulationBasedTraining):
    """Ray's ``PopulationBasedTraining`` in the ``fixed`` arm of a search (``--scheduler pbt``)."""


class BanditWeights(InASearch, PB2):
    """Ray's ``PB2`` (Parker-Holder et al. 2020) in the ``fixed`` arm of a search (``--scheduler pb2``)."""


@dataclass
class SimplexToWeights:
    """PB2's ``custom_explore_fn``: ``fixed.weights`` rebuilt from the ``simplex.<task>`` values PB2 chose.

    PB2 moves numeric config keys within bounds (a GP bandit over them, Parker-Holder et al. 2020
    §3); the weights string is not one, so PB2 moves the simplex coordinates the search drew
    (``spaces.simplex``: ``u_t`` in [U_MIN, 1], ``w_t = -log u_t / sum_s -log u_s``) and this
    rebuilds the weights the trainer reads from them (the one weights schema, ``format_weights``).
    """

    tasks: tuple[str, ...]

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        new = dict(config)
        new[WEIGHTS_KEY] = format_weights(weights_from_u([float(new[SIMPLEX_PREFIX + t]) for t in self.tasks]))
        return new


def make_pbt(tasks: Sequence[str], interval: int, seed: int, mutate_lr: bool = False,
             max_epochs: int | None = None) -> PopulationBasedWeights:
    """The ``fixed`` arm's scheduler: asynchronous PBT every ``interval`` epochs (``training_iteration``,
    one per epoch), Ray's default quantile (the bottom 25% exploit the top 25%)."""
    scheduler = PopulationBasedWeights(
        time_attr="training_iteration", metric=PBT_METRIC, mode="max", perturbation_interval=interval,
        custom_explore_fn=WeightExplorer(tuple(tasks), seed, mutate_lr=mutate_lr),
        # a diverged trial's last record has no val/score: skip it rather than fail the search
        require_attrs=False, log_config=False,
    )
    scheduler.max_epochs = max_epochs
    return scheduler


def make_pb2(tasks: Sequence[str], interval: int, max_epochs: int | None = None) -> BanditWeights:
    """The ``fixed`` arm's scheduler for ``--scheduler pb2``: Ray's PB2 every ``interval`` epochs over
    the simplex coordinates ``simplex.<task>`` in [U_MIN, 1] (their searched range), the weights
    rebuilt from them (``SimplexToWeights``)."""
    import logging

    # PB2 imports sklearn's GP lazily and warns on every fit that its kernel bounds are reached
    logging.getLogger("sklearn").setLevel(logging.ERROR)
    scheduler = BanditWeights(
        time_attr="training_iteration", metric=PBT_METRIC, mode="max", perturbation_interval=interval,
        hyperparam_bounds={SIMPLEX_PREFIX + t: [U_MIN, 1.0] for t in tasks},
        custom_explore_fn=SimplexToWeights(tuple(tasks)), require_attrs=False, log_config=False,
    )
    scheduler.max_epochs = max_epochs
    return scheduler


def check_pbt(methods: Sequence[str], search: str, interval: int, max_epochs: int, budget: int | None,
              scheduler: str = "pbt", fixed: Mapping[str, Any] | None = None, mutate_lr: bool = False) -> None:
    """Refuse, on the driver, a search PBT (or PB2) cannot run (one line each)."""
    flag = f"--scheduler {scheduler}"
    if PBT_METHOD not in methods:
        raise ConfigError(f"{flag} mutates the task weights of method {PBT_METHOD}: add it to --methods "
                          f"(got {', '.join(methods)})")
    if search not in PBT_SEARCHES:
        raise ConfigError(f"{flag} draws its initial population with --search tpe or random, not {search}")
    if interval < 1:
        raise ConfigError(f"--pbt-interval must be at least 1 epoch, got {interval}")
    if interval >= max_epochs:
        raise ConfigError(f"--pbt-interval {interval} leaves no perturbation in {max_epochs} epochs: "
                          "give a smaller interval or more --max-epochs")
    if budget is not None and budget < 2:
        raise ConfigError(f"{flag} needs a population of at least 2 {PBT_METHOD} trials, got --num-samples {budget}")
    if scheduler == "pb2" and WEIGHTS_KEY in (fixed or {}):
        raise ConfigError(f"{flag} moves the searched simplex point: leave the weights unset (not --param weights=...)")
    if scheduler == "pb2" and mutate_lr:
        raise ConfigError(f"--pbt-lr goes with --scheduler pbt ({flag} moves only the task weights)")


def lineage_record(trial_id: str, events: Sequence[Mapping[str, Any]], run_ids: Mapping[str, str],
                   previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``pbt_lineage.json`` of a trial after an exploit.

    ``exploits``: this trial's own exploits, oldest first (``previous``'s and the newest, the
    last of ``events``), each with the epoch of the restored checkpoint, the parent trial and
    its MLflow run, and the weights and lr trained from there on. ``lineage``: the history of the
    model it now trains (``events``: the exploits its parent's checkpoint had been through, then
    this one), which is the weight schedule to replay.
    """
    def named(event: Mapping[str, Any]) -> dict[str, Any]:
        parent = str(event.get("parent_trial_id"))
        return {**dict(event), "parent_run_id": run_ids.get(parent, event.get("parent_run_id"))}

    lineage = [named(e) for e in events]
    exploits = list((previous or {}).get("exploits", []))
    if lineage:
        exploits.append(lineage[-1])
    return {"trial_id": trial_id, "exploits": exploits, "lineage": lineage}
