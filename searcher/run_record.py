"""The run record: what one MLflow run of a searcher experiment says, written and read here only.

Every run searcher leaves in MLflow (a trial of ``tune``, a ``train``, a ``confirm`` repeat, a
``rerun``, a search's parent run, a report) carries tags named ``searcher.<name>``, params (the
resolved config, ``trainables.config.run_params``) and metrics (``trainables.trainer.METRIC_NAMES``).
This module is the one schema of them: the tag names (``Tag``), the statuses and roles, the
label of a row (``label``), and ``RunRecord``, the typed record built from an MLflow ``Run``
that report, confirm, rerun and extract read through. The writers (``searcher.tracking``,
``searcher.session``, ``searcher.launch``, ``searcher.rerun``) take their tag names from here.

``Comparability`` is what makes two runs comparable: the same problem, problem options, data
source and epoch budget. References (single-task runs) are taken only from runs with the same
key (SPEC, Protocol: "references come from runs trained on the same problem options, data,
split and epoch budget").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

PREFIX = "searcher."


class Tag:
    """The ``searcher.*`` tags of a run (one name each, used by writers and readers)."""

    METHOD = PREFIX + "method"
    #: The trained task of a ``single_task`` run.
    TASK = PREFIX + "task"
    #: completed / stopped_early / diverged / failed / running (``Status``).
    STATUS = PREFIX + "status"
    DIVERGED_REASON = PREFIX + "diverged_reason"
    #: Why a run's best model (``model/best.pt``, ``keep_model``) could not be logged.
    MODEL_NOTE = PREFIX + "model_note"
    #: search (a launch's parent run) / report / rerun; trials of tune, train and confirm have none.
    ROLE = PREFIX + "role"
    #: The command that trained it: train / tune / confirm / rerun.
    MODE = PREFIX + "mode"
    #: The launch's name (Ray's experiment folder), on its parent run and every trial.
    SEARCH = PREFIX + "search"
    TRIAL_ID = PREFIX + "trial_id"
    SPACE = PREFIX + "space"
    #: The space file (``--space path.yaml``) a run's space was read from.
    SPACE_FILE = PREFIX + "space_file"
    PROBLEM = PREFIX + "problem"
    DATA_SOURCE = PREFIX + "data_source"
    #: ``confirm``: the run whose configuration this run repeats with a new seed.
    CONFIRM_OF = PREFIX + "confirm_of"
    #: ``rerun``: the run whose configuration (hyperparameters) was retrained with fixed weights.
    SOURCE_RUN = PREFIX + "source_run"
    SOURCE_METHOD = PREFIX + "source_method"
    #: ``rerun``: where its fixed weights came from (run, its method, EMA β, epoch, statistic, EMA kind).
    WEIGHTS_RUN = PREFIX + "weights_run"
    WEIGHTS_METHOD = PREFIX + "weights_method"
    WEIGHTS_BETA = PREFIX + "weights_beta"
    WEIGHTS_EPOCH = PREFIX + "weights_epoch"
    WEIGHTS_PER_EPOCH = PREFIX + "weights_per_epoch"
    WEIGHTS_EMA = PREFIX + "weights_ema"
    #: A launch's parent run: the trials planned per arm, as JSON ``{arm: trials}`` (``budgets_tag``).
    BUDGETS = PREFIX + "budgets"
    #: A report: where its single-task references came from.
    REFERENCES = PREFIX + "references"


class Status:
    COMPLETED = "completed"
    #: Stopped by the scheduler (ASHA) before its last epoch: a finished run of a smaller budget.
    STOPPED_EARLY = "stopped_early"
    DIVERGED = "diverged"
    FAILED = "failed"
    RUNNING = "running"
    #: Runs whose metrics count.
    FINISHED = (COMPLETED, STOPPED_EARLY)


class Role:
    SEARCH = "search"
    REPORT = "report"
    RERUN = "rerun"
    #: Runs that are not trainings (a launch's parent run, a report).
    NOT_TRAININGS = (SEARCH, REPORT)


STL = "single_task"
FIXED = "fixed"
VAL_SCORE = "best/val_score"
BEST_EPOCH = "best/epoch"
TEST_PREFIX = "best/test/"
#: Params that do not change what a configuration is: repeats of it differ only in these (the
#: gradient diagnostics only read gradients, tests/test_diagnostics.py; keep_model only copies).
SEED_PARAMS = ("seed", "run_index", "repeat", "device", "batched_grads", "diagnostics_every", "diagnostics_samples",
               "keep_model")


def arm_key(method: str, task: str | None = None) -> str:
    """The row of a method (``single_task[<task>]`` per trained task): the one place it is spelled."""
    return f"{method}[{task}]" if method == STL and task else method


def budgets_tag(budgets: Mapping[str, int]) -> str:
    """The value of ``Tag.BUDGETS``: ``{arm: trials}`` as JSON (read back by ``RunRecord.budgets``)."""
    return json.dumps({str(arm): int(n) for arm, n in budgets.items()})


def rerun_label(weights_method: str, config_method: str) -> str:
    """The row of fixed-weight reruns: ``fixed[cagrad]`` when the weights and the configuration
    come from the same method, else ``fixed[imtl weights, cagrad config]``."""
    if not weights_method or weights_method == config_method:
        return f"{FIXED}[{config_method or '?'}]"
    return f"{FIXED}[{weights_method} weights, {config_method or '?'} config]"


@dataclass(frozen=True)
class Comparability:
    """What runs must share to be compared: problem, its options, data source, epoch budget.

    ``options`` are the problem's options as the runs logged them (the data-source option left
    out: ``data_source`` is what ``prepare`` resolved it to); a value a run did not log is "?".
    """

    problem: str
    data_source: str
    max_epochs: str
    options: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        text = f"problem {self.problem}, data {self.data_source}, max_epochs {self.max_epochs}"
        return text + (", " + " ".join(f"{k}={v}" for k, v in self.options) if self.options else "")

    def differences(self, other: "Comparability") -> list[str]:
        """What differs from ``other``, one ``name: mine vs theirs`` each."""
        out = []
        for name in ("problem", "data_source", "max_epochs"):
            if getattr(self, name) != getattr(other, name):
                out.append(f"{name} {getattr(other, name)} (not {getattr(self, name)})")
        mine, theirs = dict(self.options), dict(other.options)
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key, "?") != theirs.get(key, "?"):
                out.append(f"{key}={theirs.get(key, '?')} (not {mine.get(key, '?')})")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"problem": self.problem, "data_source": self.data_source, "max_epochs": self.max_epochs,
                "options": dict(self.options)}


@dataclass(frozen=True)
class WeightsSource:
    """Where the fixed weights of a rerun came from (``searcher extract-weights``)."""

    run_id: str
    method: str
    beta: str = ""
    epoch: str = ""
    per_epoch: str = ""
    ema: str = ""

    def describe(self) -> str:
        if not self.run_id:
            return "not recorded (a rerun from before the weights' source was tagged)"
        parts = [f"{self.method or '?'} run {self.run_id[:8]}"]
        if self.beta:
            parts.append(f"β {self.beta}")
        if self.epoch:
            parts.append(f"epoch {self.epoch}")
        if self.per_epoch and self.per_epoch != "mean":
            parts.append(f"per-epoch {self.per_epoch}")
        if self.ema and self.ema != "paper":
            parts.append(f"{self.ema} EMA")
        return ", ".join(parts)


@dataclass
class RunRecord:
    """One MLflow run of a searcher experiment, typed."""

    run_id: str
    run_name: str
    experiment_id: str
    method: str
    #: The trained task of a single-task run (else None).
    task: str | None
    #: The row it belongs to: the method, ``single_task[<task>]``, ``fixed[<source>]`` for a rerun.
    label: str
    role: str
    mode: str
    search: str
    status: str
    reason: str
    params: dict[str, str]
    space: str
    problem: str
    data_source: str
    optimizer: str
    val_score: float
    #: The epochs it trained (its last logged ``epoch``), 0 when none.
    epochs: int
    #: Seconds of training over the run (``time/total_s``; older runs: ``time/epoch_s`` x epochs).
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    confirm_of: str | None = None
    #: A rerun: the run whose configuration it retrained.
    rerun_of: str | None = None
    rerun_method: str = ""
    weights: WeightsSource | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in Status.FINISHED

    @property
    def completed(self) -> bool:
        return self.status == Status.COMPLETED

    @property
    def is_single_task(self) -> bool:
        return self.method == STL

    @property
    def is_rerun(self) -> bool:
        return self.rerun_of is not None

    @property
    def is_training(self) -> bool:
        return self.role not in Role.NOT_TRAININGS

    @property
    def budgets(self) -> dict[str, int]:
        """A launch's parent run: the trials it planned per arm (``Tag.BUDGETS``; older launches:
        their ``arms`` and ``num_samples`` params); empty for other runs."""
        text = self.tags.get(Tag.BUDGETS)
        if text:
            try:
                return {str(k): int(v) for k, v in json.loads(text).items()}
            except (ValueError, TypeError, AttributeError):
                pass
        arms = [a for a in self.params.get("arms", "").split(",") if a]
        samples = self.params.get("num_samples", "")
        return {a: int(samples) if samples.isdigit() else 0 for a in arms}

    @property
    def max_epochs(self) -> str:
        return self.params.get("max_epochs", "?")

    def test(self, task: str, metric: str) -> float:
        """``best/test/<task>/<metric>``: the test metric at the best validation epoch (NaN if not logged)."""
        return self.metrics.get(f"{TEST_PREFIX}{task}/{metric}", math.nan)

    def test_table(self, directions: Mapping[str, Iterable[str]]) -> dict[str, dict[str, float]]:
        return {t: {m: self.test(t, m) for m in ms} for t, ms in directions.items()}

    def comparability(self, option_keys: Iterable[str], source_keys: Iterable[str] = ()) -> Comparability:
        """The key of runs this one may be compared with (``option_keys``: the problem's options;
        ``source_keys``: those that choose the data source, represented by ``data_source``)."""
        skip = set(source_keys)
        options = tuple((k, self.params.get(k, "?")) for k in sorted(option_keys) if k not in skip)
        return Comparability(self.problem or "?", self.data_source or "?", self.max_epochs, options)

    @property
    def diagnostics(self) -> list[DiagName]:
        """The gradient diagnostics the run logged (``diag/...``, parsed), from its latest metric values."""
        return [n for n in (diag_name(k) for k in sorted(self.metrics)) if n is not None]

    def configuration_key(self) -> tuple:
        """Runs with equal keys are seeds of one configuration (params up to ``SEED_PARAMS``)."""
        return (self.label, tuple(sorted((k, v) for k, v in self.params.items() if k not in SEED_PARAMS)))


# ------------------------------------------------------------------ gradient diagnostics (issue 14)

#: The prefix of the per-epoch gradient diagnostics (``trainables.trainer``: step = epoch).
DIAG_PREFIX = "diag/"
#: The levels the gradients are taken at: the shared parameters, or the shared representation (`004`).
DIAG_LEVELS = ("param", "feature")
#: The scope word of the measures between samples of one task (`003` §4.2's STL setting).
DIAG_SAMPLE = "sample"
#: The per-pair measures between tasks (``diag/<level>/<kind>/<a>-<b>``).
DIAG_PAIR_KINDS = ("cos", "mag", "conflict")


@dataclass(frozen=True)
class DiagName:
    """One diagnostic metric name, parsed (the one place its spelling is read back).

    ``diag/<level>/<measure>``: between tasks (``between="tasks"``); ``diag/<level>/<kind>/<a>-<b>``:
    one pair of tasks (``pair="a-b"``, ``measure=kind``); ``diag/<level>/sample/<measure>``:
    between samples, mean over tasks (``between="samples"``); ``diag/<level>/sample/<task>/<measure>``:
    between samples of one task (``task``).
    """

    level: str
    measure: str
    between: str = "tasks"
    task: str | None = None
    pair: str | None = None

    @property
    def aggregate(self) -> bool:
        """A measure over every pair (of tasks, or of samples averaged over tasks): what curves show."""
        return self.pair is None and self.task is None

    @property
    def key(self) -> str:
        """The metric name it was parsed from."""
        if self.between == "samples":
            return f"{DIAG_PREFIX}{self.level}/{DIAG_SAMPLE}/" + (f"{self.task}/" if self.task else "") + self.measure
        return f"{DIAG_PREFIX}{self.level}/" + (f"{self.measure}/{self.pair}" if self.pair else self.measure)


def diag_name(metric: str) -> DiagName | None:
    """``metric`` parsed as a diagnostic (``DiagName``), or None when it is not one."""
    if not metric.startswith(DIAG_PREFIX):
        return None
    parts = metric[len(DIAG_PREFIX):].split("/")
    if len(parts) < 2 or parts[0] not in DIAG_LEVELS or not all(parts):
        return None
    level, rest = parts[0], parts[1:]
    if rest[0] == DIAG_SAMPLE and len(rest) in (2, 3):
        return DiagName(level, rest[-1], "samples", task=rest[1] if len(rest) == 3 else None)
    if len(rest) == 1:
        return DiagName(level, rest[0])
    if len(rest) == 2 and rest[0] in DIAG_PAIR_KINDS:
        return DiagName(level, rest[0], pair=rest[1])
    return None


def diag_histories(client: MlflowClient, record: "RunRecord", aggregate_only: bool = True) -> dict[DiagName, list[tuple[int, float]]]:
    """The per-epoch history ``[(epoch, value), ...]`` of each diagnostic ``record`` logged
    (``MlflowClient.get_metric_history``; the metric names from the run's latest values, so a run
    without diagnostics costs no call). ``aggregate_only``: leave out the per-pair and per-task
    measures. A step logged twice keeps its latest value; NaN values are dropped."""
    out: dict[DiagName, list[tuple[int, float]]] = {}
    for metric in sorted(record.metrics):
        name = diag_name(metric)
        if name is None or (aggregate_only and not name.aggregate):
            continue
        latest: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(record.run_id, metric):
            if m.step not in latest or m.timestamp >= latest[m.step][0]:
                latest[m.step] = (m.timestamp, float(m.value))
        points = [(step, value) for step, (_, value) in sorted(latest.items()) if math.isfinite(value)]
        if points:
            out[name] = points
    return out


def run_status(run: Run) -> tuple[str, str]:
    """(status, reason): the status tag, else what MLflow knows of the run."""
    tags = run.data.tags
    status = tags.get(Tag.STATUS)
    reason = tags.get(Tag.DIVERGED_REASON, "")
    if status is None:
        mlflow_status = run.info.status
        status = {"FINISHED": Status.COMPLETED, "FAILED": Status.FAILED, "KILLED": Status.FAILED}.get(mlflow_status, Status.RUNNING)
        if status != Status.COMPLETED:
            reason = f"no {Tag.STATUS} tag; MLflow status {mlflow_status}"
    elif status == Status.RUNNING and not reason:
        reason = "no final status: still running, or its search stopped before it ended"
    if status in Status.FINISHED and not math.isfinite(run.data.metrics.get(VAL_SCORE, math.nan)):
        return Status.FAILED, f"no {VAL_SCORE} logged"
    return status, reason


def from_run(run: Run) -> RunRecord:
    """The record of one MLflow run."""
    tags, params, metrics = dict(run.data.tags), dict(run.data.params), dict(run.data.metrics)
    method = tags.get(Tag.METHOD) or params.get("method", "")
    task = (tags.get(Tag.TASK) or params.get(f"{STL}.task") or None) if method == STL else None
    rerun_of = tags.get(Tag.SOURCE_RUN) or None
    weights = None
    label = arm_key(method, task)
    rerun_method = ""
    if rerun_of is not None or tags.get(Tag.ROLE) == Role.RERUN:
        rerun_method = tags.get(Tag.SOURCE_METHOD, "")
        weights = WeightsSource(
            tags.get(Tag.WEIGHTS_RUN, ""), tags.get(Tag.WEIGHTS_METHOD, ""), tags.get(Tag.WEIGHTS_BETA, ""),
            tags.get(Tag.WEIGHTS_EPOCH, ""), tags.get(Tag.WEIGHTS_PER_EPOCH, ""), tags.get(Tag.WEIGHTS_EMA, ""))
        # weights from the source run itself unless the tags say otherwise
        weights_method = weights.method or (rerun_method if weights.run_id in ("", rerun_of) else "")
        label = rerun_label(weights_method or "?", rerun_method)
    status, reason = run_status(run)
    epochs = int(metrics.get("epoch", 0) or 0)
    seconds = metrics.get("time/total_s")
    if seconds is None:
        seconds = metrics.get("time/epoch_s", math.nan) * epochs if epochs else math.nan
    return RunRecord(
        run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id[:8], experiment_id=run.info.experiment_id,
        method=method, task=task, label=label, role=tags.get(Tag.ROLE, ""), mode=tags.get(Tag.MODE, ""),
        search=tags.get(Tag.SEARCH, ""), status=status, reason=reason, params=params,
        space=tags.get(Tag.SPACE_FILE) or tags.get(Tag.SPACE) or params.get("space", ""),
        problem=tags.get(Tag.PROBLEM, ""), data_source=params.get("data_source") or tags.get(Tag.DATA_SOURCE, ""),
        optimizer=params.get("optimizer", "?"), val_score=float(metrics.get(VAL_SCORE, math.nan)), epochs=epochs,
        seconds=float(seconds), metrics=metrics, confirm_of=tags.get(Tag.CONFIRM_OF) or None, rerun_of=rerun_of,
        rerun_method=rerun_method, weights=weights, tags=tags,
    )


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


def load_records(client: MlflowClient, experiment_id: str) -> list[RunRecord]:
    """Every active run of the experiment as a record, oldest first."""
    return [from_run(run) for run in load_runs(client, experiment_id)]


def trainings(records: Sequence[RunRecord]) -> list[RunRecord]:
    """The runs that trained a model (not a launch's parent run, not a report)."""
    return [r for r in records if r.is_training]
