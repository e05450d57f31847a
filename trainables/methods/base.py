"""The method interface: how a multi-task optimizer plugs into the trainer.

A method is a small core, its kind, after TorchJD's split between weightings and aggregators:

* ``LossWeighting`` sees only the task losses (T,) and returns the scalar to back-propagate
  and the per-task weights it applied (EW, fixed, UW, ...). It may own trainable
  parameters (UW's log-variances): they are ordinary ``nn.Parameter`` of the method and the
  trainer adds them to the optimizer.
* ``GradientAggregator`` sees the per-task gradients G (T x d) on the shared parameters, or
  on the shared representation when ``grad_level=feature`` (`004` §2.4), and returns the
  update direction (d,) and, where defined, the per-task weights w with direction = wᵀG.
  Methods that reshape directions (PCGrad, ...) return no weights.
* ``GramianWeighting``, a gradient aggregator that needs only GGᵀ: it implements
  ``weights_from_gramian`` and its direction is wᵀG, so the trainer may never form G.

plus the capabilities it declares (``trainables.methods.capabilities``: needs KPIs, takes a
look-ahead step, acts after the step, reuses weights, penalizes gradients, adds a heads loss,
represents tasks), each one small interface the trainer asks for once. What is left here are
the hooks every method has: ``configure``, ``trained_tasks``, ``end_epoch``, ``epoch_diagnostics``.

Every method is an ``nn.Module`` so its state (parameters, buffers, step counters) is saved
in checkpoints with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.methods.capabilities import declared
from trainables.methods.properties import Property
from trainables.problems.base import TaskSpec
from trainables.search_range import SearchRange


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
    #: The properties its paper promises (``trainables.methods.properties``), each checked by the
    #: contract tests on every method that declares it.
    properties: ClassVar[frozenset[Property]] = frozenset()
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
        """What the trainer must compute for this method, in words (for `searcher methods`):
        its kind's inputs, then each declared capability (``trainables.methods.capabilities``)."""
        if cls.kind == "loss":
            parts = ["losses" if declared(cls) else "losses only"]
        elif getattr(cls, "forced_grad_level", None) == "feature":
            parts = ["per-task gradients on the shared representation"]
        else:
            parts = ["per-task gradients (shared parameters, or representation with grad_level=feature)"]
        if issubclass(cls, GramianWeighting):
            parts[-1] += ", only through their Gramian GGᵀ"
        parts += [c.described for c in declared(cls)]
        if cls.trains:
            parts.append(cls.trains)
        return "; ".join(parts)

    def configure(self, config: Mapping[str, Any]) -> None:
        """Called once by the trainer with the resolved run config (lr, ...) after construction."""

    def trained_tasks(self) -> list[str]:
        """The tasks this method trains and that the validation score counts."""
        return list(self.task_names)

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

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (update direction (d,), per-task weights (T,) or None)."""
        raise NotImplementedError


class GramianWeighting(GradientAggregator):
    """A gradient aggregator whose direction is wᵀG with w = ``weights_from_gramian(GGᵀ)``: the
    trainer may then form only GGᵀ, never G (``grad_memory``; ``trainables.gramian``)."""

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Per-task weights w from the Gramian GGᵀ (T x T); the direction is then wᵀG."""
        raise NotImplementedError

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(wᵀG, w) with w from GGᵀ (a subclass may override it to form wᵀG more exactly)."""
        weights = self.weights_from_gramian(grads @ grads.T, losses)
        return weights @ grads, weights


def core(cls: type[Method]) -> type[Method]:
    """The kind a method class is built on: ``LossWeighting``, ``GradientAggregator`` or
    ``GramianWeighting`` (the most specific of the three)."""
    for kind in (GramianWeighting, GradientAggregator, LossWeighting):
        if issubclass(cls, kind):
            return kind
    raise TypeError(f"{cls.__name__} is neither a LossWeighting nor a GradientAggregator")
