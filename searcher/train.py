"""``searcher train``: one training without Ray, logged to MLflow (the debugging path)."""

from __future__ import annotations

import sys
from typing import Any, Mapping

import mlflow

from searcher import tracking
from searcher.session import Session, data_source, run_config, session_tags
from trainables.errors import DivergedError
from trainables.trainer import Trainer


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
    trainer = Trainer(session.problem, config, session.settings.data)
    # the experiment id is passed explicitly: `mlflow.set_experiment` would also export
    # MLFLOW_EXPERIMENT_ID, which later searches in this process would silently log to
    experiment_id = tracking.init_store(tracking_uri, experiment)
    tags = tracking.run_tags(
        config,
        {
            **session_tags(session, "train"),
            **(tags or {}),
        },
    )
    last: dict[str, Any] = {}
    with mlflow.start_run(experiment_id=experiment_id, run_name=tracking.run_name(config), tags=tags) as run:
        params = {k: v for k, v in trainer.config.items()}
        params.update({f"{method}.{k}": v for k, v in trainer.method.params.items()})
        params.update({"data_source": data_source(session), "max_epochs": session.settings.max_epochs})
        mlflow.log_params(params)
        try:
            for metrics in trainer.fit(session.settings.max_epochs):
                last = metrics
                mlflow.log_metrics(tracking.epoch_metrics(metrics), step=int(metrics["epoch"]))
                print(_line(metrics, trainer.tasks), flush=True)
            status = "completed"
        except DivergedError as err:
            last = {**trainer.best, "diverged": 1.0, "epoch": err.epoch}
            mlflow.log_metric("diverged", 1.0, step=err.epoch)
            mlflow.set_tag("searcher.diverged_reason", str(err))
            print(f"DIVERGED: {err}", file=sys.stderr)
            status = "diverged"
        mlflow.set_tag("searcher.status", status)
    return run.info.run_id, last


def _line(m: dict[str, Any], tasks: list[str]) -> str:
    parts = [f"epoch {int(m['epoch']):3d}"]
    parts += [f"{t} loss {m[f'train/{t}/loss']:.4f}" for t in tasks]
    parts += [f"{k[4:]} {v:.4f}" for k, v in m.items() if k.startswith("val/") and k != "val/score"]
    parts.append(f"score {m['val/score']:.3f} (best {m['best/val_score']:.3f} @ {int(m['best/epoch'])})")
    return " | ".join(parts)
