"""The method interface: how a multi-task optimizer plugs into the trainer.

Two kinds, after TorchJD's split between weightings and aggregators:

* ``LossWeighting`` sees only the task losses (T,) and returns the scalar to back-propagate
  and the per-task weights it applied (EW, fixed, UW, ...). It may own trainable
  parameters (UW's log-variances): they are ordinary ``nn.Parameter`` of the method and the
  trainer adds them to the optimizer.
* ``GradientAggregator`` sees the per-task gradients G (T x d) on the shared parameters, or
  on the shared representation when ``grad_level=feature`` (`004` §2.4), and returns the
  update direction (d,) and, where defined, the per-task weights w with direction = wᵀG.
  Methods that are a weighting of the gradients only implement ``weights_from_gramian``
  (they need just GGᵀ); methods that reshape directions (PCGrad, ...) override
  ``aggregate`` and return no weights.

Every method is an ``nn.Module`` so its state (parameters, buffers, step counters) is saved
in checkpoints with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.problems.base import TaskSpec
from trainables.search_range import SearchRange


@dataclass
class StepContext:
    """What a method that takes its own look-ahead step (Auto-Lambda) gets before each step."""

    model: nn.Module
    inputs: torch.Tensor
    targets: Mapping[str, torch.Tensor]
    #: The next validation batch (cycling through the validation split).
    next_val_batch: Callable[[], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]
    #: Task losses (T,) of a model (the trainer's or a copy) on a batch.
    task_losses: Callable[[nn.Module, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]
    optimizer: torch.optim.Optimizer


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter (common, or a method's own): default, type, one line of help, and the
    values it may take (``low``/``high`` bounds, open where ``open_low``/``open_high``, or a
    fixed set of ``choices``), checked wherever a value is read, so that the driver refuses a
    bad ``--param`` before any trial starts. A method's own parameter may declare ``search``,
    the range a search draws it from by default (a space may override it)."""

    default: Any
    type: type
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] | None = None
    search: SearchRange | None = None

    def parse(self, method: str, name: str, raw: Any) -> Any:
        """Cast a value given on the command line or by the search to this type, and check it.
        ``method`` owns the parameter ("" for a common one), for the error message."""
        label = f"{method}.{name}" if method else name
        try:
            if self.type is bool:
                text = str(raw).lower()
                if text not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(raw)
                value: Any = text in {"true", "1", "yes"}
            elif self.type is int and isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError(raw)
                value = int(raw)
            else:
                value = self.type(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"cannot read {raw!r} as {self.type.__name__} for {label} ({self.help})"
            ) from None
        problem = self.violation(value)
        if problem:
            raise ConfigError(f"{label} must be {problem}, got {value!r} ({self.help})")
        return value

    def violation(self, value: Any) -> str | None:
        """What ``value`` breaks ("> 0", "one of adam, sgd"), or None when it is allowed."""
        if self.choices is not None and value not in self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.low is None and self.high is None:
            return None
        low = self.low if self.low is not None else -math.inf
        high = self.high if self.high is not None else math.inf
        above = value > low if self.open_low else value >= low
        below = value < high if self.open_high else value <= high
        if above and below:  # (a NaN fails both)
            return None
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


class Method(nn.Module):
    """Base of every multi-task method. Subclasses declare the class attributes below."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: Where the method comes from (paper; equation where it matters).
    paper: ClassVar[str] = ""
    #: "loss" or "gradient".
    kind: ClassVar[str] = ""
    #: Whether the method defines per-task weights (so fixed weights can be extracted).
    defines_weights: ClassVar[bool] = True
    hyperparameters: ClassVar[Mapping[str, Hyperparameter]] = {}

    def __init__(self, tasks: Sequence[TaskSpec], **params: Any) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.n_tasks = len(self.tasks)
        self.params = self.resolve_params(params)

    @classmethod
    def resolve_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every own parameter of the method, typed and checked: the given values, the defaults
        for the rest (what the method runs with, and what a run logs as ``<method>.<param>``)."""
        unknown = sorted(set(params) - set(cls.hyperparameters))
        if unknown:
            known = ", ".join(cls.hyperparameters) or "none"
            raise ConfigError(f"unknown parameter {unknown[0]!r} for method {cls.name} (its parameters: {known})")
        return {
            k: hp.parse(cls.name, k, params[k]) if k in params else hp.default
            for k, hp in cls.hyperparameters.items()
        }

    #: What the method trains besides the model, in words ("" if nothing), for the listing.
    trains: ClassVar[str] = ""

    @classmethod
    def needs(cls) -> str:
        """What the trainer must compute for this method, in words (for `searcher methods`)."""
        if cls.kind == "loss":
            parts = ["losses only" if not cls.needs_kpis else "losses and per-task KPIs of the batch"]
        elif getattr(cls, "forced_grad_level", None) == "feature":
            parts = ["per-task gradients on the shared representation"]
        else:
            parts = ["per-task gradients (shared parameters, or representation with grad_level=feature)"]
        if getattr(cls, "gramian_only", False):
            parts[-1] += ", only through their Gramian GGᵀ"
        if getattr(cls, "needs_gradient_graph", False):
            parts.append("their second derivatives (double backward)")
        if cls.needs_step_context:
            parts.append("a look-ahead step on a copy of the model with a validation batch")
        if cls.needs_post_step_losses:
            parts.append("the batch's losses again after the step")
        if cls.trains:
            parts.append(cls.trains)
        return "; ".join(parts)

    def configure(self, config: Mapping[str, Any]) -> None:
        """Called once by the trainer with the resolved run config (lr, ...) after construction."""

    def task_representations(self, z: torch.Tensor) -> list[torch.Tensor] | None:
        """Per-task inputs of the heads derived from the shared representation (RotoGrad's
        rotations), or None for the plain shared z. Used in training and evaluation."""
        return None

    def trained_tasks(self) -> list[str]:
        """The tasks this method trains and that the validation score counts."""
        return list(self.task_names)

    #: Methods driven by task KPIs in [0, 1] (DTP, AMTL) set this; the trainer then calls
    #: ``observe_kpis`` before ``combine`` / ``aggregate`` with the batch's KPI per task.
    needs_kpis: ClassVar[bool] = False

    def observe_kpis(self, kpis: torch.Tensor) -> None:
        """Per-task KPIs (T,) of the current training batch, NaN where the problem defines
        none (``Problem.kpi``); called before the step's ``combine`` / ``aggregate``."""

    #: Methods that take their own look-ahead step before each training step (Auto-Lambda)
    #: set this; the trainer then calls ``before_step`` with a ``StepContext``.
    needs_step_context: ClassVar[bool] = False

    def before_step(self, context: StepContext) -> None:
        """Called before each training step when ``needs_step_context``."""

    #: Methods that update themselves from the losses re-evaluated on the same batch after
    #: the optimizer step (FAMO) set this; the trainer then calls ``after_step``.
    needs_post_step_losses: ClassVar[bool] = False

    def after_step(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        """Called after the optimizer step when ``needs_post_step_losses`` (no-grad losses)."""

    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        """Called after each training epoch with the epoch's mean task losses (DWA uses it)."""

    def epoch_diagnostics(self) -> dict[str, float]:
        """Per-epoch values worth logging as ``method/<name>`` (e.g. IMTL's raw scales).

        Called once at the end of every epoch; a method that accumulates per-step values
        should reset them here.
        """
        return {}


class LossWeighting(Method):
    kind = "loss"

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (scalar to back-propagate, per-task weights applied or None)."""
        raise NotImplementedError


class GradientAggregator(Method):
    kind = "gradient"
    #: Whether the task heads get the weighted losses (True) or the plain sum (False);
    #: follows each method's reference implementation.
    heads_use_weights: ClassVar[bool] = True
    #: Methods defined on one level only (MGDA-UB, Aligned-MTL-UB: the representation) set
    #: it; the trainer then ignores the ``grad_level`` of the config.
    forced_grad_level: ClassVar[str | None] = None

    def extra_loss(self, losses: torch.Tensor) -> torch.Tensor | None:
        """A scalar added to the heads' backward, to train the method's own parameters
        (e.g. IMTL-L's loss scales); None when the method has none."""
        return None

    #: Methods that penalize the task gradients themselves (CosReg) set this: the trainer
    #: then builds the per-task gradients with their graph and back-propagates
    #: ``gradient_penalty(G)`` through the whole model (a double backward).
    needs_gradient_graph: ClassVar[bool] = False

    def gradient_penalty(self, grads: torch.Tensor) -> torch.Tensor | None:
        """A differentiable penalty on the per-task gradients G (T x d, with their graph)."""
        return None

    #: Methods whose direction is wᵀG with w = ``weights_from_gramian(GGᵀ)`` set it: the trainer
    #: may then form only GGᵀ, never G (``grad_memory``; ``trainables.gramian``).
    gramian_only: ClassVar[bool] = False

    def reused_weights(self) -> torch.Tensor | None:
        """Weights to apply this step WITHOUT per-task gradients (Nash-MTL between weight
        updates): the step then costs what EW's does. None when the step needs them."""
        return None

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Per-task weights w from the Gramian GGᵀ (T x T); the direction is then wᵀG."""
        raise NotImplementedError

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (update direction (d,), per-task weights (T,) or None)."""
        weights = self.weights_from_gramian(grads @ grads.T, losses)
        return weights @ grads, weights
