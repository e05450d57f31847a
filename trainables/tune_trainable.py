"""The Ray Tune function trainable that wraps the epoch loop.

It reports every epoch (so ASHA can stop a trial between epochs) with a checkpoint of the
whole trainer state (so Ray can restore a trial on another worker, or resume a search).
The metric the search optimizes is ``best/val_score``: the running best validation score,
so Optuna, which is told the last reported value, sees the value of the best epoch even for
trials that ASHA stopped early.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from ray import tune

from trainables.errors import DivergedError
from trainables.problems import build_problem
from trainables.trainer import Trainer

SEARCH_METRIC = "best/val_score"
#: Score of a trial that diverged before any valid epoch (finite: Optuna and ASHA rank it last).
DIVERGED_SCORE = -1e12
STATE_FILE = "trainer.pt"


@dataclass(frozen=True)
class RunSettings:
    """What every trial of a search shares and that is not a hyperparameter."""

    problem: str
    problem_options: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    max_epochs: int = 10
    checkpoint_every: int = 1


def train_trial(config: dict[str, Any], settings: RunSettings) -> None:
    """Train one trial's configuration, reporting to Ray Tune every epoch."""
    problem = build_problem(settings.problem, settings.problem_options)
    trainer = Trainer(problem, config, settings.data)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_state_dict(torch.load(Path(directory) / STATE_FILE, weights_only=False))
    try:
        for metrics in trainer.fit(settings.max_epochs):
            metrics["diverged"] = 0.0
            last = trainer.epoch == settings.max_epochs
            if trainer.epoch % settings.checkpoint_every == 0 or last:
                with tempfile.TemporaryDirectory() as directory:
                    torch.save(trainer.state_dict(), Path(directory) / STATE_FILE)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
            else:
                tune.report(metrics)
    except DivergedError as err:
        best = dict(trainer.best)
        if best.get("best/epoch", 0) == 0:
            # No valid epoch: every objective a search may rank by gets its worst value
            # (finite, so Optuna, NSGA-II and ASHA accept it).
            best["best/val_score"] = DIVERGED_SCORE
            for task in problem.tasks:
                for metric in task.metrics:
                    worst = DIVERGED_SCORE if metric.higher_is_better else -DIVERGED_SCORE
                    best[f"best/val/{task.name}/{metric.name}"] = worst
        tune.report({**best, "epoch": err.epoch, "diverged": 1.0, "diverged_reason": str(err)})
