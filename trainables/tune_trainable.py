"""The Ray Tune function trainable: the trial core (``trainables.trial``) reporting to Ray.

It reports every epoch (so ASHA can stop a trial between epochs) with a checkpoint of the
whole trainer state (so Ray can restore a trial on another worker, or resume a search).
The metric the search optimizes is ``best/val_score``: the running best validation score,
so Optuna, which is told the last reported value, sees the value of the best epoch even for
trials that ASHA stopped early.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from trainables.trainer import Trainer
from trainables.trial import RunSettings, run_trial

STATE_FILE = "trainer.pt"


def train_trial(config: dict[str, Any], settings: RunSettings) -> None:
    """Train one trial's configuration, reporting to Ray Tune every epoch."""
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, weights_only=False)

    def report(metrics: dict[str, Any], trainer: Trainer | None) -> None:
        if trainer is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(trainer.state_dict(), Path(directory) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    run_trial(config, settings, report, state)
