"""The Ray Tune function trainable: the trial core (``trainables.trial``) reporting to Ray.

It reports every epoch (so ASHA can stop a trial between epochs) with a checkpoint of the
whole trainer state (so Ray can restore a trial on another worker, or resume a search).
The metric the search optimizes is ``best/val_score``: the running best validation score,
so Optuna, which is told the last reported value, sees the value of the best epoch even for
trials that ASHA stopped early.

Each checkpoint also names the trial that wrote it and the lr it trained with
(``LINEAGE_FILE``). A trial restored from another trial's checkpoint (PBT's exploit,
``searcher.pbt``) so knows it: it trains the parent's state with its own, new config (the
``fixed`` method keeps its configured weights over the checkpoint's; a new lr rescales the
restored optimizer's), and its first report carries its lineage (``LINEAGE_KEY``: the
parent's events and this one, as JSON) for the driver to log.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from ray import tune

from trainables.trainer import Trainer
from trainables.trial import RunSettings, run_trial

STATE_FILE = "trainer.pt"
#: ``{"trial_id", "lr", "events"}`` of the trial that wrote the checkpoint.
LINEAGE_FILE = "lineage.json"
#: The result key (a JSON string) of the first report after a restore from another trial's checkpoint.
LINEAGE_KEY = "lineage"


def rescale_lr(trainer: Trainer, factor: float) -> None:
    """Multiply the restored optimizer's learning rates (and the schedule's base) by ``factor``:
    the parent's schedule, at the lr the new config asks for (PBT's lr mutation)."""
    if factor == 1.0:
        return
    for group in trainer.optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if trainer.scheduler is not None and hasattr(trainer.scheduler, "base_lrs"):
        trainer.scheduler.base_lrs = [lr * factor for lr in trainer.scheduler.base_lrs]


def restored_event(saved: Mapping[str, Any], trial_id: str | None, trainer: Trainer) -> dict | None:
    """The lineage event of a restore from another trial's checkpoint (None: the trial's own):
    the epoch of the restored state, the parent, and the weights and lr trained from there on."""
    parent = saved.get("trial_id")
    if not parent or parent == trial_id:
        return None
    return {"epoch": trainer.epoch, "parent_trial_id": parent, "weights": trainer.config.get("fixed.weights"),
            "lr": trainer.config["lr"], "parent_lr": saved.get("lr")}


def train_trial(config: dict[str, Any], settings: RunSettings) -> None:
    """Train one trial's configuration, reporting to Ray Tune every epoch."""
    with warnings.catch_warnings():  # called outside a Tuner (tests), Ray warns and gives None
        warnings.simplefilter("ignore", UserWarning)
        trial_id = tune.get_context().get_trial_id()
    state, trainer = None, None
    saved: dict[str, Any] = {}  # the checkpoint's lineage file, if any
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, weights_only=False)
            lineage = Path(directory) / LINEAGE_FILE
            saved = json.loads(lineage.read_text()) if lineage.exists() else {}
    events = list(saved.get("events", []))
    pending: str | None = None
    if state is not None:
        trainer = Trainer(settings.problem_for(config), config, settings.data)
        trainer.load_state_dict(state)
        if saved.get("lr"):
            rescale_lr(trainer, float(trainer.config["lr"]) / float(saved["lr"]))
        event = restored_event(saved, trial_id, trainer)
        if event is not None:
            events.append(event)
            pending = json.dumps(events)
    own: dict[str, Any] = {"trial_id": trial_id, "events": events}

    def report(metrics: dict[str, Any], trainer: Trainer | None) -> None:
        nonlocal pending
        if pending is not None:
            metrics = {**metrics, LINEAGE_KEY: pending}
            pending = None
        if trainer is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(trainer.state_dict(), Path(directory) / STATE_FILE)
            (Path(directory) / LINEAGE_FILE).write_text(json.dumps({**own, "lr": trainer.config["lr"]}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    run_trial(config, settings, report, None, trainer)
