"""``searcher report``: the tables of a finished study, from its MLflow experiment, that cannot mislead.

What it reads: every run of the experiment through ``searcher.run_record`` (the one schema of
a run): its params (the configuration), tags (method, trained task of ``single_task``, status,
rerun and weights source) and ``best/*`` metrics: ``best/val_score`` selects,
``best/test/<task>/<metric>`` (the test metrics at the best validation epoch) is what is
reported, as `002` §3 does. The launches' parent runs say which methods were requested and
with what budget.

What it builds, following the protocol of `002` §3 ("train each configuration once, select
the best validation result, retrain it with more seeds, report test metrics"), and the fairness
rule of SPEC ("references come from runs trained on the same problem options, data, split and
epoch budget; every verdict carries its number of seeds and an interval"):

- Comparable groups: runs are grouped by ``run_record.Comparability`` (problem, its options,
  data source, max epochs). Every table is per group and says which; single-task references
  are taken only from the same group, and a reference from another group (or a ``--stl`` file
  measured on something else) is refused with a line saying why.
- Configurations: the runs of one row (a method; ``single_task`` per trained task; reruns per
  weights source) with the same params up to the seed; a run tagged ``searcher.confirm_of``
  joins the configuration of that run. Per row the best configuration is the one with the
  highest mean ``best/val_score`` over its own search runs (confirmations do not take part in
  the choice); its numbers are over all its finished runs: mean, std, 95% t-interval, seeds
  (``analysis.uncertainty``), a Welch test against EW's best configuration, and rows with
  fewer than 3 seeds flagged.
- Δm (`002` eq. 1) and MR (`002` eq. 2, with its spread over seed resamples).
- Budget curves (Dodge et al. 2019, ``analysis.budget``): the expected best validation score
  and the test Δm of that best after n trials, per method.
- Every requested method, with its trial counts (finished, pruned, diverged, failed) and cost
  (seconds per epoch, compute of its runs), and why it has no result where it has none.
- Fixed-weight reruns beside their source SMTO and EW (`002` Table 2), with where the weights
  came from (run, method, β, epoch) and the configuration they trained with.
- The Pareto front over configurations (`003` Tables 2 and A2, ``analysis.pareto``): seed
  repeats averaged into one point, runs the scheduler stopped early left out (counted apart).
- Views (issue 14): the gradient diagnostics of each row's best configuration over epochs
  (``analysis.diagnostic_curves``, `003` Figure 3, `004` Figures 3-5), their Ranking Similarity
  with test performance (``analysis.ranking_similarity``, `004` eq. 9), and each method's best
  configuration per optimizer (``analysis.optimizer_view``, `003` §4.1).

Runs that diverged, failed or never finished are listed as such and left out of every mean,
selection and front. Writing the files and logging them to MLflow: ``analysis.report_files``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import budget, diagnostic_curves, pareto, ranking, ranking_similarity, uncertainty
from analysis.diagnostic_curves import DiagnosticCurves
from analysis.extract import open_client, weight_history
from analysis.uncertainty import Summary
from searcher.run_record import (SEED_PARAMS, STL, Comparability, Role, RunRecord, Status, arm_key, from_run, load_records,
                                 trainings)
from trainables.errors import ConfigError

#: Methods that are references rather than SMTOs: no weight trajectories for them.
NOT_SMTO = ("ew", "fixed", STL)
#: The method every verdict compares with (`002`'s unitary scalarization).
BASELINE = "ew"


# ------------------------------------------------------------------ configurations


@dataclass
class Configuration:
    """The runs of one row with one set of hyperparameters (repeats differ only in the seed)."""

    label: str
    key: tuple
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.finished]

    @property
    def completed(self) -> list[RunRecord]:
        """The runs trained to the last epoch (what a Pareto point averages)."""
        return [r for r in self.runs if r.completed]

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

    def values(self, task: str, metric: str, runs: Sequence[RunRecord] | None = None) -> list[float]:
        return [r.test(task, metric) for r in (self.finished if runs is None else runs)]

    def mean_std(self, task: str, metric: str) -> tuple[float, float]:
        return mean_std(self.values(task, metric))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def group_configurations(records: Sequence[RunRecord]) -> list[Configuration]:
    """Runs with equal params up to the seed form a configuration; ``confirm_of`` joins the confirmed run's."""
    keys = {r.run_id: r.configuration_key() for r in records}
    groups: dict[tuple, Configuration] = {}
    for record in records:
        key = keys.get(record.confirm_of or "", keys[record.run_id])
        groups.setdefault(key, Configuration(record.label, key)).runs.append(record)
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
    params = config.first.params
    method = config.first.method
    keys = [k for k in sorted(params) if k not in SEED_PARAMS and (k in varying or k.startswith(method + "."))
            and not (k.startswith(STL + ".") or k == "method")]
    return " ".join(f"{k}={short_value(params[k])}" for k in keys)


def short_value(value: str) -> str:
    """A logged float to 4 significant digits (``0.0074471449040830725`` -> ``0.007447``); other values as logged."""
    try:
        number = float(value)
    except ValueError:
        return value
    if "." not in value and "e" not in value.lower():
        return value  # an integer
    return f"{number:.4g}"


def varying_params(records: Sequence[RunRecord]) -> set[str]:
    values: dict[str, set[str]] = {}
    for r in records:
        for k, v in r.params.items():
            values.setdefault(k, set()).add(v)
    return {k for k, v in values.items() if len(v) > 1 and "." not in k and k not in SEED_PARAMS}


# ------------------------------------------------------------------ problem and comparability


@dataclass(frozen=True)
class ProblemInfo:
    """The experiment's problem as the report needs it."""

    spaces: str
    name: str
    directions: dict[str, dict[str, bool]]
    #: Problem options that define what a run is comparable with (not searched, not common).
    option_keys: tuple[str, ...]
    problem: Any
    #: Per task and metric, how papers print it: (scale, unit) (``Problem.units``).
    units: dict[str, dict[str, tuple[float, str]]] = field(default_factory=dict)

    def source_keys(self, data_source: str) -> tuple[str, ...]:
        return tuple(self.problem.source_option(data_source)) if data_source else ()

    def key(self, record: RunRecord) -> Comparability:
        key = record.comparability(self.option_keys, self.source_keys(record.data_source))
        # every run's space has this problem (checked): a run that does not tag it has it too
        return key if record.problem else dataclasses.replace(key, problem=self.name)


def experiment_problem(space_ids: Sequence[str]) -> ProblemInfo:
    """The problem of the runs' spaces (names or files), one per report; its metric directions
    come from the problem (``Problem.higher_is_better``), never from the numbers."""
    from spaces import get_space
    from trainables.config import COMMON
    from trainables.problems import build_problem

    ids = sorted({s for s in space_ids if s})
    if not ids:
        raise ConfigError("no run of the experiment names its space (tag searcher.space): cannot tell the metrics' directions")
    found: dict[str, tuple[Any, dict[str, dict[str, bool]]]] = {}
    searched: set[str] = set()
    for identifier in ids:
        space = get_space(identifier)
        problem = build_problem(space.problem, space.problem_options)
        found[space.name] = (problem, problem.higher_is_better())
        searched |= set(space.common)
    names = sorted(found)
    first = names[0]
    for name in names[1:]:
        if found[name][1] != found[first][1]:
            raise ConfigError(f"the experiment mixes spaces with different tasks ({first}: {', '.join(found[first][1])}; "
                              f"{name}: {', '.join(found[name][1])}): report one problem per experiment")
    problem, directions = found[first]
    options = tuple(sorted(k for k in problem.defaults if k not in COMMON and k not in searched))
    return ProblemInfo(", ".join(names), problem.name, directions, options, problem, problem.units())


# ------------------------------------------------------------------ references


@dataclass(frozen=True)
class StlFile:
    """Single-task references from a file: the values and what they were measured on."""

    path: str
    values: dict[str, dict[str, float]]
    #: ``measured_on``: problem, data_source, max_epochs, options (any subset); None if the file does not say.
    measured_on: dict[str, Any] | None


def read_stl_file(path: str | Path, directions: Mapping[str, Mapping[str, bool]]) -> StlFile:
    """``{task: {metric: value}, "measured_on": {...}}``; anything else is a one-line ConfigError.

    ``measured_on`` (optional) says what the values were measured on: ``problem``,
    ``data_source``, ``max_epochs`` and ``options`` (a mapping); the report refuses the file for
    a group that differs in any of them, and marks the file unchecked when it says nothing.
    """
    where = f"single-task reference file {path}"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: not JSON ({str(err).splitlines()[0]})") from None
    expected = "; ".join(f"{t}: {', '.join(ms)}" for t, ms in directions.items())
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected {{task: {{metric: value}}}} (tasks and metrics: {expected})")
    measured_on = data.pop("measured_on", None)
    if measured_on is not None:
        known = {"problem", "data_source", "max_epochs", "options"}
        if not isinstance(measured_on, dict) or set(measured_on) - known or not isinstance(measured_on.get("options", {}), dict):
            raise ConfigError(f"{where}: \"measured_on\" must be a mapping of {', '.join(sorted(known))} "
                              "(options: a mapping of problem options)")
    if not all(isinstance(v, dict) for v in data.values()):
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
    return StlFile(str(path), {t: {m: float(data[t][m]) for m in ms} for t, ms in directions.items()}, measured_on)


def stl_mismatch(stl: StlFile, key: Comparability) -> list[str]:
    """What the file's ``measured_on`` says that differs from the group ``key``."""
    said = stl.measured_on or {}
    out = []
    for name in ("problem", "data_source", "max_epochs"):
        if name in said and str(said[name]) != getattr(key, name):
            out.append(f"{name} {said[name]} (not {getattr(key, name)})")
    options = dict(key.options)
    for option, value in (said.get("options") or {}).items():
        if option in options and str(value) != options[option]:
            out.append(f"{option}={value} (not {options[option]})")
    return out


@dataclass
class References:
    """The single-task references of one group, where they come from, and what was refused."""

    values: dict[str, dict[str, float]] | None
    source: str
    configurations: dict[str, Configuration] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


def group_references(key: Comparability, best: Mapping[str, Configuration], elsewhere: Mapping[Comparability, Mapping[str, Configuration]],
                     directions: Mapping[str, Mapping[str, bool]], stl: StlFile | None) -> References:
    """The references of the group ``key``: the ``--stl`` file if it matches the group, else the
    best ``single_task`` configuration of each task in the group (mean over its seeds). Single-task
    runs of other groups are never used; each is named with what differs."""
    refused = []
    for other, configs in elsewhere.items():
        if other == key:
            continue
        for label, config in configs.items():
            if config.first.is_single_task:
                refused.append(f"{label} ({len(config.finished)} run(s), best {config.best_run.run_name}) trained on "
                               + "; ".join(key.differences(other)))
    if stl is not None:
        mismatch = stl_mismatch(stl, key)
        if mismatch:
            refused.insert(0, f"file {stl.path} was measured on " + "; ".join(mismatch))
            return References(None, f"none: the file {stl.path} does not match this group (see refused); Δm is left out",
                              refused=refused)
        said = (f"measured on {', '.join(f'{k} {v}' for k, v in stl.measured_on.items())}" if stl.measured_on
                else "it does not say what it was measured on (no \"measured_on\"): not checked against this group")
        return References(stl.values, f"file {stl.path} ({said})", refused=refused)
    used: dict[str, Configuration] = {}
    missing: list[str] = []
    values: dict[str, dict[str, float]] = {}
    for task, metrics in directions.items():
        stl_config = best.get(arm_key(STL, task))
        if stl_config is None:
            missing.append(task)
            continue
        values[task] = {m: stl_config.mean_std(task, m)[0] for m in metrics}
        used[task] = stl_config
    if missing:
        return References(None, f"none: no finished single_task run for task(s) {', '.join(missing)} in this group "
                          "(train single_task on them with the same set-up, or pass --stl FILE); Δm is left out",
                          used, refused)
    source = "the best single_task configuration of each task in this group (" + ", ".join(
        f"{t}: {c.best_run.run_name}, {len(c.finished)} seed(s)" for t, c in used.items()) + ")"
    try:
        ranking.check_reference(values, directions)
    except ConfigError as err:
        return References(None, source + f"; unusable ({err}), Δm is left out", used, refused)
    return References(values, source, used, refused)


def run_delta_m(record: RunRecord, references: Mapping[str, Mapping[str, float]],
                directions: Mapping[str, Mapping[str, bool]]) -> float:
    return ranking.delta_m_table({record.run_id: record.test_table(directions)}, references, directions)[record.run_id]


# ------------------------------------------------------------------ one comparable group


@dataclass
class GroupReport:
    """Every table of one comparable group."""

    index: int
    key: Comparability
    records: list[RunRecord]
    configurations: list[Configuration]
    best: dict[str, Configuration]
    references: References
    summary: pd.DataFrame
    fixed: pd.DataFrame
    pareto_configs: pd.DataFrame
    pareto_methods: pd.DataFrame
    pareto_optimizers: pd.DataFrame
    budget: pd.DataFrame
    weights: dict[str, dict[str, Any]]
    #: Gradient diagnostics over epochs of each row's best configuration (``analysis.diagnostic_curves``).
    diagnostics: DiagnosticCurves = field(default_factory=DiagnosticCurves)
    #: `004` eq. 9 of each measure against test performance (``analysis.ranking_similarity``).
    similarity: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Each method's best configuration per optimizer (``analysis.optimizer_view``), or why there is none.
    optimizers: pd.DataFrame = field(default_factory=pd.DataFrame)
    optimizers_note: str = ""

    @property
    def name(self) -> str:
        return f"group {self.index}"

    @property
    def describe(self) -> str:
        return self.key.describe()

    @property
    def suffix(self) -> str:
        """File-name suffix of the group's figures: none for the first group."""
        return "" if self.index == 1 else f"-g{self.index}"


def summary_table(best: Mapping[str, Configuration], directions: Mapping[str, Mapping[str, bool]],
                  references: Mapping[str, Mapping[str, float]] | None, varying: set[str],
                  cost: Mapping[str, tuple[float, float]]) -> pd.DataFrame:
    """One row per row label's best configuration: test metrics and Δm over seeds (mean, std,
    95% t-interval), seeds (flagged under 3), MR with its spread over seed resamples, the verdict
    against EW's best configuration (Welch, 0.05; on Δm, or on the validation score without
    references), and the row's cost (seconds per epoch, compute of all its runs).

    Multi-task rows first (by Δm, else by MR), then the single-task rows, which show only the
    metrics of the task they trained. Fixed-weight reruns have their own table.
    """
    multi = {label: c for label, c in best.items() if not c.first.is_single_task and not c.first.is_rerun}
    single = {label: c for label, c in best.items() if c.first.is_single_task}
    table = {label: {t: {m: c.mean_std(t, m)[0] for m in ms} for t, ms in directions.items()} for label, c in multi.items()}
    ranks = ranking.mean_rank(table, directions) if table else {}
    columns = [(t, m) for t, ms in directions.items() for m in ms]
    hib = [directions[t][m] for t, m in columns]
    task_index = {t: i for i, t in enumerate(directions)}
    samples = {label: np.array([[r.test(t, m) for t, m in columns] for r in c.finished]) for label, c in multi.items()}
    spread = uncertainty.bootstrap_mean_rank(samples, hib, [task_index[t] for t, _ in columns]) if len(multi) > 1 else {}

    def per_run_dm(config: Configuration) -> list[float]:
        return [run_delta_m(r, references, directions) for r in config.finished] if references is not None else []

    baseline = multi.get(BASELINE)
    base_dm = per_run_dm(baseline) if baseline is not None else []
    base_val = [r.val_score for r in baseline.finished] if baseline is not None else []
    rows = []
    for label, config in [*multi.items(), *single.items()]:
        trained = config.first.task
        val = uncertainty.summarize([r.val_score for r in config.finished])
        row: dict[str, Any] = {
            "method": label, "kind": "single-task" if trained else "multi-task",
            "configuration": describe_configuration(config, varying), "seeds": len(config.finished),
            "few_seeds": len(config.finished) < uncertainty.MIN_SEEDS,
            "excluded_runs": len(config.excluded), **_summary_columns("val_score", val),
        }
        for task, metrics in directions.items():
            for metric in metrics:
                values = config.values(task, metric) if trained in (None, task) else []
                row.update(_summary_columns(f"{task}/{metric}", uncertainty.summarize(values), std_suffix=" std"))
        dms = per_run_dm(config) if not trained else []
        row.update(_summary_columns("delta_m", uncertainty.summarize(dms)))
        row["mean_rank"] = ranks.get(label, math.nan)
        mr = spread.get(label)
        row["mean_rank_std"] = mr.std if mr else math.nan
        row["mean_rank_ci_low"], row["mean_rank_ci_high"] = (mr.low, mr.high) if mr else (math.nan, math.nan)
        if trained:
            verdict, basis = uncertainty.Verdict(""), ""
        elif baseline is None:
            verdict, basis = uncertainty.Verdict(f"no {BASELINE} in this group"), ""
        elif label == BASELINE:
            verdict, basis = uncertainty.Verdict("baseline"), ""
        elif references is not None:
            verdict, basis = uncertainty.compare(dms, base_dm), "Δm"
        else:
            verdict, basis = uncertainty.compare([r.val_score for r in config.finished], base_val), "val score"
        row["vs_ew"], row["vs_ew_p"], row["vs_ew_on"] = verdict.outcome, verdict.p_value, basis
        row["s_per_epoch"], row["compute_s"] = cost.get(label, (math.nan, math.nan))
        row["best_run_id"] = config.best_run.run_id
        row["run_ids"] = " ".join(r.run_id for r in config.finished)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = frame["kind"].eq("single-task").astype(int)
    frame = frame.assign(_kind=order, _dm=-frame["delta_m"].fillna(-math.inf), _mr=frame["mean_rank"].fillna(math.inf))
    return frame.sort_values(["_kind", "_dm", "_mr", "method"]).drop(columns=["_kind", "_dm", "_mr"]).reset_index(drop=True)


def _summary_columns(name: str, s: Summary, std_suffix: str = "_std") -> dict[str, float]:
    return {name: s.mean, f"{name}{std_suffix}": s.std, f"{name}_ci_low": s.low, f"{name}_ci_high": s.high}


def fixed_weights_table(client: MlflowClient, configurations: Sequence[Configuration], best: Mapping[str, Configuration],
                        directions: Mapping[str, Mapping[str, bool]], references: Mapping[str, Mapping[str, float]] | None,
                        summary: pd.DataFrame, varying: set[str]) -> pd.DataFrame:
    """`002` Table 2: each set of fixed-weight reruns beside its source SMTO run's configuration and the
    best EW, with where its weights came from and the configuration it trained with."""
    reruns = [c for c in configurations if c.first.is_rerun]
    if not reruns:
        return pd.DataFrame()
    config_of = {r.run_id: c for c in configurations for r in c.runs}

    def dms(runs: Sequence[RunRecord]) -> list[float]:
        return [run_delta_m(r, references, directions) for r in runs if r.finished] if references is not None else []

    ew = best.get(BASELINE)
    ew_dm = dms(ew.runs) if ew is not None else []
    multi = summary[summary["kind"] == "multi-task"] if not summary.empty else summary
    smtos = multi[~multi["method"].isin(["ew", "fixed"])] if not multi.empty else multi
    top = smtos.sort_values("delta_m", ascending=False).iloc[0] if not smtos.empty and smtos["delta_m"].notna().any() else None
    rows = []
    for config in reruns:
        first = config.first
        source_id = first.rerun_of or ""
        source_config = config_of.get(source_id)
        if source_config is not None:
            source_runs = source_config.finished
            source_name = next(r.run_name for r in source_config.runs if r.run_id == source_id)
            source_described = describe_configuration(source_config, varying)
        else:  # the source lives in another experiment (or another group): its own run only
            try:
                record = from_run(client.get_run(source_id))
            except MlflowException:  # a deleted source leaves the row without it
                record = None
            source_runs = [record] if record is not None and record.finished else []
            source_name = record.run_name if record is not None else "?"
            source_described = "(in another experiment)" if record is not None else "?"
        fixed = uncertainty.summarize(dms(config.runs))
        source = uncertainty.summarize(dms(source_runs))
        base = uncertainty.summarize(ew_dm)
        verdict = uncertainty.compare(dms(config.runs), ew_dm) if ew is not None and references is not None else \
            uncertainty.Verdict(f"no {BASELINE} in this group" if ew is None else "no Δm")
        weights = first.weights
        row: dict[str, Any] = {
            "method": config.label, "source_method": first.rerun_method, "source_run_id": source_id,
            "source_run": source_name, "source_configuration": source_described,
            "weights_from": weights.describe() if weights else "?",
            "weights_run_id": weights.run_id if weights else "", "weights_method": weights.method if weights else "",
            "weights_beta": weights.beta if weights else "", "weights_epoch": weights.epoch if weights else "",
            "weights": first.params.get("fixed.weights", ""), "seeds": len(config.finished),
            "few_seeds": len(config.finished) < uncertainty.MIN_SEEDS, "excluded_runs": len(config.excluded),
            "ew_delta_m": base.mean, "ew_delta_m_std": base.std, "ew_seeds": base.n,
            **_summary_columns("fixed_delta_m", fixed),
            "source_delta_m": source.mean, "source_delta_m_std": source.std, "source_seeds": len(source_runs),
            "vs_ew": verdict.outcome, "vs_ew_p": verdict.p_value,
            "best_smto": top["method"] if top is not None else "",
            "best_smto_delta_m": top["delta_m"] if top is not None else math.nan,
        }
        for task, metrics in directions.items():
            for metric in metrics:
                row[f"{task}/{metric}"], row[f"{task}/{metric} std"] = config.mean_std(task, metric)
        row["run_ids"] = " ".join(r.run_id for r in config.finished)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_tables(configurations: Sequence[Configuration], directions: Mapping[str, Mapping[str, bool]],
                  varying: set[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The Pareto front over configurations (`003` Tables 2 and A2): each multi-task configuration is
    one point, the mean of its completed runs' test metrics (seed repeats averaged, with their
    std); runs stopped early by the scheduler are left out (counted in ``pruned_runs``), so are
    single-task runs (their other heads are untrained). Counts per row label and per optimizer."""
    columns = [f"{t}/{m}" for t, ms in directions.items() for m in ms]
    hib = [h for ms in directions.values() for h in ms.values()]
    rows = []
    for config in configurations:
        if config.first.is_single_task or not config.finished:
            continue
        done = config.completed
        row: dict[str, Any] = {"label": config.label, "configuration": describe_configuration(config, varying),
                               "optimizer": config.first.optimizer, "runs": len(done),
                               "pruned_runs": sum(r.status == Status.STOPPED_EARLY for r in config.runs),
                               "val_score": statistics.fmean([r.val_score for r in done]) if done else math.nan}
        for task, metrics in directions.items():
            for metric in metrics:
                row[f"{task}/{metric}"], row[f"{task}/{metric} std"] = mean_std(config.values(task, metric, done))
        row["run_ids"] = " ".join(r.run_id for r in done)
        row["run_names"] = " ".join(r.run_name for r in done)
        rows.append(row)
    base = ["label", "configuration", "optimizer", "runs", "pruned_runs", "val_score"]
    frame = pd.DataFrame(rows, columns=[*base, *[c for col in columns for c in (col, f"{col} std")], "run_ids", "run_names"])
    values = frame[columns].to_numpy(dtype=float).reshape(len(frame), len(columns))
    frame["comparable"] = (frame["runs"] > 0).to_numpy() & np.isfinite(values).all(axis=1)
    frame["pareto_optimal"] = pareto.non_dominated(np.where(frame["comparable"].to_numpy()[:, None], values, np.nan), hib)
    valid = frame[frame["comparable"]]
    by_method = pareto.pareto_counts(valid["label"].tolist(), valid["pareto_optimal"].to_numpy(bool))
    by_method = by_method.rename(columns={"group": "method", "runs": "configurations"})
    pruned = frame.groupby("label", sort=False)["pruned_runs"].sum()
    by_method["pruned_runs"] = by_method["method"].map(pruned).fillna(0).astype(int)
    by_optimizer = pareto.optimizer_counts(valid[columns].to_numpy(dtype=float), valid["optimizer"].tolist(), hib)
    return frame, by_method, by_optimizer.rename(columns={"runs": "configurations"})


def budget_table(records: Sequence[RunRecord], references: Mapping[str, Mapping[str, float]] | None,
                 directions: Mapping[str, Mapping[str, bool]]) -> pd.DataFrame:
    """Budget curves (``analysis.budget``) of every multi-task method's search trials: its finished
    runs that are neither confirmations nor reruns, each one trial spent."""
    trials = [r for r in records if r.finished and not r.is_single_task and not r.is_rerun and r.confirm_of is None]
    if not trials:
        return pd.DataFrame()
    frame = pd.DataFrame({
        "method": [r.label for r in trials], "val_score": [r.val_score for r in trials],
        "test_delta_m": [run_delta_m(r, references, directions) if references is not None else math.nan for r in trials],
    })
    return budget.budget_curves(frame)


def smto_weight_histories(client: MlflowClient, best: Mapping[str, Configuration], notes: list[str]) -> dict[str, dict[str, Any]]:
    """The per-epoch ``weight/<task>`` of each SMTO's best run (the best configuration's best seed)."""
    out: dict[str, dict[str, Any]] = {}
    for label, config in best.items():
        first = config.first
        if first.method in NOT_SMTO or first.is_rerun:
            continue
        run = config.best_run
        try:
            tasks, epochs, rows = weight_history(client, client.get_run(run.run_id))
        except ConfigError as err:
            notes.append(f"no weight trajectory for {label}: {err}")
            continue
        out[label] = {"run_name": run.run_name, "run_id": run.run_id, "tasks": tasks, "epochs": epochs, "rows": rows}
    return out


# ------------------------------------------------------------------ every method, its trials and cost


def cost_of(runs: Sequence[RunRecord]) -> tuple[float, float]:
    """(seconds per epoch, seconds in all) over ``runs`` (every run that trained, whatever its end)."""
    timed = [r for r in runs if math.isfinite(r.seconds) and r.epochs > 0]
    seconds = sum(r.seconds for r in timed)
    epochs = sum(r.epochs for r in timed)
    return (seconds / epochs if epochs else math.nan), (seconds if timed else math.nan)


def requested_arms(searches: Sequence[RunRecord]) -> dict[str, int]:
    """Per row label, the trials the experiment's searches (``tune``) planned for it."""
    planned: dict[str, int] = {}
    for search in searches:
        if search.mode != "tune":
            continue
        for arm, trials in search.budgets.items():
            planned[arm] = planned.get(arm, 0) + trials
    return planned


def methods_table(records: Sequence[RunRecord], planned: Mapping[str, int], groups: Sequence[GroupReport]) -> pd.DataFrame:
    """Every requested or trained row label, per group: trials planned, runs by status, cost, and
    its result (the best configuration's seeds) or why it has none."""
    group_of = {r.run_id: g for g in groups for r in g.records}
    labels = list(dict.fromkeys([*planned, *(r.label for r in records)]))
    rows = []
    for label in labels:
        mine = [r for r in records if r.label == label]
        by_group: dict[int, list[RunRecord]] = {}
        for r in mine:
            by_group.setdefault(group_of[r.run_id].index, []).append(r)
        if not by_group:
            rows.append({"method": label, "group": "-", "planned": planned.get(label, 0), "runs": 0,
                         **{s: 0 for s in STATUS_COLUMNS}, "s_per_epoch": math.nan, "compute_s": math.nan,
                         "result": "no run logged: requested, but none of its trials started (search stopped early?)"})
            continue
        for index, runs in sorted(by_group.items()):
            group = groups[index - 1]
            counts = {s: sum(r.status == s for r in runs) for s in STATUS_COLUMNS}
            per_epoch, seconds = cost_of(runs)
            search_runs = [r for r in runs if r.confirm_of is None and not r.is_rerun]
            rows.append({"method": label, "group": index, "planned": planned.get(label, 0) if index == groups[0].index or
                         len(by_group) == 1 else 0, "runs": len(runs), "search_runs": len(search_runs), **counts,
                         "s_per_epoch": per_epoch, "compute_s": seconds, "result": result_line(label, runs, group)})
    return pd.DataFrame(rows, columns=["method", "group", "planned", "runs", "search_runs", *STATUS_COLUMNS,
                                       "s_per_epoch", "compute_s", "result"])


#: The statuses counted per method (``stopped_early``: pruned by the scheduler).
STATUS_COLUMNS = (Status.COMPLETED, Status.STOPPED_EARLY, Status.DIVERGED, Status.FAILED, Status.RUNNING)


def result_line(label: str, runs: Sequence[RunRecord], group: GroupReport) -> str:
    config = group.best.get(label)
    if config is not None:
        few = " (fewer than 3: no firm verdict)" if len(config.finished) < uncertainty.MIN_SEEDS else ""
        return f"best configuration over {len(config.finished)} seed(s){few}"
    parts = []
    for status in (Status.DIVERGED, Status.FAILED, Status.RUNNING):
        hit = [r for r in runs if r.status == status]
        if hit:
            reason = next((r.reason for r in hit if r.reason), "")
            parts.append(f"{len(hit)} {status}" + (f" (e.g. {reason})" if reason else ""))
    return "no result: no finished run; " + "; ".join(parts)


# ------------------------------------------------------------------ the report


@dataclass
class Report:
    experiment: str
    experiment_id: str
    uri: str
    space: str
    problem: str
    directions: dict[str, dict[str, bool]]
    #: Every run that trained (search parents and reports aside).
    records: list[RunRecord]
    groups: list[GroupReport]
    methods: pd.DataFrame
    excluded: pd.DataFrame
    notes: list[str]
    stl: StlFile | None = None
    units: dict[str, dict[str, tuple[float, str]]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [f"{t}/{m}" for t, ms in self.directions.items() for m in ms]

    @property
    def column_directions(self) -> list[bool]:
        return [h for ms in self.directions.values() for h in ms.values()]

    def unit(self, column: str) -> tuple[float, str]:
        """(scale, unit) the papers print ``task/metric`` in (values are logged unscaled)."""
        task, _, metric = column.partition("/")
        return self.units.get(task, {}).get(metric, (1.0, ""))

    def shown(self, column: str, value: float, std: float = math.nan) -> tuple[float, float]:
        """A metric's value (and std) in the unit the papers print it in."""
        scale = self.unit(column)[0]
        return value * scale, std * scale

    @property
    def main(self) -> GroupReport:
        """The first group (the one with the most runs)."""
        return self.groups[0]

    # the main group's tables, as most experiments have one group
    @property
    def summary(self) -> pd.DataFrame:
        return self.main.summary

    @property
    def references(self) -> dict[str, dict[str, float]] | None:
        return self.main.references.values

    @property
    def reference_source(self) -> str:
        return self.main.references.source

    def table(self, name: str) -> pd.DataFrame:
        """A table of every group, with a ``group`` column (the group's number) first."""
        frames = [getattr(g, name).assign(group=g.index, group_key=g.describe) for g in self.groups
                  if not getattr(g, name).empty]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True)
        return frame[["group", "group_key", *[c for c in frame.columns if c not in ("group", "group_key")]]]


def build_group(client: MlflowClient, index: int, key: Comparability, records: list[RunRecord],
                configurations: list[Configuration], elsewhere: Mapping[Comparability, Mapping[str, Configuration]],
                info: ProblemInfo, stl: StlFile | None, notes: list[str]) -> GroupReport:
    """Every table of the group ``key`` (``configurations``: its runs grouped; ``elsewhere``: the
    best configurations of every group, its own included)."""
    directions = info.directions
    best = dict(elsewhere[key])
    references = group_references(key, best, elsewhere, directions, stl)
    varying = varying_params(records)
    cost = {label: cost_of([r for r in records if r.label == label]) for label in best}
    summary = summary_table(best, directions, references.values, varying, cost)
    fixed = fixed_weights_table(client, configurations, best, directions, references.values, summary, varying)
    front, by_method, by_optimizer = pareto_tables(configurations, directions, varying)
    curves = budget_table(records, references.values, directions)
    weights = smto_weight_histories(client, best, notes)
    from analysis.optimizer_view import optimizer_table  # it chooses with this module's rule

    diagnostics = diagnostic_curves.collect(client, {label: config.finished for label, config in best.items()})
    similarity = ranking_similarity.similarity_table(diagnostics.end_values(),
                                                     ranking_similarity.performance_from_summary(summary, directions))
    optimizers, optimizers_note = optimizer_table(configurations, directions, references.values, varying)
    return GroupReport(index, key, records, configurations, best, references, summary, fixed, front, by_method,
                       by_optimizer, curves, weights, diagnostics, similarity, optimizers, optimizers_note)


def build_report(uri: str, experiment: str, stl: str | Path | None = None) -> Report:
    """Read the experiment and compute every table of the report (no file is written)."""
    client = open_client(uri)
    experiment_id = open_experiment(client, experiment)
    everything = load_records(client, experiment_id)
    records = trainings(everything)
    if not records:
        raise ConfigError(f"experiment {experiment!r} has no runs to report (train or tune into it first)")
    info = experiment_problem([r.space for r in records])
    stl_file = read_stl_file(stl, info.directions) if stl is not None else None
    by_key: dict[Comparability, list[RunRecord]] = {}
    for record in records:
        by_key.setdefault(info.key(record), []).append(record)
    keys = sorted(by_key, key=lambda k: (-len(by_key[k]), k.describe()))
    configurations = {k: group_configurations(by_key[k]) for k in keys}
    best_by_key = {k: best_configurations(configurations[k]) for k in keys}
    notes: list[str] = []
    groups = [build_group(client, i, k, by_key[k], configurations[k], best_by_key, info, stl_file, notes)
              for i, k in enumerate(keys, 1)]
    planned = requested_arms([r for r in everything if r.role == Role.SEARCH])
    methods = methods_table(records, planned, groups)
    return Report(experiment, experiment_id, uri, info.spaces, info.name, info.directions, records, groups, methods,
                  excluded_table(records), notes, stl_file, info.units)


def open_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"no experiment {name!r} in the MLflow store {client.tracking_uri} "
                          f"(experiments: {', '.join(known) or 'none'})")
    return experiment.experiment_id


def excluded_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    rows = [{"run": r.run_name, "run_id": r.run_id, "method": r.label, "status": r.status, "reason": r.reason}
            for r in records if not r.finished]
    return pd.DataFrame(rows, columns=["run", "run_id", "method", "status", "reason"])


def run_report(uri: str, experiment: str, stl: str | Path | None = None, out: str | Path | None = None) -> tuple[Report, Any, str]:
    """``searcher report``: build, write to ``out`` (default ``report-<experiment>/``), log to MLflow."""
    from analysis.report_files import log_report, write_report

    report = build_report(uri, experiment, stl)
    written = write_report(report, out or f"report-{experiment}")
    return report, written, log_report(report, written)
