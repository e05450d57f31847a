"""``searcher rerun``: retrain a run's configuration with fixed weights (`002` §3.5).

`002` §3.5: "To extract and train with the fixed weights, we used the optimal hyperparameter
configuration from the respective SMTO [...] The model is trained the same amount of times as
their SMTO counterpart." So a rerun takes the source run's common hyperparameters and problem
options, swaps its method for ``fixed`` with the extracted weights, and trains K times through
the launcher (``searcher.launch``, as ``tune`` and ``confirm``), one MLflow run each.

Seeds (``trainables.config.repeat_seed``, the scheme ``confirm`` shares): rerun k (k = 0..K-1)
keeps the source's run index and has base seed ``source seed + 100000 * (k + 1)`` (``--seed``
replaces the source seed), so its seed is never that of any trial of the search, is the same
on every call (a rerun can be repeated exactly), and equals the seed of the source's k-th
confirmation repeat: the fixed weights and the method they came from are compared on the same
initializations and data orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from analysis.extract import extract_from_run, get_run, open_client, read_weights_file, run_method, run_space
from analysis.weights import DEFAULT_BETA
from searcher.launch import Launch, SearchOptions, default_name, launch, planned
from searcher.run_record import Role, Tag
from searcher.search import error_line
from searcher.session import Session, data_source, open_session, run_config
from trainables.config import repeat_seed, run_seed
from trainables.errors import ConfigError
from trainables.problems.base import Problem

#: Common hyperparameters taken from the source run (the method's own are replaced by ``fixed``).
CARRIED_COMMON = ("lr", "dropout", "optimizer", "weight_decay", "momentum", "batch_size", "lr_decay", "lr_step_every",
                  "lr_schedule", "plateau_factor", "plateau_patience", "plateau_min_lr")
#: Where the weights a rerun used go among its artifacts.
WEIGHTS_ARTIFACT = "fixed_weights.json"


@dataclass
class Rerun:
    """What the reruns of one source run train with."""

    source: Run
    method: str
    experiment: str
    weights: list[float]
    weights_record: dict[str, Any]
    session: Session
    #: The base seed whose repeats the reruns train with (the source's, or ``--seed``).
    seed: int


def source_params(run: Run, problem_keys: set[str], problem: Problem) -> dict[str, str]:
    """The source's common hyperparameters and problem options (``KEY -> value`` as logged),
    with the problem's data-source option pinned to the data the source run used ('auto' could
    pick other data here)."""
    params = run.data.params
    keys = list(CARRIED_COMMON) + [k for k in sorted(problem_keys) if k not in CARRIED_COMMON]
    out = {k: params[k] for k in keys if k in params}
    if params.get("data_source"):
        out.update(problem.source_option(params["data_source"]))
    return out


def plan_rerun(
    uri: str,
    run_id: str,
    weights_file: str | Path | None = None,
    beta: float | None = None,
    max_epochs: int | None = None,
    experiment: str | None = None,
    data_dir: str | None = None,
    seed: int | None = None,
    per_epoch: str | None = None,
    ema: str | None = None,
) -> Rerun:
    """Read the source run, the weights (from the file or extracted now) and open the session."""
    from spaces import get_space
    from trainables.problems import build_problem

    if weights_file is not None and (beta, per_epoch, ema) != (None, None, None):
        raise ConfigError("--beta, --per-epoch and --ema are for weights extracted now; the weights file already fixes them")
    client = open_client(uri)
    run = get_run(client, run_id)
    space_name = run_space(run)
    space = get_space(space_name)
    problem = build_problem(space.problem, space.problem_options)
    if weights_file is not None:
        weights, record = read_weights_file(weights_file, problem.task_names)
    else:
        record = extract_from_run(client, run_id, DEFAULT_BETA if beta is None else beta, None, per_epoch or "mean",
                                  ema or "paper")
        weights = [record["weights"][t] for t in problem.task_names]
    params = source_params(run, set(problem.defaults) | set(space.constants), problem)
    params["weights"] = ",".join(f"{t}={w!r}" for t, w in zip(problem.task_names, weights))
    if max_epochs is None and run.data.params.get("max_epochs"):
        max_epochs = int(run.data.params["max_epochs"])
    session = open_session(space_name, ["fixed"], [f"{k}={v}" for k, v in params.items()], data_dir, max_epochs)
    source_data = run.data.params.get("data_source")
    if source_data and source_data != data_source(session):
        raise ConfigError(f"run {run_id} trained on {source_data} data, this rerun would use {data_source(session)}")
    if seed is None:
        seed = int(float(run.data.params.get("seed", 0) or 0))
    experiment = experiment or _experiment_name(client, run)
    return Rerun(run, run_method(run), experiment, weights, record, session, seed)


def rerun_tags(plan: Rerun) -> dict[str, str]:
    record = plan.weights_record
    tags = {
        Tag.ROLE: Role.RERUN,
        Tag.SOURCE_RUN: plan.source.info.run_id,
        Tag.SOURCE_METHOD: plan.method,
    }
    for key, tag in (("source_run_id", Tag.WEIGHTS_RUN), ("method", Tag.WEIGHTS_METHOD), ("beta", Tag.WEIGHTS_BETA),
                     ("epoch", Tag.WEIGHTS_EPOCH), ("per_epoch_statistic", Tag.WEIGHTS_PER_EPOCH),
                     ("ema_kind", Tag.WEIGHTS_EMA)):
        if record.get(key) not in (None, ""):
            tags[tag] = str(record[key])
    return tags


def rerun_configs(plan: Rerun, repeats: int) -> list[dict[str, Any]]:
    """The K planned configurations: ``fixed`` with the source's hyperparameters, run index and
    repeat seeds (repeat k: ``repeat_seed(seed, k)``)."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {repeats}")
    index = int(float(plan.source.data.params.get("run_index", 0) or 0))
    return [{**run_config(plan.session, "fixed", repeat_seed(plan.seed, k)), "run_index": index, "repeat": k}
            for k in range(repeats)]


def run_reruns(
    plan: Rerun, uri: str, repeats: int, options: SearchOptions | None = None
) -> list[tuple[str | None, dict[str, Any]]]:
    """Train ``repeats`` runs through the launcher, each with the weights used as an artifact;
    return (MLflow run id, last reported metrics and the ``seed`` it trained with) per repeat, in
    repeat order."""
    options = options or SearchOptions()
    configs = rerun_configs(plan, repeats)
    search_alg, budgets = planned(configs)
    launched = launch(
        plan.session,
        Launch("rerun", options.name or default_name(f"rerun-{plan.source.info.run_id[:8]}"), search_alg, len(configs),
               budgets, params={"source_run": plan.source.info.run_id, "repeats": repeats,
                                "max_epochs": plan.session.settings.max_epochs},
               run_tags=rerun_tags(plan), run_artifacts={WEIGHTS_ARTIFACT: plan.weights_record}),
        options, uri, plan.experiment,
    )
    run_ids = launched.run_ids()
    done = []
    for result in sorted(launched.results, key=lambda r: int((r.config or {}).get("repeat", 0))):
        metrics = dict(result.metrics or {})
        if result.error:
            metrics["error"] = error_line(result.error)
        metrics["seed"] = run_seed(result.config)  # the seed it trained with (base seed + run index)
        done.append((run_ids.get(str(metrics.get("trial_id"))), metrics))
    return done


def _experiment_name(client: MlflowClient, run: Run) -> str:
    return client.get_experiment(run.info.experiment_id).name
