"""``searcher report``: the tables and figures of a finished study, from its MLflow experiment.

What it reads: every run of the experiment (search parents and earlier reports aside), its
params (the configuration), tags (method, trained task of ``single_task``, status, rerun
source) and ``best/*`` metrics: ``best/val_score`` selects, ``best/test/<task>/<metric>`` (the
test metrics at the best validation epoch) is what is reported, as `002` §3 does.

What it builds, following the protocol of `002` §3 ("train each configuration once, select
the best validation result, retrain it with more seeds, report test metrics"):

- Configurations: the runs of one method (``single_task`` split per trained task) with the
  same params up to the seed (``seed``, ``run_index``, ``repeat``) and device settings; a run tagged
  ``searcher.confirm_of=<run id>`` joins the configuration of that run. Per method the best
  configuration is the one with the highest mean ``best/val_score`` over its own search runs
  (confirmation runs do not take part in the choice, so confirming cannot unselect it); its
  test metrics are reported as mean and sample standard deviation over all its finished runs.
- Δm (`002` eq. 1) and mean rank MR (`002` eq. 2) of the methods' best configurations
  (``analysis.ranking``), against single-task references: the best ``single_task``
  configuration of each task in the experiment, or a JSON file (``--stl``).
- Fixed-weight reruns (``searcher rerun``, tag ``searcher.role=rerun``) beside their source
  SMTO and EW, as `002` Table 2.
- The Pareto front over the test metrics of all finished multi-task runs and the number of
  Pareto-optimal runs per method and per optimizer (`003` Tables 2 and A2, ``analysis.pareto``).
- Figures (``analysis.report_plots``) and the weight trajectories of each SMTO's best run.

Runs that diverged, failed or never finished are listed as such and left out of every mean,
selection and front. Everything is written to a folder and logged as one MLflow run of the
experiment (run name ``report``, tag ``searcher.role=report``) with all files as artifacts.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import pareto, ranking
from analysis.extract import open_client, weight_history
from trainables.errors import ConfigError

#: Statuses of runs whose metrics count (ASHA's stopped runs are finished runs of a smaller budget).
FINISHED = ("completed", "stopped_early")
#: Params that do not change what a configuration is: repeats of it differ only in these.
SEED_PARAMS = ("seed", "run_index", "repeat", "device", "batched_grads")
#: Runs of these roles are not trials (a search's parent run, an earlier report).
SKIPPED_ROLES = ("search", "report")
#: Methods that are references rather than SMTOs: no weight trajectories for them.
NOT_SMTO = ("ew", "fixed", "single_task")
TEST_PREFIX = "best/test/"
REPORT_ROLE = "report"


# ------------------------------------------------------------------ runs and configurations


@dataclass
class RunRecord:
    """What the report needs of one MLflow run."""

    run_id: str
    run_name: str
    method: str
    #: The row it belongs to: the method, ``single_task[<task>]``, ``fixed[<source method>]`` for a rerun.
    label: str
    status: str
    reason: str
    params: dict[str, str]
    optimizer: str
    val_score: float
    #: ``best/test/<task>/<metric>`` as {task: {metric: value}} (NaN where not logged).
    test: dict[str, dict[str, float]]
    rerun_of: str | None = None
    confirm_of: str | None = None
    key: tuple = ()

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def is_single_task(self) -> bool:
        return self.method == "single_task"


@dataclass
class Configuration:
    """The runs of one method with one set of hyperparameters (repeats differ only in the seed)."""

    label: str
    key: tuple
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.finished]

    @property
    def excluded(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.finished]

    @property
    def selection_runs(self) -> list[RunRecord]:
        """The runs the choice of the best configuration looks at: its own search runs, not confirmations."""
        own = [r for r in self.finished if r.confirm_of is None]
        return own or self.finished

    @property
    def val_score(self) -> float:
        scores = [r.val_score for r in self.selection_runs]
        return statistics.fmean(scores) if scores else math.nan

    @property
    def best_run(self) -> RunRecord:
        return max(self.finished, key=lambda r: r.val_score)

    def mean_std(self, task: str, metric: str) -> tuple[float, float]:
        return mean_std([r.test[task][metric] for r in self.finished])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def open_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"no experiment {name!r} in the MLflow store {client.tracking_uri} "
                          f"(experiments: {', '.join(known) or 'none'})")
    return experiment.experiment_id


def load_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every active run of the experiment, oldest first (MLflow pages at 1000)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_status(run: Run) -> tuple[str, str]:
    """(status, reason): the ``searcher.status`` tag, else what MLflow knows of the run."""
    tags = run.data.tags
    status = tags.get("searcher.status")
    reason = tags.get("searcher.diverged_reason", "")
    if status is None:
        mlflow_status = run.info.status
        status = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "failed"}.get(mlflow_status, "running")
        if status != "completed":
            reason = f"no searcher.status tag; MLflow status {mlflow_status}"
    elif status == "running" and not reason:
        reason = "no final status: still running, or its search stopped before it ended"
    if status in FINISHED and not math.isfinite(run.data.metrics.get("best/val_score", math.nan)):
        return "failed", "no best/val_score logged"
    return status, reason


def run_record(run: Run, directions: Mapping[str, Mapping[str, bool]], first_task: str) -> RunRecord:
    tags, params, metrics = run.data.tags, dict(run.data.params), run.data.metrics
    method = tags.get("searcher.method") or params.get("method", "")
    label = method
    rerun_of = None
    if method == "single_task":
        label = f"single_task[{tags.get('searcher.task') or params.get('single_task.task') or first_task}]"
    if tags.get("searcher.role") == "rerun" or tags.get("searcher.source_run"):
        rerun_of = tags.get("searcher.source_run")
        label = f"{method}[{tags.get('searcher.source_method', '?')}]"
    status, reason = run_status(run)
    test = {t: {m: float(metrics.get(f"{TEST_PREFIX}{t}/{m}", math.nan)) for m in ms} for t, ms in directions.items()}
    key = (label, tuple(sorted((k, v) for k, v in params.items() if k not in SEED_PARAMS)))
    return RunRecord(
        run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id[:8], method=method, label=label,
        status=status, reason=reason, params=params, optimizer=params.get("optimizer", "?"),
        val_score=float(metrics.get("best/val_score", math.nan)), test=test, rerun_of=rerun_of,
        confirm_of=tags.get("searcher.confirm_of"), key=key,
    )


def group_configurations(records: Sequence[RunRecord]) -> list[Configuration]:
    """Runs with equal params up to the seed form a configuration; ``confirm_of`` joins the confirmed run's."""
    by_id = {r.run_id: r for r in records}
    groups: dict[tuple, Configuration] = {}
    for record in records:
        target = by_id.get(record.confirm_of or "")
        if target is not None:
            record.key = target.key
        groups.setdefault(record.key, Configuration(record.label, record.key)).runs.append(record)
    return list(groups.values())


def best_configurations(configurations: Sequence[Configuration]) -> dict[str, Configuration]:
    """Per label, the configuration with the highest mean validation score among those with a finished run."""
    best: dict[str, Configuration] = {}
    for config in configurations:
        if not config.finished:
            continue
        current = best.get(config.label)
        if current is None or (config.val_score, len(config.finished)) > (current.val_score, len(current.finished)):
            best[config.label] = config
    return best


def describe_configuration(config: Configuration, varying: set[str]) -> str:
    """The hyperparameters that tell this configuration apart: the method's own and those that vary in the experiment."""
    params = config.runs[0].params
    method = config.runs[0].method
    keys = [k for k in sorted(params) if k not in SEED_PARAMS and (k in varying or k.startswith(method + "."))
            and not (k.startswith("single_task.") or k == "method")]
    return " ".join(f"{k}={params[k]}" for k in keys)


# ------------------------------------------------------------------ problem and references


def run_space_id(run: Run) -> str:
    """Where a run's space comes from: its space file (``searcher.space_file``), else its space's name."""
    tags = run.data.tags
    return tags.get("searcher.space_file") or tags.get("searcher.space") or run.data.params.get("space", "")


def experiment_problem(space_ids: Sequence[str]) -> tuple[str, str, dict[str, dict[str, bool]]]:
    """(spaces, problem name, metric directions) of the runs' spaces (names or files); one problem per report.

    The directions come from the problem (``Problem.higher_is_better``), never from the numbers.
    """
    from spaces import get_space
    from trainables.problems import build_problem

    ids = sorted({s for s in space_ids if s})
    if not ids:
        raise ConfigError("no run of the experiment names its space (tag searcher.space): cannot tell the metrics' directions")
    found: dict[str, tuple[str, dict[str, dict[str, bool]]]] = {}
    for identifier in ids:
        space = get_space(identifier)
        problem = build_problem(space.problem, space.problem_options)
        found[space.name] = (problem.name, problem.higher_is_better())
    names = sorted(found)
    first = names[0]
    for name in names[1:]:
        if found[name][1] != found[first][1]:
            raise ConfigError(f"the experiment mixes spaces with different tasks ({first}: {', '.join(found[first][1])}; "
                              f"{name}: {', '.join(found[name][1])}): report one problem per experiment")
    return ", ".join(names), found[first][0], found[first][1]


def read_stl_file(path: str | Path, directions: Mapping[str, Mapping[str, bool]]) -> dict[str, dict[str, float]]:
    """Single-task references from a JSON file ``{task: {metric: value}}``; anything else is a one-line ConfigError."""
    where = f"single-task reference file {path}"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: not JSON ({str(err).splitlines()[0]})") from None
    expected = "; ".join(f"{t}: {', '.join(ms)}" for t, ms in directions.items())
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{where}: expected {{task: {{metric: value}}}} (tasks and metrics: {expected})")
    for task, values in data.items():
        if task not in directions:
            raise ConfigError(f"{where}: unknown task {task!r} (tasks and metrics: {expected})")
        for metric in values:
            if metric not in directions[task]:
                raise ConfigError(f"{where}: unknown metric {task}/{metric} (tasks and metrics: {expected})")
    try:
        ranking.check_reference(data, directions)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return {t: {m: float(data[t][m]) for m in ms} for t, ms in directions.items()}


def references_from_runs(
    best: Mapping[str, Configuration], directions: Mapping[str, Mapping[str, bool]]
) -> tuple[dict[str, dict[str, float]], dict[str, Configuration], list[str]]:
    """Each task's reference: the test metrics of its best ``single_task`` configuration (mean over seeds).

    Returns (references of the tasks that have one, their configurations, the tasks without one).
    """
    references, used, missing = {}, {}, []
    for task, metrics in directions.items():
        config = best.get(f"single_task[{task}]")
        if config is None:
            missing.append(task)
            continue
        references[task] = {m: config.mean_std(task, m)[0] for m in metrics}
        used[task] = config
    return references, used, missing


# ------------------------------------------------------------------ the report


@dataclass
class Report:
    experiment: str
    experiment_id: str
    uri: str
    space: str
    problem: str
    directions: dict[str, dict[str, bool]]
    records: list[RunRecord]
    best: dict[str, Configuration]
    references: dict[str, dict[str, float]] | None
    reference_source: str
    summary: pd.DataFrame
    fixed: pd.DataFrame
    pareto_runs: pd.DataFrame
    pareto_methods: pd.DataFrame
    pareto_optimizers: pd.DataFrame
    excluded: pd.DataFrame
    weights: dict[str, dict[str, Any]]
    notes: list[str]

    @property
    def columns(self) -> list[str]:
        return [f"{t}/{m}" for t, ms in self.directions.items() for m in ms]

    @property
    def column_directions(self) -> list[bool]:
        return [h for ms in self.directions.values() for h in ms.values()]


def build_report(uri: str, experiment: str, stl: str | Path | None = None) -> Report:
    """Read the experiment and compute every table of the report (no file is written)."""
    client = open_client(uri)
    experiment_id = open_experiment(client, experiment)
    runs = [r for r in load_runs(client, experiment_id) if r.data.tags.get("searcher.role") not in SKIPPED_ROLES]
    if not runs:
        raise ConfigError(f"experiment {experiment!r} has no runs to report (train or tune into it first)")
    space, problem, directions = experiment_problem([run_space_id(r) for r in runs])
    first_task = next(iter(directions))
    records = [run_record(r, directions, first_task) for r in runs]
    configurations = group_configurations(records)
    best = best_configurations(configurations)
    notes: list[str] = []

    if stl is not None:
        references: dict[str, dict[str, float]] | None = read_stl_file(stl, directions)
        reference_source = f"file {stl}"
    else:
        found, used, missing = references_from_runs(best, directions)
        if missing:
            references = None
            reference_source = (f"none: no finished single_task run for task(s) {', '.join(missing)} "
                                "(train single_task on them or pass --stl FILE); Δm is left out")
        else:
            references = found
            reference_source = "the best single_task configuration of each task in this experiment (" + ", ".join(
                f"{t}: {c.best_run.run_name}, {len(c.finished)} seed(s)" for t, c in used.items()) + ")"
            try:
                ranking.check_reference(references, directions)
            except ConfigError as err:
                references = None
                reference_source += f"; unusable ({err}), Δm is left out"

    varying = _varying_params(records)
    summary = summary_table(best, directions, references, varying)
    fixed = fixed_weights_table(client, configurations, best, directions, references, summary)
    pareto_runs, by_method, by_optimizer = pareto_tables(records, directions)
    excluded = excluded_table(records)
    weights = smto_weight_histories(client, best, notes)
    return Report(experiment, experiment_id, uri, space, problem, directions, records, best, references,
                  reference_source, summary, fixed, pareto_runs, by_method, by_optimizer, excluded, weights, notes)


def _varying_params(records: Sequence[RunRecord]) -> set[str]:
    values: dict[str, set[str]] = {}
    for r in records:
        for k, v in r.params.items():
            values.setdefault(k, set()).add(v)
    return {k for k, v in values.items() if len(v) > 1 and "." not in k and k not in SEED_PARAMS}


def run_delta_m(record: RunRecord, references: Mapping[str, Mapping[str, float]],
                directions: Mapping[str, Mapping[str, bool]]) -> float:
    return ranking.delta_m_table({record.run_id: record.test}, references, directions)[record.run_id]


def summary_table(best: Mapping[str, Configuration], directions: Mapping[str, Mapping[str, bool]],
                  references: Mapping[str, Mapping[str, float]] | None, varying: set[str]) -> pd.DataFrame:
    """One row per method's best configuration: test metrics mean/std over seeds, Δm, MR.

    Multi-task methods first (by Δm, else by MR), then the single-task rows, which show only
    the metrics of the task they trained. Fixed-weight reruns have their own table.
    """
    multi = {label: c for label, c in best.items() if not c.runs[0].is_single_task and c.runs[0].rerun_of is None}
    single = {label: c for label, c in best.items() if c.runs[0].is_single_task}
    table = {label: {t: {m: c.mean_std(t, m)[0] for m in ms} for t, ms in directions.items()} for label, c in multi.items()}
    ranks = ranking.mean_rank(table, directions) if table else {}
    rows = []
    for label, config in [*multi.items(), *single.items()]:
        trained = label[len("single_task["):-1] if config.runs[0].is_single_task else None
        val, val_std = mean_std([r.val_score for r in config.finished])
        row: dict[str, Any] = {
            "method": label, "kind": "single-task" if trained else "multi-task",
            "configuration": describe_configuration(config, varying), "seeds": len(config.finished),
            "excluded_runs": len(config.excluded), "val_score": val, "val_score_std": val_std,
        }
        for task, metrics in directions.items():
            for metric in metrics:
                mean, std = config.mean_std(task, metric) if trained in (None, task) else (math.nan, math.nan)
                row[f"{task}/{metric}"], row[f"{task}/{metric} std"] = mean, std
        if references is not None and not trained:
            row["delta_m"], row["delta_m_std"] = mean_std([run_delta_m(r, references, directions) for r in config.finished])
        else:
            row["delta_m"], row["delta_m_std"] = math.nan, math.nan
        row["mean_rank"] = ranks.get(label, math.nan)
        row["best_run_id"] = config.best_run.run_id
        row["run_ids"] = " ".join(r.run_id for r in config.finished)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = frame["kind"].eq("single-task").astype(int)
    frame = frame.assign(_kind=order, _dm=-frame["delta_m"].fillna(-math.inf), _mr=frame["mean_rank"].fillna(math.inf))
    return frame.sort_values(["_kind", "_dm", "_mr", "method"]).drop(columns=["_kind", "_dm", "_mr"]).reset_index(drop=True)


def fixed_weights_table(client: MlflowClient, configurations: Sequence[Configuration],
                        best: Mapping[str, Configuration], directions: Mapping[str, Mapping[str, bool]],
                        references: Mapping[str, Mapping[str, float]] | None, summary: pd.DataFrame) -> pd.DataFrame:
    """`002` Table 2: each set of fixed-weight reruns beside its source SMTO run's configuration and the best EW."""
    reruns = [c for c in configurations if c.runs[0].rerun_of is not None]
    if not reruns:
        return pd.DataFrame()
    config_of = {r.run_id: c for c in configurations for r in c.runs}

    def dm(config_runs: Sequence[RunRecord]) -> tuple[float, float]:
        if references is None:
            return math.nan, math.nan
        return mean_std([run_delta_m(r, references, directions) for r in config_runs if r.finished])

    ew = best.get("ew")
    multi = summary[summary["kind"] == "multi-task"] if not summary.empty else summary
    smtos = multi[~multi["method"].isin(["ew", "fixed"])] if not multi.empty else multi
    top = smtos.sort_values("delta_m", ascending=False).iloc[0] if not smtos.empty and smtos["delta_m"].notna().any() else None
    rows = []
    for config in reruns:
        first = config.runs[0]
        source_id = first.rerun_of or ""
        source_config = config_of.get(source_id)
        if source_config is not None:
            source_runs = source_config.finished
            source_name = next(r.run_name for r in source_config.runs if r.run_id == source_id)
        else:  # the source lives in another experiment: its own run only
            try:
                run = client.get_run(source_id)
            except MlflowException:  # a deleted source leaves the row without it
                run = None
            source_runs = [run_record(run, directions, next(iter(directions)))] if run is not None else []
            source_runs = [r for r in source_runs if r.finished]
            source_name = run.info.run_name if run is not None else "?"
        fixed_dm, fixed_std = dm(config.runs)
        source_dm, source_std = dm(source_runs)
        ew_dm, ew_std = dm(ew.runs) if ew is not None else (math.nan, math.nan)
        row: dict[str, Any] = {
            "source_method": config.label[len(first.method) + 1:-1], "source_run_id": source_id, "source_run": source_name,
            "weights": first.params.get("fixed.weights", ""), "seeds": len(config.finished),
            "excluded_runs": len(config.excluded),
            "ew_delta_m": ew_dm, "ew_delta_m_std": ew_std,
            "fixed_delta_m": fixed_dm, "fixed_delta_m_std": fixed_std,
            "source_delta_m": source_dm, "source_delta_m_std": source_std, "source_seeds": len(source_runs),
            "best_smto": top["method"] if top is not None else "",
            "best_smto_delta_m": top["delta_m"] if top is not None else math.nan,
        }
        for task, metrics in directions.items():
            for metric in metrics:
                row[f"{task}/{metric}"], row[f"{task}/{metric} std"] = config.mean_std(task, metric)
        row["run_ids"] = " ".join(r.run_id for r in config.finished)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_tables(records: Sequence[RunRecord],
                  directions: Mapping[str, Mapping[str, bool]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The finished multi-task runs with their test metrics and whether they are on the front; counts per method and optimizer.

    Single-task runs are left out: their other heads are untrained, so those metrics mean nothing.
    """
    columns = [f"{t}/{m}" for t, ms in directions.items() for m in ms]
    hib = [h for ms in directions.values() for h in ms.values()]
    runs = [r for r in records if r.finished and not r.is_single_task]
    frame = pd.DataFrame(
        [{"run_id": r.run_id, "run_name": r.run_name, "label": r.label, "optimizer": r.optimizer, "val_score": r.val_score,
          **{f"{t}/{m}": r.test[t][m] for t, ms in directions.items() for m in ms}} for r in runs],
        columns=["run_id", "run_name", "label", "optimizer", "val_score", *columns],
    )
    values = frame[columns].to_numpy(dtype=float).reshape(len(frame), len(columns))
    frame["comparable"] = np.isfinite(values).all(axis=1)
    frame["pareto_optimal"] = pareto.non_dominated(values, hib)
    valid = frame[frame["comparable"]]
    by_method = pareto.pareto_counts(valid["label"].tolist(), valid["pareto_optimal"].to_numpy(bool))
    by_optimizer = pareto.optimizer_counts(valid[columns].to_numpy(dtype=float), valid["optimizer"].tolist(), hib)
    return frame, by_method.rename(columns={"group": "method"}), by_optimizer


def excluded_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    rows = [{"run": r.run_name, "run_id": r.run_id, "method": r.label, "status": r.status, "reason": r.reason}
            for r in records if not r.finished]
    return pd.DataFrame(rows, columns=["run", "run_id", "method", "status", "reason"])


def smto_weight_histories(client: MlflowClient, best: Mapping[str, Configuration], notes: list[str]) -> dict[str, dict[str, Any]]:
    """The per-epoch ``weight/<task>`` of each SMTO's best run (the best configuration's best seed)."""
    out: dict[str, dict[str, Any]] = {}
    for label, config in best.items():
        first = config.runs[0]
        if first.method in NOT_SMTO or first.rerun_of is not None:
            continue
        run = config.best_run
        try:
            tasks, epochs, rows = weight_history(client, client.get_run(run.run_id))
        except ConfigError as err:
            notes.append(f"no weight trajectory for {label}: {err}")
            continue
        out[label] = {"run_name": run.run_name, "run_id": run.run_id, "tasks": tasks, "epochs": epochs, "rows": rows}
    return out


# ------------------------------------------------------------------ output: Markdown, CSV, figures


def fmt(value: Any, std: Any = math.nan) -> str:
    """4 significant digits as `002`'s tables; '-' for a missing value; '± std' where there is one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not isinstance(value, (int, float, np.floating, np.integer)):
        return str(value)
    text = f"{float(value):.4g}"
    if std is not None and isinstance(std, (int, float, np.floating)) and not math.isnan(float(std)):
        text += f" ± {float(std):.2g}"
    return text


def short_weights(weights: str) -> str:
    """``f1=0.22507135987480903,f2=0.77...`` -> ``f1=0.2251, f2=0.7749``."""
    parts = []
    for item in str(weights).split(","):
        task, _, value = item.partition("=")
        try:
            parts.append(f"{task.strip()}={float(value):.4g}")
        except ValueError:
            parts.append(item.strip())
    return ", ".join(parts)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(report: Report, figures: Mapping[str, str] | None = None) -> str:
    """The whole report as Markdown (what ``searcher report`` prints and logs as ``report.md``)."""
    figures = figures or {}
    arrows = {c: "↑" if h else "↓" for c, h in zip(report.columns, report.column_directions)}
    counts = pd.Series([r.status for r in report.records]).value_counts()
    out = [f"# Report: experiment `{report.experiment}`", ""]
    out.append(f"Space {report.space} (problem {report.problem}; tasks {', '.join(report.directions)}); "
               f"{len(report.records)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")
    out.append("")
    out.append(f"Single-task references: {report.reference_source}.")
    if report.references is not None:
        out.append("Reference values: " + ", ".join(f"{t}/{m} = {fmt(v)}" for t, ms in report.references.items()
                                                    for m, v in ms.items()) + ".")
    out += ["", "Test metrics at each run's best validation epoch; mean ± sample std over the seeds of the best "
            "validation configuration of each method. Δm: `002` eq. 1 (%, higher is better); MR: `002` eq. 2 "
            "(mean rank among the multi-task methods, lower is better). Diverged and failed runs are excluded "
            "from every mean (listed at the end).", ""]

    out += ["## Best configuration per method", ""]
    if report.summary.empty:
        out.append("No finished run.")
    else:
        headers = (["method", "configuration", "seeds", "val score"] + [f"{c} {arrows[c]}" for c in report.columns]
                   + ["Δm % ↑", "MR ↓"])
        rows = []
        for _, r in report.summary.iterrows():
            rows.append([r["method"], r["configuration"] or "-", r["seeds"], fmt(r["val_score"], r["val_score_std"])]
                        + [fmt(r[c], r[f"{c} std"]) for c in report.columns]
                        + [fmt(r["delta_m"], r["delta_m_std"]), fmt(r["mean_rank"])])
        out.append(markdown_table(headers, rows))
    out.append("")

    if not report.fixed.empty:
        out += ["## Fixed weights from SMTOs (`002` §3.5, Table 2)", "",
                "Δm of the fixed-weight reruns beside their source SMTO's configuration and the best EW configuration.", ""]
        headers = ["source", "source run", "weights", "seeds", "EW Δm %", "fixed weights Δm %", "source SMTO Δm %",
                   "best SMTO"] + [f"{c} {arrows[c]}" for c in report.columns]
        rows = [[r["source_method"], r["source_run"], short_weights(r["weights"]), r["seeds"],
                 fmt(r["ew_delta_m"], r["ew_delta_m_std"]),
                 fmt(r["fixed_delta_m"], r["fixed_delta_m_std"]), fmt(r["source_delta_m"], r["source_delta_m_std"]),
                 f"{r['best_smto']} ({fmt(r['best_smto_delta_m'])})" if r["best_smto"] else "-"]
                + [fmt(r[c], r[f"{c} std"]) for c in report.columns] for _, r in report.fixed.iterrows()]
        out += [markdown_table(headers, rows), ""]

    front = report.pareto_runs[report.pareto_runs["pareto_optimal"]] if not report.pareto_runs.empty else report.pareto_runs
    valid = int(report.pareto_runs["comparable"].sum()) if not report.pareto_runs.empty else 0
    out += ["## Pareto front (`003` Tables 2 and A2)", "",
            f"Over the test metrics ({', '.join(f'{c} {arrows[c]}' for c in report.columns)}) of the {valid} finished "
            f"multi-task runs (single-task runs left out); Pareto-optimal: {len(front)}.", ""]
    if not report.pareto_methods.empty:
        out += [markdown_table(["method", "runs", "Pareto-optimal"],
                               report.pareto_methods[["method", "runs", "pareto_optimal"]].values.tolist()), ""]
        out += [markdown_table(["optimizer", "runs", "PO (full)", "PO w.r.t. other optimizers"],
                               report.pareto_optimizers.values.tolist()), ""]
        out += [markdown_table(["run", "method", "optimizer"] + [f"{c} {arrows[c]}" for c in report.columns],
                               [[r["run_name"], r["label"], r["optimizer"]] + [fmt(r[c]) for c in report.columns]
                                for _, r in front.iterrows()]), ""]
    if "pareto" in figures:
        out += [f"![Pareto front]({figures['pareto']})", ""]
    if report.weights:
        out += ["## Weight trajectories", "", "Per-epoch task weights (normalized to sum 1) of each SMTO's best run: "
                + ", ".join(f"{m} ({h['run_name']})" for m, h in report.weights.items()) + ".", ""]
        if "weights" in figures:
            out += [f"![weight trajectories]({figures['weights']})", ""]
    for note in report.notes:
        out.append(f"- {note}")
    if report.notes:
        out.append("")

    out += ["## Runs excluded from the means", ""]
    if report.excluded.empty:
        out.append("None: every run finished.")
    else:
        out.append(markdown_table(["run", "run id", "method", "status", "reason"],
                                  [[v or "-" for v in row] for row in report.excluded.values.tolist()]))
    return "\n".join(out) + "\n"


@dataclass
class WrittenReport:
    directory: Path
    files: list[Path]
    markdown: str


def write_report(report: Report, out: str | Path) -> WrittenReport:
    """Write the CSV tables, the figures and ``report.md`` into ``out``."""
    from analysis import report_plots

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def csv(frame: pd.DataFrame, name: str) -> None:
        path = directory / name
        frame.to_csv(path, index=False)
        files.append(path)

    csv(report.summary, "summary.csv")
    if not report.fixed.empty:
        csv(report.fixed, "fixed_weights.csv")
    csv(report.pareto_runs, "pareto_runs.csv")
    csv(report.pareto_methods, "pareto_by_method.csv")
    csv(report.pareto_optimizers, "pareto_by_optimizer.csv")
    csv(pd.DataFrame([{"run": r.run_name, "run_id": r.run_id, "method": r.label, "status": r.status,
                       "optimizer": r.optimizer, "val_score": r.val_score,
                       **{c: r.test[c.split('/', 1)[0]][c.split('/', 1)[1]] for c in report.columns}}
                      for r in report.records]), "runs.csv")
    csv(report.excluded, "excluded_runs.csv")

    figures: dict[str, str] = {}
    valid = report.pareto_runs[report.pareto_runs["comparable"]] if not report.pareto_runs.empty else report.pareto_runs
    if len(valid):
        title = f"{report.experiment}: {len(valid)} finished multi-task runs, {int(valid['pareto_optimal'].sum())} Pareto-optimal"
        if len(report.columns) == 2:
            refs = ({c: report.references[c.split("/", 1)[0]][c.split("/", 1)[1]] for c in report.columns}
                    if report.references else {})
            made = report_plots.pareto_scatter(valid, report.columns, report.column_directions, refs, title,
                                               directory / "pareto.png", directory / "pareto.html")
        else:
            made = report_plots.parallel_coordinates(valid, report.columns, report.column_directions, title,
                                                     directory / "pareto.png", directory / "pareto.html")
        files += list(made)
        figures["pareto"] = "pareto.png"
    if report.weights:
        made = report_plots.weight_trajectories(report.weights, f"{report.experiment}: task weights of each SMTO's best run",
                                                directory / "weights.png", directory / "weights.html")
        files += list(made)
        figures["weights"] = "weights.png"
    text = to_markdown(report, figures)
    path = directory / "report.md"
    path.write_text(text)
    files.append(path)
    return WrittenReport(directory, files, text)


def metric_key(label: str) -> str:
    """A label as an MLflow metric-name part (``single_task[f1]`` -> ``single_task_f1_``)."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in label)


def log_report(report: Report, written: WrittenReport) -> str:
    """Log the report as a run ``report`` of the experiment (tag ``searcher.role=report``); return its id."""
    client = MlflowClient(report.uri)
    tags = {"searcher.role": REPORT_ROLE, "searcher.space": report.space.split(", ")[0], "searcher.problem": report.problem,
            "searcher.references": report.reference_source[:5000]}
    run = client.create_run(report.experiment_id, run_name="report", tags=tags)
    run_id = run.info.run_id
    try:
        params = {"experiment": report.experiment, "runs": len(report.records),
                  "finished_runs": sum(r.finished for r in report.records),
                  "references": "file" if report.reference_source.startswith("file") else
                  ("single_task runs" if report.references is not None else "none")}
        now = int(time.time() * 1000)
        metrics = []
        for _, row in report.summary.iterrows():
            for name, column in (("delta_m", "delta_m"), ("mean_rank", "mean_rank")):
                if pd.notna(row[column]):
                    metrics.append(Metric(f"{name}/{metric_key(row['method'])}", float(row[column]), now, 0))
        for _, row in report.pareto_methods.iterrows():
            metrics.append(Metric(f"pareto_optimal/{metric_key(row['method'])}", float(row["pareto_optimal"]), now, 0))
        client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        for path in written.files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def run_report(uri: str, experiment: str, stl: str | Path | None = None,
               out: str | Path | None = None) -> tuple[Report, WrittenReport, str]:
    """``searcher report``: build, write to ``out`` (default ``report-<experiment>/``), log to MLflow."""
    report = build_report(uri, experiment, stl)
    written = write_report(report, out or f"report-{experiment}")
    return report, written, log_report(report, written)
