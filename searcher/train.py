"""``searcher train``: one training without Ray, logged to MLflow (the debugging path).

It runs the trial core every Ray trial runs (``trainables.trial.run_trial``) and logs the same
params (the resolved config), tags and metrics as a search's trial logger, so a ``train`` run
and a ``tune`` trial of the same configuration read alike.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from searcher import tracking
from searcher.run_record import Tag
from searcher.session import Session, data_source, run_config, session_tags
from trainables.config import run_params
from trainables.trainer import Trainer
from trainables.trial import run_trial


def train_once(
    session: Session,
    tracking_uri: str,
    experiment: str,
    seed: int,
    run_index: int | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Train ``session.methods[0]`` with the fixed parameters; return (MLflow run id, last metrics).

    ``run_index`` (default: ``--param run_index`` or 0) offsets the seed and names the run;
    ``tags`` are added to the run's tags (``searcher rerun`` marks its runs with them).
    """
    method = session.methods[0]
    config = run_config(session, method, seed)
    if run_index is not None:
        config["run_index"] = run_index
    # built before the run is created: a value no run can train with (``fixed`` without
    # weights, missing data) is a one-line error and leaves no run behind
    trainer = Trainer(session.problem, config, session.settings.data)
    params = {**run_params(config, session.problem.defaults), "space": session.space.name,
              "data_source": data_source(session), "max_epochs": session.settings.max_epochs}
    # the experiment id is passed explicitly: `mlflow.set_experiment` would also export
    # MLFLOW_EXPERIMENT_ID, which later searches in this process would silently log to
    experiment_id = tracking.init_store(tracking_uri, experiment)
    tags = tracking.run_tags(config, {**session_tags(session, "train"), **(tags or {})})
    client = MlflowClient(tracking_uri)
    tasks = session.problem.task_names

    def report(metrics: dict[str, Any], _trainer: Any) -> None:
        now = int(time.time() * 1000)
        step = int(metrics["epoch"])
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, step) for k, v in tracking.epoch_metrics(metrics).items()])
        if metrics.get("diverged"):
            client.set_tag(run.info.run_id, Tag.DIVERGED_REASON, str(metrics.get("diverged_reason", "")))
            print(f"DIVERGED: {metrics.get('diverged_reason')}", file=sys.stderr)
        else:
            print(_line(metrics, tasks), flush=True)

    with mlflow.start_run(experiment_id=experiment_id, run_name=tracking.run_name(config), tags=tags) as run:
        mlflow.log_params(params)
        last = run_trial(config, session.settings, report, trainer=trainer)
        tracking.log_best_model(client, run.info.run_id, trainer.best_state)
        mlflow.set_tag(Tag.STATUS, tracking.status_of(last, session.settings.max_epochs, failed=False))
    return run.info.run_id, last


def _line(m: dict[str, Any], tasks: list[str]) -> str:
    parts = [f"epoch {int(m['epoch']):3d}"]
    parts += [f"{t} loss {m[f'train/{t}/loss']:.4f}" for t in tasks]
    parts += [f"{k[4:]} {v:.4f}" for k, v in m.items() if k.startswith("val/") and k != "val/score"]
    parts.append(f"score {m['val/score']:.3f} (best {m['best/val_score']:.3f} @ {int(m['best/epoch'])})")
    return " | ".join(parts)
