"""What a method may ask of the trainer beyond its core, one small interface each.

A method's core is its kind (``trainables.methods.base``): a ``LossWeighting`` turns the task
losses into the scalar to back-propagate, a ``GradientAggregator`` turns the per-task gradients
into a direction, and a ``GramianWeighting`` needs only their Gramian GGᵀ. Anything more is a
capability the method declares by inheriting one of the classes below and implementing its one
method. The trainer asks ``isinstance(method, Capability)`` once, when it is built, and calls the
hook at the one point of the step it belongs to; a method that declares nothing costs nothing.

Where in a training step each hook runs (``Trainer.train_step``)::

    LooksAhead.before_step            before the forward pass (Auto-Lambda's look-ahead)
    RepresentsTasks.task_representations  between encoder and heads (RotoGrad's rotations)
    ObservesKPIs.observe_kpis         after the losses, before the weights (DTP, AMTL)
    ReusesWeights.reused_weights      instead of per-task gradients, when it returns weights (Nash-MTL, RGW)
    PenalizesGradients.gradient_penalty  on the per-task gradients with their graph (CosReg)
    AddsHeadsLoss.extra_loss          added to the heads' backward (IMTL-L, Nash-MTL, DB-MTL)
    ActsAfterStep.after_step          after the optimizer step, with the batch's new losses (FAMO)

The contract tests (``tests/test_contracts.py``, through ``contract_breaches``) check that a
class declaring a capability implements its hooks, that no class implements a hook without
declaring its capability (the trainer would never call it), and run every declared hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from trainables.problems.base import MTLModel


@dataclass
class StepContext:
    """What a method that takes its own look-ahead step (Auto-Lambda) gets before each step."""

    model: MTLModel
    inputs: torch.Tensor
    targets: Mapping[str, torch.Tensor]
    #: The next validation batch (cycling through the validation split).
    next_val_batch: Callable[[], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]
    #: Task losses (T,) of a model (the trainer's or a copy) on a batch.
    task_losses: Callable[[MTLModel, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]
    optimizer: torch.optim.Optimizer


class Capability:
    """Base of the capability interfaces: ``hooks`` names the methods a declaring class implements."""

    hooks: tuple[str, ...] = ()
    #: What the trainer computes or does for it, in words (for ``searcher methods``).
    described: str = ""
    #: The method kinds (``Method.kind``) whose step calls the hooks: a gradient-only capability
    #: declared by a loss weighting would never be called.
    kinds: tuple[str, ...] = ("loss", "gradient")


class ObservesKPIs(Capability):
    """Driven by task KPIs in [0, 1] of the training batch (DTP, AMTL)."""

    hooks = ("observe_kpis",)
    described = "per-task KPIs of the batch"

    def observe_kpis(self, kpis: torch.Tensor) -> None:
        """Per-task KPIs (T,) of the current training batch, NaN where the problem defines none
        (``Problem.kpi``); called before the step's ``combine`` / ``aggregate``."""
        raise NotImplementedError


class LooksAhead(Capability):
    """Takes its own look-ahead step on a copy of the model before each training step (Auto-Lambda)."""

    hooks = ("before_step",)
    described = "a look-ahead step on a copy of the model with a validation batch"

    def before_step(self, context: StepContext) -> None:
        """Called before each training step, before the forward pass."""
        raise NotImplementedError


class ActsAfterStep(Capability):
    """Updates itself from the batch's losses re-evaluated after the optimizer step (FAMO)."""

    hooks = ("after_step",)
    described = "the batch's losses again after the step"

    def after_step(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        """Called after the optimizer step with the step's losses and the no-grad losses of
        the same batch under the updated model."""
        raise NotImplementedError


class RepresentsTasks(Capability):
    """Gives each task head its own input derived from the shared representation (RotoGrad)."""

    hooks = ("task_representations",)
    described = "per-task representations between encoder and heads"

    def task_representations(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Per-task inputs of the heads from the shared representation z, in task order; used
        in training and evaluation."""
        raise NotImplementedError


class ReusesWeights(Capability):
    """May apply weights without per-task gradients on some steps (Nash-MTL between weight
    updates, RGW always): such a step costs what EW's does."""

    kinds = ("gradient",)
    hooks = ("reused_weights",)
    described = "on some steps no per-task gradients (the weights are reused)"

    def reused_weights(self) -> torch.Tensor | None:
        """Weights (T,) to apply this step without per-task gradients, or None when this step
        needs them. Called once per step, before any per-task gradient is formed."""
        raise NotImplementedError


class PenalizesGradients(Capability):
    """Penalizes the per-task gradients themselves (CosReg): the trainer builds them with their
    graph and back-propagates the penalty through the whole model (a double backward)."""

    kinds = ("gradient",)
    hooks = ("gradient_penalty",)
    described = "their second derivatives (double backward)"

    def gradient_penalty(self, grads: torch.Tensor) -> torch.Tensor | None:
        """A differentiable penalty on the per-task gradients G (T x d, with their graph)."""
        raise NotImplementedError


class AddsHeadsLoss(Capability):
    """Adds a scalar to the heads' backward: to train the method's own parameters (IMTL-L's loss
    scales) or to give the heads other weights than the plain sum (Nash-MTL, DB-MTL)."""

    kinds = ("gradient",)
    hooks = ("extra_loss",)
    described = "a loss of its own added to the heads' backward"

    def extra_loss(self, losses: torch.Tensor) -> torch.Tensor | None:
        """The scalar added to the heads' backward this step, or None for nothing."""
        raise NotImplementedError


#: Every capability, in the order of a training step.
CAPABILITIES: tuple[type[Capability], ...] = (
    LooksAhead,
    RepresentsTasks,
    ObservesKPIs,
    ReusesWeights,
    PenalizesGradients,
    AddsHeadsLoss,
    ActsAfterStep,
)


def declared(cls: type) -> list[type[Capability]]:
    """The capabilities a method class declares, in the order of a training step."""
    return [c for c in CAPABILITIES if issubclass(cls, c)]


def contract_breaches(cls: type) -> list[str]:
    """How a method class misdeclares its capabilities (empty: it declares them right): a
    declared hook left unimplemented, a hook implemented without its capability (the trainer
    would never call it), or a capability its kind's step never asks for."""
    breaches = [f"declares {c.__name__} but does not implement {hook}"
                for c in declared(cls) for hook in c.hooks if getattr(cls, hook) is getattr(c, hook)]
    breaches += [f"implements {hook} without declaring {c.__name__}: the trainer never calls it"
                 for c in CAPABILITIES if not issubclass(cls, c) for hook in c.hooks if hasattr(cls, hook)]
    kind = getattr(cls, "kind", "")
    breaches += [f"declares {c.__name__}, which a {kind!r} method's step never asks for"
                 for c in declared(cls) if kind not in c.kinds]
    return breaches
