"""``searcher robustness RUN_ID...``: corruption robustness of MTL runs vs their single-task references (`003` §4.3).

For each MTL run: rebuild its problem and configuration from MLflow (its params, as ``confirm``
reads them), load its best validation epoch's model (the ``model/best.pt`` artifact that
``keep_model`` logs), and evaluate its test split clean and under every corruption and severity
(``trainables.corruptions``, generated on the fly, the same images for every model: each batch's
draws are seeded by the seed, the corruption, the severity and the batch's index, and every
model is evaluated with the same batch size). The single-task references are found as ``report``
finds them: in the run's experiment, runs of ``single_task`` trained on the same problem, options,
data and epoch budget, the best configuration per task by validation score, every finished seed of
it with a kept model. δ (`003` eq. 6) is computed by ``analysis.robustness``; the tables and the
figure are written to ``--out`` and logged to each MTL run under ``robustness/``.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import robustness as rob
from analysis.extract import get_run, open_client
from analysis.report import best_configurations, experiment_problem, group_configurations
from searcher.confirm import source_config
from searcher.run_record import RunRecord, STL, arm_key, from_run, load_records, trainings
from searcher.session import resolved_source
from searcher.tracking import BEST_MODEL_ARTIFACT
from trainables.corruptions import CORRUPTIONS, SEVERITIES, check_names, corrupt
from trainables.errors import ConfigError
from trainables.trainer import Trainer

#: Where the tables and the figure go among each MTL run's artifacts.
ARTIFACT_DIR = "robustness"


@dataclass
class Plan:
    """What one ``searcher robustness`` call evaluates."""

    runs: list[RunRecord]
    #: task -> the single-task runs whose models are its reference.
    references: dict[str, list[RunRecord]]
    directions: dict[str, dict[str, bool]]
    corruptions: list[str]
    severities: list[int]
    notes: list[str] = field(default_factory=list)


def parse_severities(text: str) -> list[int]:
    """'1-5', '1,3,5' or '2' -> severities (each in 1..5)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            out.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    except ValueError:
        raise ConfigError(f"bad --severities {text!r}: use e.g. 1-5 or 1,3,5") from None
    bad = [s for s in out if s not in SEVERITIES]
    if not out or bad:
        raise ConfigError(f"bad --severities {text!r}: severities are 1 to 5")
    return sorted(set(out))


def parse_corruptions(text: str | None) -> list[str]:
    """A comma-separated list of corruption names (default: all of ``CORRUPTIONS``)."""
    if not text:
        return list(CORRUPTIONS)
    return check_names([n.strip() for n in text.split(",") if n.strip()])


def has_model(client: MlflowClient, run_id: str) -> bool:
    folder, name = BEST_MODEL_ARTIFACT.rsplit("/", 1)
    try:
        return any(a.path.endswith(name) for a in client.list_artifacts(run_id, folder))
    except (MlflowException, OSError):
        return False


def plan(client: MlflowClient, run_ids: Sequence[str], corruptions: list[str], severities: list[int]) -> Plan:
    """Read the MTL runs and find each task's single-task reference runs (one-line errors when missing)."""
    if not run_ids:
        raise ConfigError("name at least one MLflow run id")
    runs = [from_run(get_run(client, run_id)) for run_id in run_ids]
    for record in runs:
        if record.is_single_task:
            raise ConfigError(f"run {record.run_id} is a single_task run: name multi-task runs (their single-task "
                              "references are found in the same experiment)")
        if not has_model(client, record.run_id):
            raise ConfigError(f"run {record.run_id} ({record.run_name}) has no {BEST_MODEL_ARTIFACT} artifact (trained "
                              "before keep_model or with keep_model=false): retrain it, e.g. `searcher confirm`")
    experiments = {r.experiment_id for r in runs}
    if len(experiments) > 1:
        raise ConfigError("the runs come from different experiments; name runs of one experiment")
    records = trainings(load_records(client, runs[0].experiment_id))
    info = experiment_problem([r.space for r in records] + [r.space for r in runs])
    if info.problem.pixel_stats is None:
        raise ConfigError(f"problem {info.name} has no image inputs: corruptions apply to image problems only")
    keys = {info.key(r) for r in runs}
    if len(keys) > 1:
        raise ConfigError("the runs were trained on different set-ups (" + "; ".join(k.describe() for k in keys)
                          + "): name runs of one set-up")
    key = keys.pop()
    candidates = [r for r in records if r.is_single_task and not r.is_rerun and info.key(r) == key]
    best = best_configurations(group_configurations(candidates))
    references: dict[str, list[RunRecord]] = {}
    notes = []
    for task in info.directions:
        config = best.get(arm_key(STL, task))
        if config is None:
            raise ConfigError(f"no finished single_task run for task {task} trained on {key.describe()} in the "
                              f"experiment of run {runs[0].run_id} (train one with the same set-up)")
        with_model = [r for r in config.finished if has_model(client, r.run_id)]
        if not with_model:
            raise ConfigError(f"the single_task reference of task {task} (run {config.best_run.run_id}, "
                              f"{config.best_run.run_name}) has no {BEST_MODEL_ARTIFACT} artifact: retrain it with "
                              "keep_model=true")
        if len(with_model) < len(config.finished):
            notes.append(f"task {task}: {len(config.finished) - len(with_model)} of the reference's "
                         f"{len(config.finished)} seed(s) have no kept model and are left out")
        references[task] = with_model
    return Plan(runs, references, info.directions, corruptions, severities, notes)


def load_trainer(client: MlflowClient, record: RunRecord, data_dir: str | None, device: str,
                 batch_size: int | None) -> Trainer:
    """The run's model at its best validation epoch, in a trainer built from its logged configuration."""
    from spaces import get_space
    from trainables.problems import build_problem

    space = get_space(record.space)
    problem = build_problem(space.problem, space.problem_options)
    config: dict[str, Any] = source_config(record, set(problem.defaults) | set(space.constants))
    config.update({"device": device, "keep_model": "false"})
    if batch_size is not None:
        config["batch_size"] = batch_size
    options = {**problem.defaults, **space.constants, **config}
    if record.data_source:
        options.update(problem.source_option(record.data_source))
    data = problem.prepare(data_dir, options)
    used = resolved_source(problem, data)
    if record.data_source and used != record.data_source:
        raise ConfigError(f"run {record.run_id} trained on {record.data_source} data, here {used} would be used "
                          "(pass --data-dir)")
    trainer = Trainer(problem.resolved(data, options), config, data)
    # one small file per run: MLflow's progress bars would only clutter the command's output
    os.environ.setdefault(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(record.run_id, BEST_MODEL_ARTIFACT, tmp)
        except (MlflowException, OSError) as err:
            raise ConfigError(f"run {record.run_id}: cannot read {BEST_MODEL_ARTIFACT} ({str(err).splitlines()[0]})") from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    try:
        trainer.load_model(state)
    except (RuntimeError, KeyError) as err:
        raise ConfigError(f"run {record.run_id}: {BEST_MODEL_ARTIFACT} does not fit the model its params build "
                          f"({str(err).splitlines()[0]})") from None
    return trainer


def batch_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of one batch's corruption draws: the same for every model evaluated."""
    return zlib.crc32(f"{seed}:{corruption}:{severity}:{index}".encode())


@torch.no_grad()
def evaluate(trainer: Trainer, conditions: Sequence[tuple[str, int]], seed: int = 0, table: str = "auto") -> dict:
    """Test metrics of the trainer's model, per condition (``CLEAN`` or (corruption, severity)):
    inputs are mapped back to [0, 1] pixels with the problem's ``pixel_stats``, corrupted, and
    standardised again; the metrics are the problem's accumulator, as ``Trainer.evaluate``."""
    if trainer.problem.pixel_stats is None:  # a TypeError on unpacking None otherwise
        raise ConfigError(f"problem {trainer.problem.name} has no image inputs: "
                          "corruptions apply to image problems only")
    mean_, std_ = trainer.problem.pixel_stats
    mean = torch.tensor(mean_, device=trainer.device).view(1, -1, 1, 1)
    std = torch.tensor(std_, device=trainer.device).view(1, -1, 1, 1)
    trainer.model.eval()
    trainer.method.eval()
    out: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    for condition in conditions:
        acc = trainer.problem.new_metrics(trainer.config)
        for index, batch in enumerate(trainer.splits.test):
            inputs, targets = trainer.to_device(batch)
            if condition != rob.CLEAN:
                name, severity = condition
                pixels = (inputs * std + mean).clamp(0, 1)
                generator = torch.Generator().manual_seed(batch_seed(seed, name, severity, index))
                inputs = (corrupt(pixels, name, severity, generator, table) - mean) / std
            acc.update(trainer.forward(trainer.model, inputs), targets)
        out[condition] = acc.compute()
    return out


@dataclass
class Result:
    deltas: pd.DataFrame
    corruptions: pd.DataFrame
    summary: pd.DataFrame
    files: list[Path]
    notes: list[str]


def run_robustness(
    uri: str, run_ids: Sequence[str], corruptions: str | None = None, severities: str = "1-5",
    out: str | Path | None = None, data_dir: str | None = None, device: str = "auto", seed: int = 0,
    table: str = "auto", log: bool = True, progress: Any = None,
) -> Result:
    """Evaluate, compute δ, write ``out`` (default ``robustness-<first run id[:8]>/``) and log the files to each run."""
    client = open_client(uri)
    the_plan = plan(client, run_ids, parse_corruptions(corruptions), parse_severities(severities))
    conditions = [rob.CLEAN] + [(c, s) for c in the_plan.corruptions for s in the_plan.severities]
    batch = int(float(the_plan.runs[0].params.get("batch_size", 0) or 0)) or None
    say = progress or (lambda _text: None)
    cache: dict[str, Mapping] = {}

    def evaluation(record: RunRecord) -> Mapping:
        if record.run_id not in cache:
            say(f"evaluating {record.label} run {record.run_id[:8]} ({record.run_name}) on {len(conditions)} conditions")
            trainer = load_trainer(client, record, data_dir, device, batch)
            cache[record.run_id] = evaluate(trainer, conditions, seed, table)
        return cache[record.run_id]

    mtl = {r.run_id: evaluation(r) for r in the_plan.runs}
    stl = {task: [evaluation(r) for r in refs] for task, refs in the_plan.references.items()}
    deltas = rob.delta_table(mtl, stl, the_plan.directions)
    per_corruption = rob.by_corruption(deltas)
    summary = rob.summary(deltas)
    folder = Path(out or f"robustness-{the_plan.runs[0].run_id[:8]}")
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "robustness_deltas.csv", folder / "robustness_by_corruption.csv", folder / "robustness_summary.csv"]
    deltas.to_csv(files[0], index=False)
    per_corruption.to_csv(files[1], index=False)
    summary.to_csv(files[2], index=False)
    refs = "; ".join(f"{t}: {', '.join(r.run_id[:8] for r in rs)}" for t, rs in the_plan.references.items())
    files.append(rob.plot(per_corruption, folder / "robustness.png",
                          f"δ per corruption, mean over severities {the_plan.severities[0]}-{the_plan.severities[-1]}; "
                          f"MTL {', '.join(r.run_id[:8] for r in the_plan.runs)} vs STL {refs}"))
    if log:
        for record in the_plan.runs:
            for path in files:
                client.log_artifact(record.run_id, str(path), ARTIFACT_DIR)
    notes = the_plan.notes + [f"single-task references: {refs}"]
    return Result(deltas, per_corruption, summary, files, notes)
