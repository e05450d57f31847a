"""``searcher tune``: per-arm Optuna searches and per-arm ASHA, launched as one Ray Tune run.

The sampler is TPE (default), random, grid (every point once) or NSGA-II (multi-objective);
``--name`` names the search in Ray's storage and ``--resume`` continues an interrupted one.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from searcher.arms import TASK_KEY, PerArmScheduler, PerArmSearch, arm_of_config, arms_of, is_reference
from searcher.launch import Launch, SearchOptions, default_name, launch, log_table
from searcher.pbt import PBT_METHOD, POPULATION_SCHEDULERS, check_pbt, default_interval, make_pb2, make_pbt
from searcher.run_record import STL
from searcher.samplers import CommonRandomSampler, PicklableNSGAIISampler, grid_sampler
from searcher.session import Session
from spaces import grid_points, suggest, suggest_grid_point
from trainables.errors import ConfigError
from trainables.trial import DIVERGED_SCORE, SEARCH_METRIC

SEARCHES = ("tpe", "random", "grid", "nsga2")
SCHEDULERS = ("asha", "fifo", *POPULATION_SCHEDULERS)


def make_scheduler(
    kind: str, max_epochs: int, grace_period: int | None, metric: str | None = None, reduction_factor: int = 3,
    unpruned: Sequence[str] = (), pbt: Any = None,
) -> Any:
    """ASHA per arm (or FIFO) over epochs; ``pbt`` (``--scheduler pbt``): the ``fixed`` arm's
    own PBT scheduler (``searcher.pbt.make_pbt``), the other arms keep their ASHA. ``metric`` is given only when the search has several
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
    given = {PBT_METHOD: pbt} if kind in POPULATION_SCHEDULERS else None
    return PerArmScheduler(asha, unpruned, metric=metric, mode="max" if metric else None, given=given)


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
        return CommonRandomSampler(seed)
    if kind == "nsga2":
        return PicklableNSGAIISampler(seed=seed)
    raise ConfigError(f"unknown search {kind!r} (known: {', '.join(SEARCHES)})")


def plan_search(session: Session, options: SearchOptions, num_samples: int | None) -> SearchPlan:
    """One Optuna search per arm behind one Ray Tune search algorithm (``PerArmSearch``).

    ``num_samples`` is the budget of each arm (each method, and ``single_task`` per task), as
    in `002`'s protocol; each arm has its own sampler (same seed; a random search draws the same
    common hyperparameters in every arm's k-th trial: ``CommonRandomSampler``) and its own study. tpe: multivariate TPE
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
    if options.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {options.scheduler!r} (known: {', '.join(SCHEDULERS)})")
    if options.scheduler in POPULATION_SCHEDULERS:
        check_pbt(session.methods, kind, pbt_interval(options, session.settings.max_epochs),
                  session.settings.max_epochs, num_samples, options.scheduler, session.fixed, options.pbt_lr)
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


def pbt_interval(options: SearchOptions, max_epochs: int) -> int:
    """Epochs between PBT perturbations: ``--pbt-interval``, else ``default_interval``."""
    return options.pbt_interval if options.pbt_interval is not None else default_interval(max_epochs)


def run_search(
    session: Session, options: SearchOptions, tracking_uri: str, experiment: str, plan: SearchPlan | None = None
) -> pd.DataFrame:
    """Run (or, with ``options.resume``, continue) the search (``plan``: as ``plan_search`` makes
    it from ``options``) through the launcher; return the best trial per arm (``best_per_method``)."""
    plan = plan or plan_search(session, options, options.num_samples)
    max_epochs = session.settings.max_epochs
    multi = isinstance(plan.metric, list)
    params = {
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
        **({"objectives": ",".join(plan.metric)} if multi else {}),
        **({"pbt_interval": pbt_interval(options, max_epochs), "pbt_lr": options.pbt_lr}
           if options.scheduler in POPULATION_SCHEDULERS else {}),
        **{f"fixed.{k}": v for k, v in session.fixed.items()},
    }
    scheduler = make_scheduler(
        options.scheduler, max_epochs, options.grace_period, SEARCH_METRIC if multi else None, options.reduction_factor,
        unpruned=() if options.prune_references else [a for a in plan.budgets if is_reference(a)],
        pbt=make_pbt(session.problem.task_names, pbt_interval(options, max_epochs), options.seed, options.pbt_lr,
                     max_epochs) if options.scheduler == "pbt"
        else make_pb2(session.problem.task_names, pbt_interval(options, max_epochs), max_epochs)
        if options.scheduler == "pb2" else None,
    )
    if options.scheduler in POPULATION_SCHEDULERS and not options.verbose:
        # Ray logs every exploit in a dozen lines (and "No hyperparameters mutated": ours are
        # mutated by the custom explore function); each trial's pbt_lineage.json records them
        for name in ("ray.tune.schedulers.pbt", "ray.tune.schedulers.pb2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # an exploited trial reports its parent's epochs again; the arm's Optuna study (which only
        # drew the starting population) then warns once per repeated step: nothing to act on
        warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=")
    # PBT restores a parent's checkpoint from its last perturbation, up to an interval old:
    # keep that many (and a spare), or the parent's next epoch could delete it first
    keep = pbt_interval(options, max_epochs) + 2 if options.scheduler in POPULATION_SCHEDULERS else 1
    launched = launch(
        session,
        Launch("tune", options.name or default_name(session.space.name), plan.search_alg, plan.num_samples,
               plan.budgets, plan.metric, plan.mode, scheduler, params, checkpoints_to_keep=keep),
        options, tracking_uri, experiment,
    )
    table = best_per_method(trial_frame(launched.results), list(plan.budgets))
    log_table(tracking_uri, launched.parent_run_id, table, "best_per_method")
    return table


def trial_frame(results: Any) -> pd.DataFrame:
    """One row per trial of a finished Ray Tune run: its config (``config/<key>``), its last
    reported metrics, and the first line of its error (None when it did not fail). Unlike
    ``ResultGrid.get_dataframe``, a trial that failed before reporting anything is kept."""
    rows = []
    for result in results:
        row: dict[str, Any] = {f"config/{k}": v for k, v in (result.config or {}).items()}
        row.update({k: v for k, v in (result.metrics or {}).items() if not isinstance(v, dict)})
        row["error"] = error_line(result.error) if result.error else None
        rows.append(row)
    return pd.DataFrame(rows)


def error_line(error: BaseException) -> str:
    """A trial's error in one line (its last: the exception itself), for tables and the console."""
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]


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
            f"{c[len('config/'):]}={_short(row[c])}" for c in df.columns
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


def _short(value: Any) -> str:
    """A searched value for the end table: a float drawn from a continuous range to 4 digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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
