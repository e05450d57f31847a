"""MLflow tracking: one run per trial, written from one place.

In a search, only the Ray driver writes to MLflow (``TrialLogger``, a subclass of Ray's
``MLflowLoggerCallback``), so concurrent trials never race on the SQLite database. A single
``searcher train`` writes its own run directly. Both log the same params (the resolved, typed
config: ``trainables.config.run_params``), tags and per-epoch metrics (step = epoch).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import mlflow
from filelock import FileLock
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from searcher.run_record import Status, Tag
from trainables.config import run_params
from trainables.tune_trainable import LINEAGE_KEY

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Where a run keeps the model of its best validation epoch (``keep_model``): ``torch.save`` of
#: ``{"model": state_dict, "method": state_dict, "epoch": int}`` (``Trainer.model_state``).
BEST_MODEL_ARTIFACT = "model/best.pt"

METRIC_PREFIXES = ("train/", "val/", "weight/", "weight_median/", "best/", "time/", "method/", "diag/")
METRIC_KEYS = ("epoch", "diverged")


def tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store (None for any other store, or in memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def store_lock(uri: str, timeout_s: float = 300.0) -> Any:
    """An inter-process lock on a SQLite store's first use (a no-op for other stores).

    MLflow creates and migrates the schema of a new SQLite file on first connection, without
    a lock of its own: two searches started together on a new ``mlflow.db`` raced on it and
    one died in alembic ("Online migration expected to match one row"). A file lock beside
    the database (``mlflow.db.lock``) makes the creation, and the experiment's get-or-create,
    one process at a time; a server store (``http://``) does its own locking.
    """
    path = sqlite_path(uri)
    if path is None:
        return contextlib.nullcontext()
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout_s)


def init_store(uri: str, experiment: str) -> str:
    """Point MLflow at the store, create the experiment if needed; return its id.

    Called on the driver before any trial starts, so the SQLite schema is created once, and
    under ``store_lock`` so that concurrent commands on a new store do not race on it.
    """
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        return found.experiment_id if found else client.create_experiment(experiment)


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The trainer's metrics from a result dict (drops Ray's bookkeeping)."""
    return {
        k: float(v)
        for k, v in result.items()
        if (k.startswith(METRIC_PREFIXES) or k in METRIC_KEYS) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def log_best_model(client: MlflowClient, run_id: str, state: Mapping[str, Any] | None) -> bool:
    """Log a kept best-epoch model state as the run's ``model/best.pt``; False when there is none
    (``keep_model=false``, or no valid epoch)."""
    if not state:
        return False
    import torch

    directory, name = os.path.split(BEST_MODEL_ARTIFACT)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        torch.save(dict(state), path)
        client.log_artifact(run_id, path, directory)
    return True


def checkpoint_best_model(checkpoint: Any) -> dict[str, Any] | None:
    """The kept best-epoch state in a trial's last Ray checkpoint (None: none kept, or no checkpoint)."""
    if checkpoint is None:
        return None
    import torch

    from trainables.tune_trainable import STATE_FILE

    with checkpoint.as_directory() as directory:
        path = Path(directory) / STATE_FILE
        if not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
    return state.get("best_model") if isinstance(state, Mapping) else None


def run_tags(config: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, str]:
    tags = {Tag.METHOD: str(config.get("method", ""))}
    task = config.get("single_task.task")
    if task:
        tags[Tag.TASK] = str(task)
    if config.get("confirm_of"):
        # `searcher confirm`: a new seed of another run's configuration (reports average them)
        tags[Tag.CONFIRM_OF] = str(config["confirm_of"])
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def run_name(config: Mapping[str, Any]) -> str:
    name = str(config.get("method", "run"))
    if config.get("single_task.task"):
        name += f"[{config['single_task.task']}]"
    name = f"{name}-{int(config.get('run_index', 0)):04d}"
    if config.get("repeat") is not None:
        # `confirm` / `rerun`: repeat k of a configuration (a new seed, `trainables.config.repeat_seed`)
        name += f"-seed{int(config['repeat']) + 1}"
    return name


def status_of(last: Mapping[str, Any], max_epochs: int, failed: bool) -> str:
    """completed / stopped_early (by the scheduler) / diverged / failed."""
    if failed:
        return Status.FAILED
    if last.get("diverged"):
        return Status.DIVERGED
    if int(last.get("epoch", 0)) < max_epochs:
        return Status.STOPPED_EARLY
    return Status.COMPLETED


class TrialLogger(MLflowLoggerCallback):
    """Ray's MLflow callback with our run names, tags, params and metric filter."""

    # Ray's callback allows None for each; ours always sets them (``__init__``).
    tracking_uri: str
    experiment_name: str
    tags: dict[str, Any]

    def __init__(
        self,
        uri: str,
        experiment: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        max_epochs: int,
        options: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, Any] | None = None,
    ) -> None:
        """``params``: logged with every trial's resolved config (``run_params`` over the
        problem's ``options``); ``artifacts``: JSON files logged to every trial's run."""
        super().__init__(tracking_uri=uri, experiment_name=experiment, tags=dict(tags))
        self.extra_params = dict(params)
        self.options = dict(options or {})
        self.artifacts = dict(artifacts or {})
        self.max_epochs = max_epochs
        self._last: dict[Any, dict[str, Any]] = {}
        #: Each trial's pbt_lineage.json as last logged (``_log_lineage``).
        self._lineage: dict[str, dict[str, Any]] = {}

    def setup(self, *args: Any, **kwargs: Any) -> None:
        super().setup(*args, **kwargs)
        # Ray resolves the experiment from MLFLOW_EXPERIMENT_ID before the name when that is
        # set (a user's shell, or an earlier `mlflow.set_experiment` in this process); the
        # search's --experiment is the one the user asked for.
        self.mlflow_util.experiment_id = init_store(self.tracking_uri, self.experiment_name)

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_runs:
            return
        existing = self._existing_run(trial.trial_id)
        if existing is not None:
            # A resumed search (or a trial restarted on another node): keep writing to the
            # trial's run, so no MLflow run is duplicated.
            self._trial_runs[trial] = existing
            MlflowClient(self.tracking_uri).set_tag(existing, Tag.STATUS, Status.RUNNING)
            return
        tags = run_tags(trial.config, {**self.tags, Tag.TRIAL_ID: trial.trial_id, Tag.STATUS: Status.RUNNING})
        run = self.mlflow_util.start_run(tags=tags, run_name=run_name(trial.config))
        self._trial_runs[trial] = run.info.run_id
        run_id = self._trial_runs[trial]
        self.mlflow_util.log_params(run_id=run_id, params_to_log={**self.extra_params, **run_params(trial.config, self.options)})
        for name, value in self.artifacts.items():
            MlflowClient(self.tracking_uri).log_dict(run_id, value, name)

    def _existing_run(self, trial_id: str) -> str | None:
        """The run already logged for this trial of this search, if any."""
        search = self.tags.get(Tag.SEARCH)
        if not search:
            return None
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{Tag.TRIAL_ID}` = '{trial_id}' and tags.`{Tag.SEARCH}` = '{search}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        self._last[trial] = result
        step = int(result.get("epoch", iteration))
        run_id = self._trial_runs[trial]
        # One batch (one database commit) per epoch: Ray's util logs metric by metric, a commit
        # each, which on SQLite held the driver about 0.1 s per result and so slowed every trial.
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in epoch_metrics(result).items()]
        MlflowClient(self.tracking_uri).log_batch(run_id, metrics=metrics)
        if result.get("diverged_reason"):
            MlflowClient(self.tracking_uri).set_tag(run_id, Tag.DIVERGED_REASON, result["diverged_reason"])
        if result.get(LINEAGE_KEY):
            self._log_lineage(trial, run_id, result[LINEAGE_KEY])

    def _log_lineage(self, trial: Any, run_id: str, lineage: str) -> None:
        """A trial restored from another's checkpoint (PBT's exploit): its events, each parent
        named by its MLflow run too, as the run's ``pbt_lineage.json`` (rewritten at each exploit,
        ``searcher.pbt.lineage_record``)."""
        import json

        from searcher.pbt import LINEAGE_ARTIFACT, lineage_record

        events = json.loads(lineage)
        run_ids = {t.trial_id: r for t, r in self._trial_runs.items()}
        for event in events:
            parent = str(event.get("parent_trial_id"))
            if parent not in run_ids:
                found = self._existing_run(parent)  # a parent from before a --resume
                if found:
                    run_ids[parent] = found
        client = MlflowClient(self.tracking_uri)
        previous = self._lineage.get(trial.trial_id)
        if previous is None and any(a.path == LINEAGE_ARTIFACT for a in client.list_artifacts(run_id)):
            # a resumed search: the exploits logged before it stopped
            previous = mlflow.artifacts.load_dict(f"{client.get_run(run_id).info.artifact_uri}/{LINEAGE_ARTIFACT}")
        record = lineage_record(trial.trial_id, events, run_ids, previous)
        self._lineage[trial.trial_id] = record
        client.log_dict(run_id, record, LINEAGE_ARTIFACT)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        run_id = self._trial_runs[trial]
        status = status_of(self._last.get(trial, {}), self.max_epochs, failed)
        client = MlflowClient(self.tracking_uri)
        # the best epoch's model rides in the trial's last checkpoint (``keep_model``); only the
        # driver writes to MLflow, so it is logged from here
        try:
            log_best_model(client, run_id, checkpoint_best_model(getattr(trial, "checkpoint", None)))
        except (OSError, RuntimeError, ValueError) as err:
            client.set_tag(run_id, Tag.MODEL_NOTE, f"model/best.pt not logged: {err}"[:5000])
        client.set_tag(run_id, Tag.STATUS, status)
        super().log_trial_end(trial, failed=failed)
