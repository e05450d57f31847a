"""``searcher extract-weights``: fixed weights from a run's logged ``weight/<task>`` metrics.

Reads the per-epoch weight histories of one MLflow run (``get_metric_history``), turns them
into fixed weights as `002` §3.5 does (``analysis.weights``), writes the result as a JSON
file, and logs that file and a plot of the trajectories as artifacts of the source run
(under ``fixed_weights/``). ``read_weights_file`` reads such a file back for ``searcher rerun``.

Options beyond the paper (issue 13): the per-epoch median (``weight_median/<task>``) in place
of the mean, and a bias-corrected EMA; the record says which were used and carries warnings
when the result rests on the first epoch or on a few spiking steps.
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

from analysis.weights import (
    DEFAULT_BETA,
    check_beta,
    check_ema,
    check_per_epoch,
    extract_fixed_weights,
    first_epoch_share,
    mean_median_gaps,
)
from searcher.run_record import Tag, from_run
from trainables.errors import ConfigError

WEIGHT_PREFIX = "weight/"
#: The per-epoch median of the applied weights (logged since issue 13; older runs lack it).
MEDIAN_PREFIX = "weight_median/"
#: The metric prefix of each per-epoch statistic (``analysis.weights.PER_EPOCH``).
PER_EPOCH_PREFIX = {"mean": WEIGHT_PREFIX, "median": MEDIAN_PREFIX}
#: Warn when the first epoch carries more than this share of the fixed weights
#: (``first_epoch_share``): the paper EMA at β = 0.9 does so up to 7 epochs (0.9^6 = 0.53).
FIRST_EPOCH_SHARE_WARN = 0.5
#: Warn when, in some epoch up to the one used, the mean-based and the median-based weights,
#: each normalized to sum 1, differ by more than this for some task (10 points of the total
#: weight). Steps that agree give gaps of 1e-4 to 1e-2 on the toy; one CAGrad step of weight
#: 402 among 100 of about 1.5 (a task with a near-zero gradient) gives 0.14.
MEAN_MEDIAN_GAP_WARN = 0.1
#: The method whose runs give their last applied weights, not an EMA (PBT moves them; else constant).
FIXED = "fixed"
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
    return from_run(run).method


def run_space(run: Run, required: bool = True) -> str:
    """The run's space: the file it was read from (``--space path.yaml``) or its name."""
    space = from_run(run).space
    if required and not space:
        raise ConfigError(f"run {run.info.run_id} names no space (tag searcher.space or param space)")
    return space


def space_tasks(space_name: str) -> list[str]:
    """The tasks of a named space's problem, in the problem's order."""
    from spaces import get_space
    from trainables.problems import build_problem

    space = get_space(space_name)
    return build_problem(space.problem, space.problem_options).task_names


def weight_history(
    client: MlflowClient, run: Run, prefix: str = WEIGHT_PREFIX
) -> tuple[list[str], list[int], list[list[float]]]:
    """(tasks, epochs, rows): the run's ``<prefix><task>`` per epoch (step), tasks in the problem's order.

    ``prefix`` is ``weight/`` (the per-epoch mean, `002` §3.5) or ``weight_median/``. A run
    without epochs, of a method that defines no weights (e.g. PCGrad), or, for the median, one
    logged before the trainer logged it, is a ConfigError.
    """
    run_id = run.info.run_id
    keys = [k for k in run.data.metrics if k.startswith(prefix)]
    if not keys:
        method = run_method(run) or "?"
        if not any(k.startswith(("train/", "val/")) for k in run.data.metrics):
            status = from_run(run).status
            raise ConfigError(f"run {run_id} ({method}) logged no epochs (status {status}): nothing to extract")
        if prefix == MEDIAN_PREFIX and any(k.startswith(WEIGHT_PREFIX) for k in run.data.metrics):
            raise ConfigError(f"run {run_id} ({method}) logged no {MEDIAN_PREFIX}<task> metrics (it was trained before "
                              "the trainer logged per-epoch medians): use --per-epoch mean")
        if not _defines_weights(method):
            raise ConfigError(f"run {run_id} logged no task weights: method {method} defines none "
                              "(`searcher methods` lists the methods that do)")
        raise ConfigError(f"run {run_id} ({method}) logged no {prefix}<task> metrics")
    logged = {k[len(prefix):] for k in keys}
    try:
        order = space_tasks(run_space(run, required=False)) if run_space(run, required=False) else []
    except ConfigError:  # a space no longer registered: fall back to the names' order
        order = []
    tasks = [t for t in order if t in logged] + sorted(logged - set(order))
    per_task: dict[str, dict[int, float]] = {}
    for task in tasks:
        latest: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(run_id, prefix + task):
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


def extract_from_run(client: MlflowClient, run_id: str, beta: float = DEFAULT_BETA, epoch: int | None = None,
                     per_epoch: str = "mean", ema: str = "paper") -> dict[str, Any]:
    """The extraction record of one run (what the JSON file holds).

    ``per_epoch`` ("mean", `002` §3.5, or "median") picks the logged statistic (``weight/`` or
    ``weight_median/``), ``ema`` ("paper" or "debiased") the EMA (``analysis.weights``). The
    record names both (``per_epoch_statistic``, ``ema_kind``; ``per_epoch`` and ``ema`` are the
    per-task trajectories), the first epoch's share of the result, and ``warnings``.
    """
    check_beta(beta)
    check_per_epoch(per_epoch)
    check_ema(ema)
    run = get_run(client, run_id)
    tasks, epochs, rows = weight_history(client, run, PER_EPOCH_PREFIX[per_epoch])
    try:
        x = extract_fixed_weights(rows, epochs, beta, epoch, ema, per_epoch)
    except ConfigError as err:
        hint = (" (the median over the epoch's steps is 0 for every task; use --per-epoch mean)"
                if per_epoch == "median" and "cannot be normalized" in str(err) else "")
        raise ConfigError(f"run {run_id}: {err}{hint}") from None
    method = run_method(run)
    used = x.epochs.index(x.epoch) + 1  # the epochs the EMA at x.epoch has seen
    warnings = []
    final = [float(w) for w in x.weights]
    rule = "ema"
    if method == FIXED:
        # a fixed run's weights are its config's, or, under --scheduler pbt, what PBT last gave it:
        # the weights applied in the epoch taken (not an EMA over the weights it was moved away from)
        final = [float(w) for w in x.normalized[used - 1]]
        rule = "last"
    elif x.first_epoch_share > FIRST_EPOCH_SHARE_WARN:
        warnings.append(_first_epoch_warning(x.first_epoch_share, used, x.epochs[0], beta, ema))
    if per_epoch == "mean" and any(key.startswith(MEDIAN_PREFIX) for key in run.data.metrics):
        spikes = _spike_warning(client, run, tasks, x.epochs[:used], rows[:used], beta, ema, x.weights)
        if spikes:
            warnings.append(spikes)

    def by_task(matrix: Any) -> dict[str, list[float]]:
        return {t: [float(v) for v in matrix[:, i]] for i, t in enumerate(tasks)}

    return {
        "source_run_id": run_id,
        "source_run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "method": method,
        "method_params": {k[len(method) + 1:]: v for k, v in run.data.params.items() if method and k.startswith(method + ".")},
        "space": run_space(run, required=False),
        "status": from_run(run).status,
        "tasks": tasks,
        "beta": float(beta),
        "per_epoch_statistic": per_epoch,
        "ema_kind": ema,
        "epoch": int(x.epoch),
        "epochs": [int(e) for e in x.epochs],
        "first_epoch_share": float(x.first_epoch_share),
        "warnings": warnings,
        "per_epoch_raw": by_task(x.raw),
        "per_epoch": by_task(x.normalized),
        "ema": by_task(x.ema),
        #: ``ema`` (`002` §3.5, an SMTO's weights) or ``last`` (a fixed run: the weights applied at ``epoch``)
        "weights_rule": rule,
        "weights": {t: w for t, w in zip(tasks, final)},
    }


def population_best(client: MlflowClient, run_id: str) -> str:
    """The best trial of the ``fixed`` population ``run_id`` belongs to (``--population-best``): of
    the search's ``fixed`` runs (tag ``searcher.search``), the one whose last validation score
    (``val/score``, what PBT ranks by, ``searcher.pbt``) is highest."""
    run = get_run(client, run_id)
    record = from_run(run)
    if record.method != FIXED or not record.search:
        raise ConfigError(f"run {run_id} is not a trial of a search of method {FIXED} (--population-best picks among "
                          "the fixed trials of its search)")
    runs = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`{Tag.SEARCH}` = '{record.search}' and tags.`{Tag.METHOD}` = '{FIXED}'",
        max_results=50_000,
    )
    scored = [(r.data.metrics["val/score"], r.info.run_id) for r in runs if "val/score" in r.data.metrics]
    if not scored:
        raise ConfigError(f"no {FIXED} trial of search {record.search!r} logged a validation score")
    return max(scored)[1]


def extraction_options(record: Mapping[str, Any]) -> tuple[str, str]:
    """(per-epoch statistic, EMA kind) of a record; a file written before they were recorded: the paper's."""
    return str(record.get("per_epoch_statistic") or "mean"), str(record.get("ema_kind") or "paper")


def _first_epoch_warning(share: float, k: int, first: int, beta: float, ema: str) -> str:
    """Warning (a): the first epoch carries ``share`` (> FIRST_EPOCH_SHARE_WARN) of the result after ``k`` epochs."""
    where = f"epoch {first}" if first == 1 else f"the first logged epoch ({first})"
    advice = ("train longer, or take a later --epoch" if ema == "debiased" or k == 1
              else "use --ema debiased (its share would be "
                   f"{first_epoch_share(k, beta, 'debiased'):.0%}) or a longer run")
    return (f"{where} carries {share:.0%} of the fixed weights after {k} epoch{'s' if k != 1 else ''} "
            f"({ema} EMA): {advice}")


def _spike_warning(client: MlflowClient, run: Run, tasks: Sequence[str], epochs: Sequence[int],
                   mean_rows: Sequence[Sequence[float]], beta: float, ema: str, weights: Any) -> str | None:
    """Warning (b): in some epoch the normalized mean and median weights differ by > MEAN_MEDIAN_GAP_WARN."""
    try:
        median_tasks, median_epochs, median_rows = weight_history(client, run, MEDIAN_PREFIX)
    except ConfigError:
        return None
    if sorted(median_tasks) != sorted(tasks):
        return None
    by_epoch = {e: [dict(zip(median_tasks, r))[t] for t in tasks] for e, r in zip(median_epochs, median_rows)}
    common = [i for i, e in enumerate(epochs) if e in by_epoch]
    if not common:
        return None
    gaps = mean_median_gaps([mean_rows[i] for i in common], [by_epoch[epochs[i]] for i in common])
    over = [(float(g), epochs[i]) for g, i in zip(gaps, common) if g > MEAN_MEDIAN_GAP_WARN]
    if not over:
        return None
    gap, worst = max(over)
    text = (f"the per-epoch mean and median weights (each normalized to sum 1) differ by more than "
            f"{MEAN_MEDIAN_GAP_WARN:g} in {len(over)} of {len(common)} epochs (most in epoch {worst}: {gap:.2f}): "
            "a few steps dominate the mean (spiking weights, e.g. a task with a near-zero gradient); "
            "consider --per-epoch median")
    shared = [epochs[i] for i in common]
    if shared[-1] != epochs[-1]:  # no median at the epoch used: no result to compare with
        return text
    try:
        median = extract_fixed_weights([by_epoch[e] for e in shared], shared, beta, None, ema, "median").weights
    except ConfigError:
        return text
    return (text + " (it gives " + ", ".join(f"{t}={w:.4g}" for t, w in zip(tasks, median))
            + " instead of " + ", ".join(f"{t}={w:.4g}" for t, w in zip(tasks, weights)) + ")")


def default_out(run_id: str, per_epoch: str = "mean", ema: str = "paper") -> Path:
    """``weights-<run id[:8]>.json``, with ``-median`` / ``-debiased`` for the non-paper options."""
    return Path(f"weights-{run_id[:8]}{_suffix(per_epoch, ema)}.json")


def _suffix(per_epoch: str, ema: str) -> str:
    return ("-median" if per_epoch == "median" else "") + ("-debiased" if ema == "debiased" else "")


def write_record(record: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def artifact_stem(record: Mapping[str, Any]) -> str:
    """``weights-beta0.9-epoch10`` (the paper's options), ``weights-beta0.9-epoch10-median-debiased``
    (the others): extractions with other settings do not overwrite each other."""
    return f"weights-beta{record['beta']:g}-epoch{record['epoch']}{_suffix(*extraction_options(record))}"


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
                    out: str | Path | None = None, per_epoch: str = "mean",
                    ema: str = "paper", best_of_population: bool = False) -> tuple[dict[str, Any], Path, list[str]]:
    """``searcher extract-weights``: (record, JSON file written, artifacts logged to the source run).
    ``best_of_population``: from the best ``fixed`` trial of ``run_id``'s search (``population_best``)."""
    client = open_client(uri)
    if best_of_population:
        run_id = population_best(client, run_id)
    record = extract_from_run(client, run_id, beta, epoch, per_epoch, ema)
    path = write_record(record, out or default_out(run_id, per_epoch, ema))
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
