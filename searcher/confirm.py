"""``searcher confirm``: the paper's protocol, retrain each method's best configuration with new seeds.

`002` §3 (and SPEC "Protocol"): train each configuration once, select by the best validation
epoch, retrain the best configuration with more seeds, report test metrics at the best
validation epoch, averaged over seeds. This module does the retraining step for a finished
experiment: per method (per trained task for ``single_task``) the ``--top`` runs with the best
``best/val_score`` are retrained ``--repeats`` times, as one Ray Tune run over the fixed list
of configurations (so a cluster trains them in parallel), one MLflow run each, tagged
``searcher.confirm_of=<source run id>`` so that reports average a configuration over its seeds.

Seeds (``trainables.config.repeat_seed``, the scheme ``rerun`` shares): repeat r (r = 0..K-1)
of a source run keeps its run index and has base seed ``source seed + 100000 * (r + 1)``, so its
seed (``seed + run index``) is new, differs between repeats, is the same on every call (a
confirm can be repeated exactly), and equals the seed of the r-th fixed-weight rerun of that run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd

from searcher.launch import Launch, SearchOptions, default_name, launch, log_table, planned
from searcher.search import trial_frame
from searcher.session import Session, data_source, open_session
from trainables.config import COMMON, repeat_seed
from trainables.errors import ConfigError

#: Runs eligible as a method's best configuration.
FINISHED = ("completed", "stopped_early")
#: Roles of runs that are not trainings of a searched configuration.
NOT_TRIALS = ("search", "report", "rerun")


@dataclass
class ConfirmPlan:
    session: Session
    experiment: str
    sources: pd.DataFrame  # one row per selected source run
    configs: list[dict[str, Any]]


def method_key(row: pd.Series) -> str:
    method = str(row.get("params.method"))
    task = row.get("tags.searcher.task")
    return f"{method}[{task}]" if method == "single_task" and isinstance(task, str) and task else method


def select_best(runs: pd.DataFrame, top: int) -> pd.DataFrame:
    """Per method (per task for ``single_task``), the ``top`` finished runs by best/val_score."""
    if runs.empty:
        return runs
    role = runs.get("tags.searcher.role", pd.Series("", index=runs.index)).fillna("")
    mode = runs.get("tags.searcher.mode", pd.Series("", index=runs.index)).fillna("")
    status = runs.get("tags.searcher.status", pd.Series("", index=runs.index)).fillna("")
    eligible = runs[~role.isin(NOT_TRIALS) & (mode != "confirm") & status.isin(FINISHED)].copy()
    if eligible.empty or "metrics.best/val_score" not in eligible:
        return eligible.iloc[0:0]
    eligible = eligible[eligible["metrics.best/val_score"].notna()]
    eligible["method_key"] = eligible.apply(method_key, axis=1)
    ranked = eligible.sort_values("metrics.best/val_score", ascending=False)
    return ranked.groupby("method_key", sort=False).head(top).sort_values(["method_key", "metrics.best/val_score"], ascending=[True, False])


def source_config(row: pd.Series, problem_keys: set[str]) -> dict[str, Any]:
    """The trial config of a source run: its method, common hyperparameters, problem options
    and the method's own ``<method>.<param>`` values, as logged."""
    method = str(row["params.method"])
    keep = set(COMMON) | problem_keys | {"method"}
    config = {}
    for column, value in row.items():
        if not str(column).startswith("params.") or value is None or (isinstance(value, float) and pd.isna(value)):
            continue
        key = str(column)[len("params."):]
        if key in keep or key.startswith(method + "."):
            config[key] = value
    return config


def plan_confirm(uri: str, experiment: str, top: int, repeats: int, data_dir: str | None) -> ConfirmPlan:
    """Read the experiment, pick the best configurations and build the repeat configs."""
    from spaces import get_space
    from trainables.problems import build_problem

    if top < 1 or repeats < 1:
        raise ConfigError(f"--top and --repeats must be at least 1, got {top} and {repeats}")
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise ConfigError(f"no MLflow experiment named {experiment!r} in {uri}")
    runs = mlflow.search_runs(experiment_names=[experiment])
    best = select_best(runs, top)
    if best.empty:
        raise ConfigError(f"experiment {experiment!r} has no finished training runs to confirm")
    files = best["tags.searcher.space_file"] if "tags.searcher.space_file" in best else pd.Series(None, index=best.index)
    # object dtype first: a tag no run has comes back as a float column of NaN
    spaces = set(files.astype(object).fillna(best["tags.searcher.space"]).dropna())
    if len(spaces) != 1:
        raise ConfigError(f"experiment {experiment!r} mixes spaces {sorted(spaces)}; confirm one space at a time")
    space_name = spaces.pop()
    space = get_space(space_name)
    problem = build_problem(space.problem, space.problem_options)
    problem_keys = set(problem.defaults) | set(space.constants)
    epochs = {int(float(e)) for e in best.get("params.max_epochs", pd.Series(dtype=str)).dropna()}
    sources = set(best.get("params.data_source", pd.Series(dtype=str)).dropna())
    pin = problem.source_option(next(iter(sources))) if len(sources) == 1 else {}
    pinned = [f"{k}={v}" for k, v in pin.items()]  # train on the data the search used
    session = open_session(space_name, sorted(set(best["params.method"])), pinned, data_dir, max(epochs) if epochs else None)
    if sources and data_source(session) not in sources:
        raise ConfigError(f"the runs trained on {sorted(sources)} data, a confirmation here would use {data_source(session)}")
    configs = []
    for _, row in best.iterrows():
        base = source_config(row, problem_keys)
        seed = int(float(row.get("params.seed", 0) or 0))
        for r in range(repeats):
            configs.append({
                **base,
                "seed": repeat_seed(seed, r),
                "confirm_of": row["run_id"],
                "repeat": r,
            })
    return ConfirmPlan(session, experiment, best, configs)


def run_confirm(plan: ConfirmPlan, uri: str, options: SearchOptions) -> pd.DataFrame:
    """Train every repeat through the launcher (FIFO, every configuration to the end); return a
    table of the source runs and their repeats' mean and std of each test metric."""
    search_alg, budgets = planned(plan.configs)
    launched = launch(
        plan.session,
        Launch("confirm", options.name or default_name(f"confirm-{plan.experiment}"), search_alg, len(plan.configs),
               budgets, params={"sources": len(plan.sources), "repeats": len(plan.configs) // max(len(plan.sources), 1),
                                "max_epochs": plan.session.settings.max_epochs}),
        options, uri, plan.experiment,
    )
    table = summarize(trial_frame(launched.results), plan.sources)
    log_table(uri, launched.parent_run_id, table, "confirm")
    return table


def summarize(df: pd.DataFrame, sources: pd.DataFrame) -> pd.DataFrame:
    """Per source run: its validation score, and the repeats' mean and std of each test metric."""
    if df.empty or "config/confirm_of" not in df:
        return pd.DataFrame()
    rows = []
    for _, src in sources.iterrows():
        reps = df[df["config/confirm_of"] == src["run_id"]]
        row: dict[str, Any] = {"method": src["method_key"], "source_run": src["run_id"][:8],
                               "source_val_score": round(float(src["metrics.best/val_score"]), 3), "repeats": len(reps)}
        for column in sorted(c for c in df.columns if c.startswith("best/test/")):
            values = reps[column].dropna().astype(float)
            if len(values):
                row[f"{column[len('best/test/'):]} mean"] = round(float(values.mean()), 4)
                row[f"{column[len('best/test/'):]} std"] = round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)
