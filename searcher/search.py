"""``searcher tune``: Ray Tune + OptunaSearch (define-by-run) + ASHA, one MLflow run per trial.

The sampler is TPE (default), random, grid (every point once) or NSGA-II (multi-objective);
``--name`` names the search in Ray's storage and ``--resume`` continues an interrupted one.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd

from searcher import tracking
from searcher.samplers import PicklableNSGAIISampler, grid_sampler
from searcher.session import Session, data_source, session_tags
from spaces import grid_points, suggest, suggest_grid_point
from trainables.errors import ConfigError
from trainables.tune_trainable import SEARCH_METRIC, train_trial


@dataclass
class SearchOptions:
    num_samples: int | None = None  # default 12; with search grid, every point of the grid
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

    def __post_init__(self) -> None:
        if self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor must be at least 2, got {self.reduction_factor}")
        if self.grace_period is not None and self.grace_period < 1:
            raise ConfigError(f"--grace-period must be at least 1, got {self.grace_period}")


SEARCHES = ("tpe", "random", "grid", "nsga2")


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


def make_scheduler(
    kind: str, max_epochs: int, grace_period: int | None, metric: str | None = None, reduction_factor: int = 3
) -> Any:
    """ASHA (or FIFO) over epochs. ``metric`` is given only when the search has several
    objectives: then ASHA ranks trials by the scalar score and the searcher gets the rest.
    ASHA (Li et al. 2020) keeps the top 1/``reduction_factor`` of each rung; rungs sit at
    ``grace_period * reduction_factor**k`` epochs."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if kind == "fifo":
        return FIFOScheduler()
    grace = grace_period or max(1, max_epochs // 5)
    extra = {"metric": metric, "mode": "max"} if metric else {}
    return ASHAScheduler(
        time_attr="training_iteration", max_t=max_epochs, grace_period=min(grace, max_epochs),
        reduction_factor=reduction_factor, **extra
    )


@dataclass
class SearchPlan:
    """What the search algorithm optimizes and how many trials it runs."""

    search_alg: Any
    metric: str | list[str]
    mode: str | list[str]
    num_samples: int
    grid_size: int | None = None


def objectives(session: Session) -> tuple[list[str], list[str]]:
    """NSGA-II's objectives: each task's first metric at the best validation epoch."""
    metrics, modes = [], []
    for task in session.problem.tasks:
        first = task.metrics[0]
        metrics.append(f"best/val/{task.name}/{first.name}")
        modes.append("max" if first.higher_is_better else "min")
    return metrics, modes


def plan_search(session: Session, options: SearchOptions, num_samples: int | None) -> SearchPlan:
    """The Optuna sampler behind OptunaSearch for ``--search``.

    tpe: multivariate TPE over the conditional space (the default); random; grid: Optuna's
    GridSampler over every grid point once (`002`'s protocol); nsga2: multi-objective over the
    per-task validation metrics (Pareto front instead of one score).
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    kind = options.search
    tasks = session.problem.task_names
    space_fn: Any = functools.partial(suggest, space=session.space, methods=session.methods, tasks=tasks, fixed=session.fixed)
    metric: str | list[str] = SEARCH_METRIC
    mode: str | list[str] = "max"
    grid_size = None
    if kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=options.seed, multivariate=True, group=True)
    elif kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=options.seed)
    elif kind == "nsga2":
        sampler = PicklableNSGAIISampler(seed=options.seed)
        metric, mode = objectives(session)
    elif kind == "grid":
        points = grid_points(session.space, session.methods, tasks, session.fixed)
        grid_size = len(points)
        sampler = grid_sampler(grid_size, options.seed)
        space_fn = functools.partial(suggest_grid_point, space=session.space, points=points, fixed=session.fixed)
        if num_samples is not None and num_samples > grid_size:
            raise ConfigError(f"--num-samples {num_samples} is more than the {grid_size} points of the grid")
    else:
        raise ConfigError(f"unknown search {kind!r} (known: {', '.join(SEARCHES)})")
    search_alg = OptunaSearch(space=space_fn, metric=metric, mode=mode, sampler=sampler, seed=options.seed)
    samples = num_samples if num_samples is not None else (grid_size or 12)
    return SearchPlan(search_alg, metric, mode, samples, grid_size)


def default_name(space: str) -> str:
    """A fresh search name when the user gives none (so a second search never collides)."""
    return f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"


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
        filter_string=f"tags.`searcher.search` = '{name}' and tags.`searcher.role` = 'search'",
        order_by=["start_time DESC"],
        max_results=1,
    )
    return None if runs.empty else str(runs.run_id.iloc[0])


def run_search(
    session: Session, options: SearchOptions, tracking_uri: str, experiment: str
) -> pd.DataFrame:
    """Run (or, with ``options.resume``, continue) the search; return the best trial per method."""
    quiet_ray_env(options.address)
    from ray import tune

    name = options.name or default_name(session.space.name)
    path = experiment_path(options, name, tracking_uri)
    if options.resume and not tune.Tuner.can_restore(path):
        raise ConfigError(f"no search named {name!r} to resume at {path} (give the --name and --storage it ran with)")
    if not options.resume and tune.Tuner.can_restore(path):
        raise ConfigError(f"a search named {name!r} already exists at {path}: add --resume to continue it, or pick another --name")
    plan = plan_search(session, options, options.num_samples)
    experiment_id = tracking.init_store(tracking_uri, experiment)
    start_ray(options.address)

    max_epochs = session.settings.max_epochs
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, settings=session.settings),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    shared = {**session_tags(session, "tune"), "searcher.search": name}
    parent_id = find_search_run(experiment_id, name) if options.resume else None
    if options.resume and parent_id is None:
        raise ConfigError(f"search {name!r} has Ray state at {path} but no MLflow run in experiment {experiment!r}")
    start = {"run_id": parent_id} if parent_id else {"experiment_id": experiment_id, "run_name": name, "tags": {**shared, "searcher.role": "search"}}
    with mlflow.start_run(**start) as parent:
        if parent_id is None:
            mlflow.log_params(
                {
                    "methods": ",".join(session.methods),
                    "num_samples": plan.num_samples,
                    "search": options.search,
                    "scheduler": options.scheduler,
                    "max_epochs": max_epochs,
                    "seed": options.seed,
                    **({"grid_size": plan.grid_size} if plan.grid_size else {}),
                    **({"objectives": ",".join(plan.metric)} if isinstance(plan.metric, list) else {}),
                    **{f"fixed.{k}": v for k, v in session.fixed.items()},
                }
            )
        if options.resume:
            # The run config (with its MLflow callback) is restored from Ray's state; the
            # callback re-attaches resumed trials to their MLflow runs by trial id.
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            multi = isinstance(plan.metric, list)
            logger = tracking.TrialLogger(
                tracking_uri,
                experiment,
                tags={**shared, "mlflow.parentRunId": parent.info.run_id},
                params={"space": session.space.name, "max_epochs": max_epochs, "data_source": data_source(session), "seed": options.seed},
                max_epochs=max_epochs,
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=None if multi else plan.metric,
                    mode=None if multi else plan.mode,
                    search_alg=plan.search_alg,
                    scheduler=make_scheduler(
                        options.scheduler, max_epochs, options.grace_period, SEARCH_METRIC if multi else None,
                        options.reduction_factor,
                    ),
                    num_samples=plan.num_samples,
                    max_concurrent_trials=options.max_concurrent,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage_path(options, tracking_uri),
                    callbacks=[logger],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=1),
                    verbose=1,
                ),
            )
        results = tuner.fit()
        table = best_per_method(results.get_dataframe())
        if not table.empty:
            mlflow.log_table(table, "best_per_method.json")
            mlflow.log_text(table.to_string(index=False), "best_per_method.txt")
        mlflow.log_metric("trials", len(results))
        mlflow.log_metric("errors", len(results.errors))
    return table


def best_per_method(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method (per task for single_task): its best trial by ``best/val_score``."""
    if df.empty or SEARCH_METRIC not in df:
        return pd.DataFrame()
    df = df.copy()
    df["method"] = df["config/method"]
    if "config/single_task.task" in df:
        is_stl = df["method"] == "single_task"
        df.loc[is_stl, "method"] = "single_task[" + df.loc[is_stl, "config/single_task.task"].astype(str) + "]"
    counts = df.groupby("method").size()
    best = df.sort_values(SEARCH_METRIC, ascending=False).groupby("method", sort=False).head(1)
    rows = []
    for _, row in best.iterrows():
        method_key = row["config/method"]
        params = {
            c[len("config/") :]: row[c]
            for c in df.columns
            if c.startswith("config/") and pd.notna(row[c])
            and (c[len("config/") :] in ("lr", "dropout", "optimizer") or c.startswith(f"config/{method_key}."))
        }
        out = {
            "method": row["method"],
            "trials": int(counts[row["method"]]),
            "val_score": round(float(row[SEARCH_METRIC]), 3),
            "epoch": int(row.get("best/epoch", 0)),
            "params": " ".join(f"{k}={v}" for k, v in params.items()),
        }
        trained = str(row.get("config/single_task.task")) if method_key == "single_task" else None
        for c in df.columns:
            if c.startswith("best/test/"):
                task_metric = c[len("best/test/") :]
                keep = pd.notna(row[c]) and (trained is None or task_metric.split("/")[0] == trained)
                out[task_metric] = round(float(row[c]), 4) if keep else None
        rows.append(out)
    return pd.DataFrame(rows).sort_values("val_score", ascending=False).reset_index(drop=True)
