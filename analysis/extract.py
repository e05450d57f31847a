"""``searcher extract-weights``: fixed weights from a run's logged ``weight/<task>`` metrics.

Reads the per-epoch weight histories of one MLflow run (``get_metric_history``), turns them
into fixed weights as `002` §3.5 does (``analysis.weights``), writes the result as a JSON
file, and logs that file and a plot of the trajectories as artifacts of the source run
(under ``fixed_weights/``). ``read_weights_file`` reads such a file back for ``searcher rerun``.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.weights import DEFAULT_BETA, check_beta, extract_fixed_weights
from trainables.errors import ConfigError

WEIGHT_PREFIX = "weight/"
#: Where the JSON and the plot go among the source run's artifacts.
ARTIFACT_DIR = "fixed_weights"


def open_client(uri: str) -> MlflowClient:
    """A client of the store at ``uri``; a SQLite file that does not exist is an error, not a new store."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if str(path) not in ("", ":memory:") and not path.exists():
            raise ConfigError(f"no MLflow store at {uri} ({path} does not exist; pass --tracking-uri)")
    return MlflowClient(uri)


def get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no run {run_id!r} in the MLflow store {client.tracking_uri}") from None


def run_method(run: Run) -> str:
    return run.data.tags.get("searcher.method") or run.data.params.get("method", "")


def run_space(run: Run, required: bool = True) -> str:
    """The run's space: the file it was read from (``--space path.yaml``) or its name."""
    space = (run.data.tags.get("searcher.space_file") or run.data.tags.get("searcher.space")
             or run.data.params.get("space") or "")
    if required and not space:
        raise ConfigError(f"run {run.info.run_id} names no space (tag searcher.space or param space)")
    return space


def space_tasks(space_name: str) -> list[str]:
    """The tasks of a named space's problem, in the problem's order."""
    from spaces import get_space
    from trainables.problems import build_problem

    space = get_space(space_name)
    return build_problem(space.problem, space.problem_options).task_names


def weight_history(client: MlflowClient, run: Run) -> tuple[list[str], list[int], list[list[float]]]:
    """(tasks, epochs, rows): the run's ``weight/<task>`` per epoch (step), tasks in the problem's order.

    A run without epochs, or of a method that defines no weights (e.g. PCGrad), is a ConfigError.
    """
    run_id = run.info.run_id
    keys = [k for k in run.data.metrics if k.startswith(WEIGHT_PREFIX)]
    if not keys:
        method = run_method(run) or "?"
        if not any(k.startswith(("train/", "val/")) for k in run.data.metrics):
            status = run.data.tags.get("searcher.status", run.info.status)
            raise ConfigError(f"run {run_id} ({method}) logged no epochs (status {status}): nothing to extract")
        if not _defines_weights(method):
            raise ConfigError(f"run {run_id} logged no task weights: method {method} defines none "
                              "(`searcher methods` lists the methods that do)")
        raise ConfigError(f"run {run_id} ({method}) logged no {WEIGHT_PREFIX}<task> metrics")
    logged = {k[len(WEIGHT_PREFIX):] for k in keys}
    try:
        order = space_tasks(run_space(run, required=False)) if run_space(run, required=False) else []
    except ConfigError:  # a space no longer registered: fall back to the names' order
        order = []
    tasks = [t for t in order if t in logged] + sorted(logged - set(order))
    per_task: dict[str, dict[int, float]] = {}
    for task in tasks:
        latest: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(run_id, WEIGHT_PREFIX + task):
            if m.step not in latest or m.timestamp >= latest[m.step][0]:
                latest[m.step] = (m.timestamp, m.value)
        per_task[task] = {step: value for step, (_, value) in latest.items()}
    epochs = sorted(set.intersection(*(set(v) for v in per_task.values())))
    if not epochs:
        raise ConfigError(f"run {run_id} logged no epoch with a weight for every task")
    return tasks, epochs, [[per_task[t][e] for t in tasks] for e in epochs]


def _defines_weights(method: str) -> bool:
    from trainables.methods import METHODS

    try:
        return bool(METHODS.get(method).defines_weights)
    except ConfigError:
        return True


def extract_from_run(client: MlflowClient, run_id: str, beta: float = DEFAULT_BETA, epoch: int | None = None) -> dict[str, Any]:
    """The extraction record of one run (what the JSON file holds)."""
    check_beta(beta)
    run = get_run(client, run_id)
    tasks, epochs, rows = weight_history(client, run)
    try:
        x = extract_fixed_weights(rows, epochs, beta, epoch)
    except ConfigError as err:
        raise ConfigError(f"run {run_id}: {err}") from None
    method = run_method(run)

    def by_task(matrix: Any) -> dict[str, list[float]]:
        return {t: [float(v) for v in matrix[:, i]] for i, t in enumerate(tasks)}

    return {
        "source_run_id": run_id,
        "source_run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "method": method,
        "method_params": {k[len(method) + 1:]: v for k, v in run.data.params.items() if method and k.startswith(method + ".")},
        "space": run_space(run, required=False),
        "status": run.data.tags.get("searcher.status", ""),
        "tasks": tasks,
        "beta": float(beta),
        "epoch": int(x.epoch),
        "epochs": [int(e) for e in x.epochs],
        "per_epoch_raw": by_task(x.raw),
        "per_epoch": by_task(x.normalized),
        "ema": by_task(x.ema),
        "weights": {t: float(w) for t, w in zip(tasks, x.weights)},
    }


def default_out(run_id: str) -> Path:
    return Path(f"weights-{run_id[:8]}.json")


def write_record(record: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def artifact_stem(record: Mapping[str, Any]) -> str:
    """``weights-beta0.9-epoch10``: extractions with other settings do not overwrite each other."""
    return f"weights-beta{record['beta']:g}-epoch{record['epoch']}"


def log_to_source(client: MlflowClient, record: Mapping[str, Any]) -> list[str]:
    """Log the record (JSON) and its plot (PNG) as artifacts of the source run; return their paths."""
    from analysis.plots import plot_weight_trajectories

    stem = artifact_stem(record)
    with tempfile.TemporaryDirectory() as directory:
        json_path = write_record(record, Path(directory) / f"{stem}.json")
        png_path = plot_weight_trajectories(record, Path(directory) / f"{stem}.png")
        for path in (json_path, png_path):
            client.log_artifact(record["source_run_id"], str(path), ARTIFACT_DIR)
    return [f"{ARTIFACT_DIR}/{stem}.json", f"{ARTIFACT_DIR}/{stem}.png"]


def extract_weights(uri: str, run_id: str, beta: float = DEFAULT_BETA, epoch: int | None = None,
                    out: str | Path | None = None) -> tuple[dict[str, Any], Path, list[str]]:
    """``searcher extract-weights``: (record, JSON file written, artifacts logged to the source run)."""
    client = open_client(uri)
    record = extract_from_run(client, run_id, beta, epoch)
    path = write_record(record, out or default_out(run_id))
    return record, path, log_to_source(client, record)


def read_weights_file(path: str | Path, tasks: Sequence[str]) -> tuple[list[float], dict[str, Any]]:
    """The weights of a file written by ``extract-weights``, in the order of ``tasks``; and the whole record.

    ``weights`` may be a mapping task -> weight (as written) or a list in the order of the file's
    ``tasks`` (default: ``tasks``). Anything else is a one-line ConfigError naming the file.
    """
    where = f"weights file {path}"
    try:
        record = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: not JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(record, dict) or "weights" not in record:
        raise ConfigError(f"{where}: no \"weights\" entry (write one with `searcher extract-weights`)")
    raw = record["weights"]
    file_tasks = record.get("tasks")
    if file_tasks is not None and (not isinstance(file_tasks, list) or sorted(map(str, file_tasks)) != sorted(tasks)):
        raise ConfigError(f"{where}: its tasks {file_tasks} are not the problem's {list(tasks)}")
    if isinstance(raw, dict):
        if sorted(raw) != sorted(tasks):
            raise ConfigError(f"{where}: weights for tasks {sorted(raw)}, the problem has {list(tasks)}")
        values = [raw[t] for t in tasks]
    elif isinstance(raw, list):
        if len(raw) != len(tasks):
            raise ConfigError(f"{where}: {len(raw)} weights for {len(tasks)} tasks ({', '.join(tasks)})")
        named = dict(zip(file_tasks or tasks, raw))
        values = [named[t] for t in tasks]
    else:
        raise ConfigError(f"{where}: \"weights\" must map each task to its weight")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: weights must be numbers, got {values}")
    values = [float(v) for v in values]
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ConfigError(f"{where}: weights must be finite, non-negative and not all zero, got {values}")
    return values, record
