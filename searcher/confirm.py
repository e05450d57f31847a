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

import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
from mlflow.tracking import MlflowClient

from searcher.launch import Launch, SearchOptions, default_name, launch, log_table, planned
from searcher.run_record import RunRecord, load_records
from searcher.search import trial_frame
from searcher.session import Session, data_source, open_session
from trainables.config import COMMON, repeat_seed
from trainables.errors import ConfigError


@dataclass
class ConfirmPlan:
    session: Session
    experiment: str
    #: The selected source runs, by row label then validation score (best first).
    sources: list[RunRecord]
    configs: list[dict[str, Any]]


def select_best(records: Sequence[RunRecord], top: int) -> list[RunRecord]:
    """Per row label (per task for ``single_task``), the ``top`` finished search runs by
    best/val_score: not reruns, not confirmations (a confirmation never becomes a source)."""
    eligible = [r for r in records if r.is_training and not r.is_rerun and r.confirm_of is None and r.mode != "confirm"
                and r.finished and math.isfinite(r.val_score)]
    by_label: dict[str, list[RunRecord]] = {}
    for record in sorted(eligible, key=lambda r: -r.val_score):
        by_label.setdefault(record.label, []).append(record)
    return [r for label in sorted(by_label) for r in by_label[label][:top]]


def source_config(record: RunRecord, problem_keys: set[str]) -> dict[str, Any]:
    """The trial config of a source run: its method, common hyperparameters, problem options
    and the method's own ``<method>.<param>`` values, as logged."""
    keep = set(COMMON) | problem_keys | {"method"}
    return {k: v for k, v in record.params.items() if k in keep or k.startswith(record.method + ".")}


def plan_confirm(uri: str, experiment: str, top: int, repeats: int, data_dir: str | None) -> ConfirmPlan:
    """Read the experiment, pick the best configurations and build the repeat configs."""
    from spaces import get_space
    from trainables.problems import build_problem

    if top < 1 or repeats < 1:
        raise ConfigError(f"--top and --repeats must be at least 1, got {top} and {repeats}")
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(f"no MLflow experiment named {experiment!r} in {uri}")
    best = select_best(load_records(client, found.experiment_id), top)
    if not best:
        raise ConfigError(f"experiment {experiment!r} has no finished training runs to confirm")
    spaces = {r.space for r in best}
    if len(spaces) != 1:
        raise ConfigError(f"experiment {experiment!r} mixes spaces {sorted(spaces)}; confirm one space at a time")
    space_name = spaces.pop()
    space = get_space(space_name)
    problem = build_problem(space.problem, space.problem_options)
    problem_keys = set(problem.defaults) | set(space.constants)
    epochs = {int(float(r.max_epochs)) for r in best if r.max_epochs != "?"}
    if len(epochs) > 1:
        raise ConfigError(f"the best runs of experiment {experiment!r} were trained with different epoch budgets "
                          f"({', '.join(map(str, sorted(epochs)))}): their repeats would not be comparable; "
                          "report them apart, or confirm an experiment of one budget")
    sources = {r.data_source for r in best if r.data_source}
    pin = problem.source_option(next(iter(sources))) if len(sources) == 1 else {}
    pinned = [f"{k}={v}" for k, v in pin.items()]  # train on the data the search used
    methods = sorted({r.method for r in best})
    session = open_session(space_name, methods, pinned, data_dir, epochs.pop() if epochs else None)
    if sources and data_source(session) not in sources:
        raise ConfigError(f"the runs trained on {sorted(sources)} data, a confirmation here would use {data_source(session)}")
    configs = []
    for record in best:
        base = source_config(record, problem_keys)
        seed = int(float(record.params.get("seed", 0) or 0))
        for r in range(repeats):
            configs.append({**base, "seed": repeat_seed(seed, r), "confirm_of": record.run_id, "repeat": r})
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


def summarize(df: pd.DataFrame, sources: Sequence[RunRecord]) -> pd.DataFrame:
    """Per source run: its validation score, and the repeats' mean and std of each test metric."""
    if df.empty or "config/confirm_of" not in df:
        return pd.DataFrame()
    rows = []
    for src in sources:
        reps = df[df["config/confirm_of"] == src.run_id]
        row: dict[str, Any] = {"method": src.label, "source_run": src.run_id[:8],
                               "source_val_score": round(src.val_score, 3), "repeats": len(reps)}
        for column in sorted(c for c in df.columns if c.startswith("best/test/")):
            values = reps[column].dropna().astype(float)
            if len(values):
                row[f"{column[len('best/test/'):]} mean"] = round(float(values.mean()), 4)
                row[f"{column[len('best/test/'):]} std"] = round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)
