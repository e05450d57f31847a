"""One launcher: a search algorithm (or a list of planned configurations) in, one Ray Tune run out.

``tune``, ``confirm`` and ``rerun`` all train through ``launch``: the same parent MLflow run
(tag ``searcher.role=search``), the same trial logger (one MLflow run per trial, written by the
driver, with the resolved, typed config as its params), the same Tuner, run config, failure
handling and progress line, and the same trial core (``trainables.trial``) that ``searcher
train`` runs without Ray. What differs between the commands is only what they plan: per-arm
Optuna searches (``tune``) or a fixed list of configurations (``confirm``, ``rerun``).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import mlflow
from mlflow.tracking import MlflowClient

from searcher import tracking
from searcher.arms import arm_of_config
from searcher.progress import ProgressLine
from searcher.run_record import Role, Tag, budgets_tag
from searcher.samplers import grid_sampler
from searcher.session import Session, data_source, session_tags
from trainables.errors import ConfigError
from trainables.trial import SEARCH_METRIC
from trainables.tune_trainable import train_trial


@dataclass
class SearchOptions:
    """How a launch runs on Ray (shared by ``tune``, ``confirm`` and ``rerun``)."""

    num_samples: int | None = None  # per arm; default DEFAULT_SAMPLES, with search grid every point of the grid
    scheduler: str = "asha"
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    storage: str | None = None
    name: str | None = None
    address: str | None = None
    grace_period: int | None = None
    reduction_factor: int = 3
    search: str = "tpe"
    resume: bool = False
    #: Let ASHA stop single-task references too (by default they run every epoch: Δm divides by them).
    prune_references: bool = False
    #: Ray's own per-trial output (else one progress line per finished trial).
    verbose: bool = False
    #: Keep a trial's worker (its Python, torch, data) for the next trial (Ray's ``reuse_actors``).
    reuse_actors: bool = True
    #: ``--scheduler pbt``: epochs between perturbations (default ``searcher.pbt.default_interval``).
    pbt_interval: int | None = None
    #: ``--scheduler pbt``: mutate lr too (Ray's factors 0.8 / 1.2), not only the task weights.
    pbt_lr: bool = False

    def __post_init__(self) -> None:
        if self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor must be at least 2, got {self.reduction_factor}")
        if self.grace_period is not None and self.grace_period < 1:
            raise ConfigError(f"--grace-period must be at least 1, got {self.grace_period}")
        if self.scheduler not in ("pbt", "pb2") and (self.pbt_interval is not None or self.pbt_lr):
            raise ConfigError("--pbt-interval and --pbt-lr go with --scheduler pbt (or pb2: --pbt-interval)")


@dataclass
class Launch:
    """What one Ray Tune run trains and what its runs record."""

    #: ``tune``, ``confirm`` or ``rerun``: the runs' ``searcher.mode`` tag.
    kind: str
    #: The search's name: Ray's experiment folder, the parent run's name, tag ``searcher.search``.
    name: str
    search_alg: Any
    num_samples: int
    #: Trials per arm (``cagrad``, ``single_task[CL]``, ...), for the progress line.
    budgets: Mapping[str, int]
    metric: str | list[str] = SEARCH_METRIC
    mode: str | list[str] = "max"
    #: A Ray Tune scheduler; None: FIFO (every trial to its last epoch).
    scheduler: Any = None
    #: Params of the parent run.
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Tags added to every trial's run (``rerun`` marks its source with them).
    run_tags: Mapping[str, str] = field(default_factory=dict)
    #: JSON artifacts of every trial's run (file name -> JSON-able value).
    run_artifacts: Mapping[str, Any] = field(default_factory=dict)
    #: Checkpoints kept per trial (PBT needs its parents' recent ones).
    checkpoints_to_keep: int = 1


@dataclass
class Launched:
    """What a launch leaves: Ray's results and the parent MLflow run (``run_ids``: each trial's)."""

    results: Any
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    name: str

    def run_ids(self) -> dict[str, str]:
        """Ray trial id -> MLflow run id, for the trials of this launch (one query, on demand)."""
        client = MlflowClient(self.tracking_uri)
        runs = client.search_runs([self.experiment_id], filter_string=f"tags.`{Tag.SEARCH}` = '{self.name}'",
                                  max_results=50_000)
        return {r.data.tags[Tag.TRIAL_ID]: r.info.run_id for r in runs if r.data.tags.get(Tag.TRIAL_ID)}


def quiet_ray_env(address: str | None = None) -> None:
    """Environment defaults for Ray (set only where the user has not). Token auth is turned off
    only for the local Ray searcher starts itself; joining a cluster leaves RAY_AUTH_MODE to Ray."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Trials checkpoint every epoch with CheckpointConfig(num_to_keep=1), which makes Tune force
    # an experiment-state snapshot per checkpoint (so a resume never points at a deleted one);
    # with epochs of a second or two that prints a multi-line warning every few seconds.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def start_ray(address: str | None) -> None:
    """``ray.init``: a local Ray, or the cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://``).

    A wrong address is a one-line error, quickly: Ray itself retries an address nobody listens
    at for minutes, printing a warning every few seconds, so a ``HOST:PORT`` is first checked
    with a plain TCP connection (5 s), and Ray's ``ConnectionError`` (``auto`` with no cluster
    on this node) becomes a ``ConfigError``.
    """
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto" and "://" not in address:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as err:
            raise ConfigError(f"no Ray cluster answers at {address} ({err.strerror or err}); start one there with "
                              "`ray start --head`, or check --address") from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot connect to a Ray cluster at {address}: {reason}") from None


def default_name(prefix: str) -> str:
    """A fresh search name when the user gives none (so a second search never collides)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def storage_path(options: SearchOptions, tracking_uri: str) -> str:
    """Where Ray keeps its searches' state: ``--storage``, else ``ray_results/`` beside a SQLite
    ``mlflow.db``, else Ray's own default ``~/ray_results``.

    Beside the database, a project's searches (their checkpoints, and the state ``--resume``
    needs) live in the folder its runs live in: moving or deleting the folder moves or deletes
    both, and a second project's folder never mixes its searches with the first's. With a
    tracking server (a cluster) there is no such folder: give a shared ``--storage`` there.
    """
    storage = options.storage
    if storage and "://" in storage:
        return storage.rstrip("/")
    if storage:
        return os.path.abspath(os.path.expanduser(storage))
    db = tracking.sqlite_path(tracking_uri)
    if db is not None:
        return os.path.join(os.path.dirname(os.path.abspath(db)), "ray_results")
    return os.path.abspath(os.path.expanduser("~/ray_results"))


def experiment_path(options: SearchOptions, name: str, tracking_uri: str) -> str:
    """The folder (or bucket prefix) of the search ``name`` in Ray's storage."""
    return storage_path(options, tracking_uri) + "/" + name


def find_search_run(experiment_id: str, name: str) -> str | None:
    """The MLflow parent run of the search named ``name`` (for ``--resume``)."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{Tag.SEARCH}` = '{name}' and tags.`{Tag.ROLE}` = '{Role.SEARCH}'",
        order_by=["start_time DESC"],
        max_results=1,
    )
    return None if runs.empty else str(runs.run_id.iloc[0])


def _planned_point(trial: Any, configs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Define-by-run function of a planned list: the grid sampler picks an unvisited index."""
    return dict(configs[trial.suggest_categorical("grid_point", list(range(len(configs))))])


def planned(configs: Sequence[Mapping[str, Any]]) -> tuple[Any, dict[str, int]]:
    """A fixed list of configurations as a search algorithm (each trained once: Optuna's grid
    sampler over the list's indices), and the trials per arm it holds."""
    import functools

    from ray.tune.search.optuna import OptunaSearch

    if not configs:
        raise ConfigError("nothing to train: the plan holds no configuration")
    search_alg = OptunaSearch(space=functools.partial(_planned_point, configs=list(configs)), metric=SEARCH_METRIC,
                              mode="max", sampler=grid_sampler(len(configs), 0))
    budgets: dict[str, int] = {}
    for config in configs:
        arm = arm_of_config(config)
        budgets[arm] = budgets.get(arm, 0) + 1
    return search_alg, budgets


def launch(session: Session, plan: Launch, options: SearchOptions, tracking_uri: str, experiment: str) -> Launched:
    """Run ``plan`` as one Ray Tune run (or, with ``options.resume``, continue the one of that
    name), logged under one parent MLflow run; return its results."""
    quiet_ray_env(options.address)
    from ray import tune

    path = experiment_path(options, plan.name, tracking_uri)
    if options.resume and not tune.Tuner.can_restore(path):
        raise ConfigError(f"no search named {plan.name!r} to resume at {path} (give the --name and --storage it ran with)")
    if not options.resume and tune.Tuner.can_restore(path):
        raise ConfigError(f"a search named {plan.name!r} already exists at {path}: add --resume to continue it, "
                          "or pick another --name")
    experiment_id = tracking.init_store(tracking_uri, experiment)
    start_ray(options.address)

    max_epochs = session.settings.max_epochs
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, settings=session.settings),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    shared = {**session_tags(session, plan.kind), Tag.SEARCH: plan.name}
    parent_id = find_search_run(experiment_id, plan.name) if options.resume else None
    if options.resume and parent_id is None:
        raise ConfigError(f"search {plan.name!r} has Ray state at {path} but no MLflow run in experiment {experiment!r}")
    start = ({"run_id": parent_id} if parent_id else
             {"experiment_id": experiment_id, "run_name": plan.name, "tags": {**shared, Tag.ROLE: Role.SEARCH}})
    with mlflow.start_run(**start) as parent:
        if parent_id is None:
            if plan.params:
                mlflow.log_params(dict(plan.params))
            mlflow.set_tag(Tag.BUDGETS, budgets_tag(plan.budgets))
        if options.resume:
            # The run config (with its MLflow callback) is restored from Ray's state; the
            # callback re-attaches resumed trials to their MLflow runs by trial id.
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            # Tune's own metric and mode take one objective; a multi-objective search (lists) gives
            # them to its search algorithm only
            tune_metric = plan.metric if isinstance(plan.metric, str) else None
            tune_mode = plan.mode if isinstance(plan.mode, str) else None
            logger = tracking.TrialLogger(
                tracking_uri,
                experiment,
                tags={**shared, **plan.run_tags, "mlflow.parentRunId": parent.info.run_id},
                params={"space": session.space.name, "max_epochs": max_epochs, "data_source": data_source(session)},
                max_epochs=max_epochs,
                options=session.problem.defaults,
                artifacts=plan.run_artifacts,
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=tune_metric,
                    mode=tune_mode,
                    search_alg=plan.search_alg,
                    scheduler=plan.scheduler,
                    num_samples=plan.num_samples,
                    max_concurrent_trials=options.max_concurrent,
                    # a worker (its Python, torch and data) serves trial after trial: a new
                    # worker per trial cost ~12 s before the first epoch on Multi-MNIST
                    reuse_actors=options.reuse_actors,
                ),
                run_config=tune.RunConfig(
                    name=plan.name,
                    storage_path=storage_path(options, tracking_uri),
                    callbacks=[logger, ProgressLine(plan.budgets, max_epochs)],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.checkpoints_to_keep),
                    failure_config=tune.FailureConfig(max_failures=1),
                    verbose=1 if options.verbose else 0,
                ),
            )
        results = tuner.fit()
        mlflow.log_metric("trials", len(results))
        mlflow.log_metric("errors", len(results.errors))
    return Launched(results, parent.info.run_id, tracking_uri, experiment_id, plan.name)


def log_table(tracking_uri: str, run_id: str, table: Any, stem: str) -> None:
    """A result table as two artifacts of a launch's parent run: ``<stem>.json`` and ``<stem>.txt``."""
    if table.empty:
        return
    client = MlflowClient(tracking_uri)
    client.log_table(run_id, table, f"{stem}.json")
    client.log_text(run_id, table.to_string(index=False), f"{stem}.txt")
