"""``searcher tune``: Ray Tune + OptunaSearch (define-by-run) + ASHA, one MLflow run per trial.

The sampler is TPE (default), random, grid (every point once) or NSGA-II (multi-objective);
``--name`` names the search in Ray's storage and ``--resume`` continues an interrupted one.
"""

from __future__ import annotations

import functools
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import mlflow
import pandas as pd

from searcher import tracking
from searcher.progress import ProgressLine
from searcher.arms import STL, TASK_KEY, PerArmScheduler, PerArmSearch, arm_of_config, arms_of, is_reference
from searcher.samplers import PicklableNSGAIISampler, grid_sampler
from searcher.session import Session, data_source, session_tags
from spaces import grid_points, suggest, suggest_grid_point
from trainables.errors import ConfigError
from trainables.tune_trainable import DIVERGED_SCORE, SEARCH_METRIC, train_trial


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
    #: Let ASHA stop single-task references too (by default they run every epoch: Δm divides by them).
    prune_references: bool = False
    #: Ray's own per-trial output (else one progress line per finished trial).
    verbose: bool = False
    #: Keep a trial's worker (its Python, torch, data) for the next trial (Ray's ``reuse_actors``).
    reuse_actors: bool = True

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
    kind: str, max_epochs: int, grace_period: int | None, metric: str | None = None, reduction_factor: int = 3,
    unpruned: Sequence[str] = (),
) -> Any:
    """ASHA per arm (or FIFO) over epochs. ``metric`` is given only when the search has several
    objectives: then ASHA ranks trials by the scalar score and the searcher gets the rest.
    ASHA (Li et al. 2020) keeps the top 1/``reduction_factor`` of each rung; rungs sit at
    ``grace_period * reduction_factor**k`` epochs. Each arm (method, or single-task task) has
    its own ASHA, so no trial is stopped because another method learns faster; arms in
    ``unpruned`` run every trial to the end."""
    from ray.tune.schedulers import FIFOScheduler

    if kind == "fifo":
        return FIFOScheduler()
    grace = grace_period or max(1, max_epochs // 5)
    asha = {"time_attr": "training_iteration", "max_t": max_epochs, "grace_period": min(grace, max_epochs),
            "reduction_factor": reduction_factor}
    return PerArmScheduler(asha, unpruned, metric=metric, mode="max" if metric else None)


#: Trials per arm when ``--num-samples`` is not given (tpe, random, nsga2).
DEFAULT_SAMPLES = 3


@dataclass
class SearchPlan:
    """What the search algorithm optimizes and how many trials each arm runs."""

    search_alg: Any
    metric: str | list[str]
    mode: str | list[str]
    #: Trials in all (the sum of the budgets).
    num_samples: int
    #: Trials per arm (``cagrad``, ``single_task[CL]``, ...), in the arms' order.
    budgets: dict[str, int] = field(default_factory=dict)
    #: With ``--search grid``: the points of each arm's grid.
    grid_sizes: dict[str, int] | None = None

    @property
    def grid_size(self) -> int | None:
        return sum(self.grid_sizes.values()) if self.grid_sizes else None


def objectives(session: Session) -> tuple[list[str], list[str]]:
    """NSGA-II's objectives: each task's first metric at the best validation epoch."""
    metrics, modes = [], []
    for task in session.problem.tasks:
        first = task.metrics[0]
        metrics.append(f"best/val/{task.name}/{first.name}")
        modes.append("max" if first.higher_is_better else "min")
    return metrics, modes


def make_sampler(kind: str, seed: int) -> Any:
    """A fresh Optuna sampler of the kind ``--search`` names (one per arm: no shared state)."""
    import optuna

    if kind == "tpe":
        with warnings.catch_warnings():  # `group` is marked experimental; nothing the user can act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return PicklableNSGAIISampler(seed=seed)
    raise ConfigError(f"unknown search {kind!r} (known: {', '.join(SEARCHES)})")


def plan_search(session: Session, options: SearchOptions, num_samples: int | None) -> SearchPlan:
    """One Optuna search per arm behind one Ray Tune search algorithm (``PerArmSearch``).

    ``num_samples`` is the budget of each arm (each method, and ``single_task`` per task), as
    in `002`'s protocol; each arm has its own sampler (same seed, so a random search draws the
    same common hyperparameters for every method) and its own study. tpe: multivariate TPE
    over the arm's conditional space (the default); random; nsga2: multi-objective over the
    per-task validation metrics; grid: every point of each arm's grid once (or its first
    ``num_samples`` in a seeded order).
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per arm's new study
    kind = options.search
    if kind not in SEARCHES:
        raise ConfigError(f"unknown search {kind!r} (known: {', '.join(SEARCHES)})")
    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {num_samples}")
    tasks = session.problem.task_names
    metric: str | list[str] = SEARCH_METRIC
    mode: str | list[str] = "max"
    if kind == "nsga2":
        metric, mode = objectives(session)
    # the search's --seed is every trial's base seed (a trial's seed is seed + its run index)
    base = {"seed": options.seed, **session.fixed}
    searchers, budgets, grid_sizes = {}, {}, {}
    for arm in arms_of(session.methods, tasks, session.fixed):
        fixed = {**base, **arm.fixed()}
        space_fn: Any
        if kind == "grid":
            points = grid_points(session.space, [arm.method], tasks, fixed)
            grid_sizes[arm.key] = len(points)
            sampler = grid_sampler(len(points), options.seed)
            space_fn = functools.partial(suggest_grid_point, space=session.space, points=points, fixed=fixed)
            budgets[arm.key] = len(points) if num_samples is None else min(num_samples, len(points))
        else:
            sampler = make_sampler(kind, options.seed)
            space_fn = functools.partial(suggest, space=session.space, methods=[arm.method], tasks=tasks, fixed=fixed)
            budgets[arm.key] = num_samples or DEFAULT_SAMPLES
        searchers[arm.key] = OptunaSearch(space=space_fn, metric=metric, mode=mode, sampler=sampler, seed=options.seed)
    if kind == "grid" and num_samples is not None and num_samples > max(grid_sizes.values()):
        raise ConfigError(f"--num-samples {num_samples} is more than the points of every arm's grid "
                          f"({', '.join(f'{k}: {n}' for k, n in grid_sizes.items())})")
    search_alg = PerArmSearch(searchers, budgets, metric, mode)
    return SearchPlan(search_alg, metric, mode, sum(budgets.values()), budgets, grid_sizes or None)


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
    session: Session, options: SearchOptions, tracking_uri: str, experiment: str, plan: SearchPlan | None = None
) -> pd.DataFrame:
    """Run (or, with ``options.resume``, continue) the search (``plan``: as ``plan_search`` makes
    it from ``options``); return the best trial per arm (``best_per_method``)."""
    quiet_ray_env(options.address)
    from ray import tune

    name = options.name or default_name(session.space.name)
    path = experiment_path(options, name, tracking_uri)
    if options.resume and not tune.Tuner.can_restore(path):
        raise ConfigError(f"no search named {name!r} to resume at {path} (give the --name and --storage it ran with)")
    if not options.resume and tune.Tuner.can_restore(path):
        raise ConfigError(f"a search named {name!r} already exists at {path}: add --resume to continue it, or pick another --name")
    plan = plan or plan_search(session, options, options.num_samples)
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
                    # trials per arm (each method, and single_task per task)
                    "num_samples": options.num_samples or ("grid" if options.search == "grid" else DEFAULT_SAMPLES),
                    "arms": ",".join(plan.budgets),
                    "trials_planned": plan.num_samples,
                    "prune_references": options.prune_references,
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
                        unpruned=() if options.prune_references else [a for a in plan.budgets if is_reference(a)],
                    ),
                    num_samples=plan.num_samples,
                    max_concurrent_trials=options.max_concurrent,
                    # a worker (its Python, torch and data) serves trial after trial: a new
                    # worker per trial cost ~12 s before the first epoch on Multi-MNIST
                    reuse_actors=options.reuse_actors,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage_path(options, tracking_uri),
                    callbacks=[logger, ProgressLine(plan.budgets, max_epochs)],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=1),
                    verbose=1 if options.verbose else 0,
                ),
            )
        results = tuner.fit()
        table = best_per_method(trial_frame(results), list(plan.budgets))
        mlflow.log_table(table, "best_per_method.json")
        mlflow.log_text(table.to_string(index=False), "best_per_method.txt")
        mlflow.log_metric("trials", len(results))
        mlflow.log_metric("errors", len(results.errors))
    return table


def trial_frame(results: Any) -> pd.DataFrame:
    """One row per trial of a finished Ray Tune run: its config (``config/<key>``), its last
    reported metrics, and the first line of its error (None when it did not fail). Unlike
    ``ResultGrid.get_dataframe``, a trial that failed before reporting anything is kept."""
    rows = []
    for result in results:
        row: dict[str, Any] = {f"config/{k}": v for k, v in (result.config or {}).items()}
        row.update({k: v for k, v in (result.metrics or {}).items() if not isinstance(v, dict)})
        error = result.error
        row["error"] = (str(error).strip().splitlines() or [type(error).__name__])[-1][:300] if error else None
        rows.append(row)
    return pd.DataFrame(rows)


def best_per_method(df: pd.DataFrame, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per arm (each method, ``single_task[<task>]`` per task): its best trial by
    ``best/val_score``, and how many trials it ran, finished and lost to errors.

    Every arm in ``arms`` (the search's) has a row, with ``note`` saying why where it has no
    finished trial; methods come first, ranked by their best score, then the single-task
    references (role ``reference``: their score covers one task, so they are not ranked with
    the methods). A trial counts as finished when it did not fail and reached a valid epoch.
    """
    df = df.copy() if not df.empty else pd.DataFrame({"config/method": pd.Series(dtype=object)})
    if "config/method" not in df:
        df["config/method"] = None
    for column, empty in ((SEARCH_METRIC, float("nan")), ("error", None), ("diverged", 0.0)):
        if column not in df:
            df[column] = empty
    df["arm"] = [arm_of_config({k[len("config/"):]: v for k, v in row.items() if k.startswith("config/") and pd.notna(v)})
                 for row in df.to_dict("records")]
    failed = df["error"].notna()
    df["finished"] = ~failed & df[SEARCH_METRIC].notna() & (df[SEARCH_METRIC] > DIVERGED_SCORE)
    order = list(arms) if arms is not None else list(dict.fromkeys(df["arm"]))
    test_columns = sorted(c for c in df.columns if c.startswith("best/test/"))
    rows = []
    for arm in order:
        trials = df[df["arm"] == arm]
        done = trials[trials["finished"]]
        out: dict[str, Any] = {
            "method": arm, "role": "reference" if is_reference(arm) else "method",
            "trials": len(trials), "finished": len(done), "failed": int(trials["error"].notna().sum()),
            "val_score": None, "epoch": None, "params": "", "note": "",
        }
        for column in test_columns:
            out[column[len("best/test/"):]] = None
        if done.empty:
            out["note"] = "no finished trial: " + _why_none(trials)
            rows.append(out)
            continue
        row = done.sort_values(SEARCH_METRIC, ascending=False).iloc[0]
        method_key = row["config/method"]
        out["val_score"] = round(float(row[SEARCH_METRIC]), 3)
        out["epoch"] = int(row.get("best/epoch", 0))
        out["params"] = " ".join(
            f"{c[len('config/'):]}={row[c]}" for c in df.columns
            if c.startswith("config/") and pd.notna(row[c])
            and (c[len("config/"):] in ("lr", "dropout", "optimizer") or c.startswith(f"config/{method_key}."))
            and c != f"config/{TASK_KEY}"
        )
        trained = str(row.get(f"config/{TASK_KEY}")) if method_key == STL else None
        for column in test_columns:
            keep = pd.notna(row[column]) and (trained is None or column[len("best/test/"):].split("/")[0] == trained)
            out[column[len("best/test/"):]] = round(float(row[column]), 4) if keep else None
        if out["failed"] or (trials["diverged"] == 1).any():
            out["note"] = _why_none(trials[~trials["finished"]], partial=True)
        rows.append(out)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["_rank"] = table["val_score"].astype(float).fillna(-float("inf"))
    methods = table[table["role"] == "method"].sort_values("_rank", ascending=False, kind="stable")
    references = table[table["role"] == "reference"]
    return pd.concat([methods, references]).drop(columns="_rank").reset_index(drop=True)


def _why_none(trials: pd.DataFrame, partial: bool = False) -> str:
    """Why trials have no result: how many failed (with the first error) or diverged."""
    if trials.empty:
        return "" if partial else "no trial ran"
    parts = []
    errors = trials["error"].dropna()
    if len(errors):
        parts.append(f"{len(errors)} failed ({errors.iloc[0]})")
    diverged = int((trials["diverged"] == 1).sum())
    if diverged:
        parts.append(f"{diverged} diverged")
    unscored = len(trials) - len(errors) - diverged
    if unscored > 0 and not partial:
        parts.append(f"{unscored} without a valid epoch")
    return ", ".join(parts)


def first_error(table: pd.DataFrame) -> str | None:
    """The search failed as a whole: every trial of every arm failed (not diverged). Then the
    first error, for the one line the command ends with; else None."""
    if table.empty or int(table["trials"].sum()) == 0 or int(table["failed"].sum()) < int(table["trials"].sum()):
        return None
    return next(note for note in table["note"] if note)
