"""Fixed task weights: minimize sum_t w_t L_t with w given (e.g. extracted from an SMTO, `002` §3.5).

Implements: `002` §3.5 (fixed weights extracted from an SMTO's weights: the linear scalarization
sum_t w_t L_t); Xin et al. 2022.

Deviates from the authors' code: none known (compared with Gabriel-SGama/UnitScal_vs_SMTOs,
optimizers/baselines.py: Baseline(weights=w) back-propagates sum_t w_t L_t, as here).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.methods.base import Hyperparameter, LossWeighting
from trainables.problems.base import TaskSpec


def parse_weights(raw: str, task_names: Sequence[str]) -> list[float]:
    """'0.3,0.7' or 'CL=0.3,RR=0.7' -> [0.3, 0.7] in task order; finite, >= 0, not all 0."""
    parts = [p.strip() for p in str(raw).split(",") if p.strip()]
    if parts and all("=" in p for p in parts):
        named = dict(p.split("=", 1) for p in parts)
        if set(named) != set(task_names):
            raise ConfigError(f"fixed weights name tasks {sorted(named)}, the problem has {list(task_names)}")
        parts = [named[t] for t in task_names]
    if len(parts) != len(task_names):
        raise ConfigError(
            f"fixed weights need {len(task_names)} values (tasks {', '.join(task_names)}), got {len(parts)}: {raw!r}"
        )
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"fixed weights must be numbers, got {raw!r}") from None
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) == 0:
        raise ConfigError(f"fixed weights must be finite, non-negative and not all zero, got {raw!r}")
    return values


class FixedWeights(LossWeighting):
    name = "fixed"
    summary = "constant task weights given as a parameter (e.g. extracted from an SMTO run)"
    paper = "`002` §3.5 (fixed weights from SMTO weights); Xin et al. 2022"
    hyperparameters = {
        "weights": Hyperparameter("", str, "comma-separated weights in task order, or TASK=w pairs"),
    }

    # buffers (registered in __init__, saved in checkpoints), typed for the checker
    weights: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__(tasks, **params)
        if not self.params["weights"]:
            raise ConfigError("method fixed needs its weights, e.g. --param weights=0.5,0.5")
        values = parse_weights(self.params["weights"], self.task_names)
        self.register_buffer("weights", torch.tensor(values))

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        """The configured weights win over a checkpoint's: a restored state (a resumed trial, or a
        PBT trial taking its parent's checkpoint with new weights, ``searcher.pbt``) keeps the
        weights of this run's config. The buffer stays in ``state_dict`` (it records the weights)."""
        state_dict[prefix + "weights"] = self.weights.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args)

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights.to(losses)
        return (w * losses).sum(), w
