"""Single-task learning: train one task alone (the STL reference of Delta_m, `002` eq. 1).

The other heads still run forward (they share the encoder input) but get weight 0, so
they receive no gradient and the encoder learns only the chosen task.

Implements: `002` eq. 1 (the single-task references of Δm).

Deviates from the authors' code: the `002` authors (Gabriel-SGama/UnitScal_vs_SMTOs,
scripts/*/single_task_baseline_*.sh) train a model built with the one task only; here the model
keeps every head and the others get weight 0, so they receive no gradient and the shared part
gets the same update, at the cost of the other heads' forward passes.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import Hyperparameter, LossWeighting
from trainables.problems.base import TaskSpec


class SingleTask(LossWeighting):
    name = "single_task"
    summary = "trains one task only (the single-task reference for Delta_m)"
    paper = "`002` eq. 1 (single-task references)"
    hyperparameters = {"task": Hyperparameter("", str, "the task to train (default: the first task)")}

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        task = self.params["task"] or self.task_names[0]
        if task not in self.task_names:
            raise ConfigError(f"single_task: unknown task {task!r} (tasks: {', '.join(self.task_names)})")
        self.params["task"] = task
        self.index = self.task_names.index(task)

    def trained_tasks(self) -> list[str]:
        return [self.task_names[self.index]]

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.zeros_like(losses.detach())
        weights[self.index] = 1.0
        return losses[self.index], weights
