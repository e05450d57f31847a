"""Gradient methods that reshape directions or keep state: PCGrad, GradDrop, GradVac, MoCo,
RGW, DB-MTL, GradNorm. Properties from the papers, hand-worked numbers. What every method
must meet (finite on degenerate inputs, T = 11, both gradient levels, exact resume) is checked
for all of them by ``test_contracts.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_tasks as tasks
from trainables.errors import ConfigError
from trainables.methods import build_method
from trainables.methods.db_mtl import DBMTL, loss_scales
from trainables.methods.graddrop import graddrop_masks, sign_purity
from trainables.methods.gradnorm import gradnorm_update
from trainables.methods.gradvac import gradvac_coefficients
from trainables.methods.moco import project_simplex
from trainables.methods.pcgrad import pcgrad_coefficients
from trainables.methods.rgw import RandomGradientWeighting


D64 = torch.float64


def method(name: str, n: int = 2, **params):
    return build_method(name, tasks(n), params)


def t64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=D64)


def random_grads(seed: int, t: int, d: int = 7, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(t, d, generator=gen, dtype=D64)


# ----------------------------------------------------------------------------- shared claims
@pytest.mark.parametrize("name, params", [("moco", {"beta": 1.0}), ("db_mtl", {"beta": 0.0})])
def test_without_tracking_the_direction_is_that_of_the_weights(name, params):
    """MoCo with β = 1 (Y = G) and DB-MTL with β = 0 (M = G/L) track nothing: the direction is
    Σ w_t g_t exactly (otherwise it comes from the tracked gradients, `DIRECTION_NOT_WTG`)."""
    m = method(name, 3, **params)
    grads = random_grads(1, 3)
    direction, weights = m.aggregate(grads, t64([0.5, 1.0, 2.0]))
    assert torch.allclose(direction, weights @ grads, atol=1e-12)


@pytest.mark.parametrize("name", ["moco", "db_mtl", "gradnorm"])
def test_equal_norms_and_losses_give_equal_weights(name):
    """(b) `002` App. A.4: two tasks with equal gradient norms and equal losses get equal weights."""
    for seed in range(5):
        m = method(name, 2)
        g = random_grads(seed, 2)
        g[1] = g[0] * torch.tensor([1.0, -1.0] * 3 + [-1.0], dtype=D64)  # exactly the same norm
        for _ in range(3):  # the assumption holds at every step (stateful methods)
            _, weights = m.aggregate(g, t64([0.8, 0.8]))
            assert weights[0].item() == pytest.approx(weights[1].item(), rel=1e-9)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_surgery_is_symmetric_for_equal_norms(name):
    """(b) For two equal-norm gradients, PCGrad/GradVac's direction weighs both equally (their sum's direction)."""
    g = t64([[1.0, 0.0], [-0.6, 0.8]])  # equal norms, conflicting
    direction, _ = method(name, 2).aggregate(g, t64([1.0, 1.0]))
    total = g.sum(0)
    cos = direction @ total / (direction.norm() * total.norm())
    assert cos.item() == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- PCGrad
def test_pcgrad_hand_worked_example():
    """g1 = (1,0), g2 = (-1,1): g1' = g1 + ½ g2 = (½,½), g2' = g2 + g1 = (0,1); sum (½, 3/2)."""
    direction, weights = method("pcgrad").aggregate(t64([[1.0, 0.0], [-1.0, 1.0]]), t64([1.0, 1.0]))
    assert weights is None
    assert direction.tolist() == pytest.approx([0.5, 1.5], abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_pcgrad_two_tasks_no_conflict_left(seed):
    """T = 2: g1'ᵀg2 >= 0 and g2'ᵀg1 >= 0 with the original gradients (= 0 where they conflicted)."""
    g = random_grads(seed, 2, d=5)
    g[1] = -0.5 * g[0] + 0.2 * g[1]  # make them conflict
    assert g[0] @ g[1] < 0
    coef, projections = pcgrad_coefficients((g @ g.T).numpy(), [[1], [0]])
    projected = torch.as_tensor(coef) @ g
    assert projections == 2
    assert (projected[0] @ g[1]).item() == pytest.approx(0.0, abs=1e-12)
    assert (projected[1] @ g[0]).item() == pytest.approx(0.0, abs=1e-12)
    direction, _ = method("pcgrad").aggregate(g, t64([1.0, 1.0]))
    assert torch.allclose(direction, projected.sum(0), atol=1e-12)


def test_pcgrad_reports_its_projection_rate():
    m = method("pcgrad")
    m.aggregate(t64([[1.0, 0.0], [-1.0, 1.0]]), t64([1.0, 1.0]))  # both project
    m.aggregate(t64([[1.0, 0.0], [1.0, 1.0]]), t64([1.0, 1.0]))  # none
    assert m.epoch_diagnostics() == {"projection_rate": 0.5}
    assert m.epoch_diagnostics() == {}


@pytest.mark.parametrize("t", [2, 4])
def test_pcgrad_without_conflict_is_the_plain_sum(t):
    g = random_grads(3, t).abs()  # all inner products positive
    direction, _ = method("pcgrad", t).aggregate(g, torch.ones(t, dtype=D64))
    assert torch.allclose(direction, g.sum(0), atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_last_projection_leaves_no_conflict(seed):
    """T = 4: after surgery, g_i' has no negative inner product with the last g_j it visited."""
    g = random_grads(seed, 4, d=3)
    orders = [[j for j in range(4) if j != i] for i in range(4)]
    coef, _ = pcgrad_coefficients((g @ g.T).numpy(), orders)
    projected = torch.as_tensor(coef) @ g
    for i in range(4):
        assert (projected[i] @ g[orders[i][-1]]).item() >= -1e-12


def test_pcgrad_seed_makes_orders_reproducible():
    """Same seed -> same directions step after step; another seed -> another order somewhere."""
    grads = [random_grads(s, 5, d=3) for s in range(12)]

    def run(seed):
        return [method("pcgrad", 5, seed=seed).aggregate(g, torch.ones(5, dtype=D64))[0] for g in grads]

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # one instance per step above: check a stream too
    m1, m2 = method("pcgrad", 5, seed=7), method("pcgrad", 5, seed=7)
    for g in grads:
        assert torch.equal(m1.aggregate(g, torch.ones(5))[0], m2.aggregate(g, torch.ones(5))[0])
    assert not all(torch.allclose(a, b) for a, b in zip(first, other))


# ----------------------------------------------------------------------------- GradDrop
def test_graddrop_sign_purity_hand_values():
    g = t64([[1.0, -1.0, 2.0, 0.0], [-3.0, -2.0, 2.0, 0.0]])
    # (1-3)/(1+3) = -1/2 -> 1/4;  all negative -> 0;  all positive -> 1;  all zero -> 1/2
    assert sign_purity(g).tolist() == pytest.approx([0.25, 0.0, 1.0, 0.5])


@pytest.mark.parametrize("seed", range(5))
def test_graddrop_keeps_agreeing_coordinates_and_picks_one_sign(seed):
    """Coordinates where all tasks agree are kept; every output is the sum of one sign's components."""
    g = random_grads(seed, 3, d=200)
    g[:, :40] = g[:, :40].abs()
    g[:, 40:80] = -g[:, 40:80].abs()
    m = method("graddrop", 3, keep_gradnorm_constant=False, seed=seed)
    direction, weights = m.aggregate(g, torch.ones(3, dtype=D64))
    assert weights is None
    assert torch.allclose(direction[:80], g[:, :80].sum(0), atol=1e-14)
    positive = g.clamp_min(0).sum(0)
    negative = g.clamp_max(0).sum(0)
    assert torch.all(torch.isclose(direction, positive, atol=1e-14) | torch.isclose(direction, negative, atol=1e-14))


def test_graddrop_chooses_the_positive_sign_with_probability_p():
    """With f(P) = P, the positive side wins in a fraction P of the coordinates."""
    g = t64([[1.0], [-3.0]]).repeat(1, 20_000)  # P = 1/4
    masks = graddrop_masks(g, torch.rand(20_000, generator=torch.Generator().manual_seed(0), dtype=D64))
    assert masks[0].double().mean().item() == pytest.approx(0.25, abs=0.015)
    assert torch.equal(masks[1], ~masks[0])


def test_graddrop_seed_reproducible_and_norm_restored():
    g = random_grads(4, 3, d=50)
    a = method("graddrop", 3, seed=11)
    b = method("graddrop", 3, seed=11)
    for _ in range(3):
        da, _ = a.aggregate(g, torch.ones(3))
        db, _ = b.aggregate(g, torch.ones(3))
        assert torch.equal(da, db)
        assert da.norm().item() == pytest.approx(g.sum(0).norm().item(), rel=1e-12)  # keep_gradnorm_constant
    dc, _ = method("graddrop", 3, seed=12).aggregate(g, torch.ones(3))
    assert not torch.allclose(dc, method("graddrop", 3, seed=11).aggregate(g, torch.ones(3))[0])


def test_graddrop_full_leak_is_the_plain_sum():
    g = random_grads(5, 3)
    direction, _ = method("graddrop", 3, leak=1.0, keep_gradnorm_constant=False).aggregate(g, torch.ones(3))
    assert torch.allclose(direction, g.sum(0), atol=1e-14)


@pytest.mark.parametrize("params", [{"k": 0.5}, {"leak": 1.5}, {"leak": -0.1}])
def test_graddrop_rejects_bad_parameters(params):
    with pytest.raises(ConfigError):
        method("graddrop", 2, **params)


# ----------------------------------------------------------------------------- GradVac
def test_gradvac_hand_worked_adjustment_reaches_the_target():
    """g1 = (1,0), g2 = (0,1), target ½: g1' = (1, 1/√3), cos(g1', g2) = ½; EMA -> 0.99·½ + 0.01·0."""
    g = t64([[1.0, 0.0], [0.0, 1.0]])
    targets = np.array([[0.0, 0.5], [0.5, 0.0]])
    coef, new_targets, adjustments = gradvac_coefficients((g @ g.T).numpy(), targets, [[1], [0]], beta=0.01)
    projected = torch.as_tensor(coef) @ g
    assert adjustments == 2
    assert projected[0].tolist() == pytest.approx([1.0, 1 / math.sqrt(3)], abs=1e-7)
    for i, j in ((0, 1), (1, 0)):
        cos = projected[i] @ g[j] / (projected[i].norm() * g[j].norm())
        assert cos.item() == pytest.approx(0.5, abs=1e-7)
    assert new_targets[0, 1] == pytest.approx(0.495)


@pytest.mark.parametrize("seed", range(4))
def test_gradvac_adjusted_pairs_meet_their_targets(seed):
    """T = 2 random pairs and random targets: after the update cos(g_i', g_j) >= φ̂_ij."""
    rng = np.random.default_rng(seed)
    g = random_grads(seed, 2, d=4)
    phi_hat = rng.uniform(-0.5, 0.9)
    targets = np.array([[0.0, phi_hat], [phi_hat, 0.0]])
    coef, _, _ = gradvac_coefficients((g @ g.T).numpy(), targets, [[1], [0]], beta=0.01)
    projected = torch.as_tensor(coef) @ g
    for i, j in ((0, 1), (1, 0)):
        cos = (projected[i] @ g[j] / (projected[i].norm() * g[j].norm())).item()
        assert cos >= phi_hat - 1e-6


def test_gradvac_at_zero_targets_is_pcgrad():
    g = random_grads(2, 2)
    g[1] = -0.5 * g[0] + g[1]
    gv, _ = method("gradvac").aggregate(g, torch.ones(2))
    pc, _ = method("pcgrad").aggregate(g, torch.ones(2))
    assert torch.allclose(gv, pc, rtol=1e-6)


def test_gradvac_ema_tracks_similarity_at_every_step():
    """Eq. 3 updates φ̂ even when no adjustment happens (cos 0.8 above target 0)."""
    m = method("gradvac", beta=0.5)
    g = t64([[1.0, 0.0], [0.8, 0.6]])  # cos = 0.8
    direction, _ = m.aggregate(g, torch.ones(2))
    assert torch.allclose(direction, g.sum(0))
    assert m.targets[0, 1].item() == pytest.approx(0.4)
    assert m.targets[1, 0].item() == pytest.approx(0.4)


def test_gradvac_only_whole_model_groups():
    with pytest.raises(ConfigError, match="whole_model"):
        method("gradvac", group_type="all_layer")
    with pytest.raises(ConfigError):
        method("gradvac", beta=0.0)


# ----------------------------------------------------------------------------- MoCo
def test_project_simplex_hand_values():
    assert project_simplex(t64([0.6, 0.6])).tolist() == pytest.approx([0.5, 0.5])
    assert project_simplex(t64([2.0, 0.0])).tolist() == pytest.approx([1.0, 0.0])
    assert project_simplex(t64([0.2, 0.3, 0.5])).tolist() == pytest.approx([0.2, 0.3, 0.5])
    assert project_simplex(t64([1.0, 0.5, -3.0])).tolist() == pytest.approx([0.75, 0.25, 0.0])


@pytest.mark.parametrize("projection", ["simplex", "softmax"])
def test_moco_lambda_stays_on_the_simplex(projection):
    m = method("moco", 5, projection=projection, grad_norm="loss")
    for step in range(30):
        _, lam = m.aggregate(random_grads(step, 5, scale=10.0), torch.rand(5, dtype=D64) + 0.1)
        assert lam.min().item() >= 0.0
        assert lam.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_moco_constant_gradients_converge_to_the_min_norm_point(rho):
    """With constant G: Y -> G, and λ -> argmin over the simplex of ½ λᵀ(GGᵀ + ρI)λ."""
    g = t64([[1.0, 0.2, 0.0], [-0.3, 1.5, 0.4]])
    m = method("moco", 2, beta=0.5, beta_sigma=0.0, gamma=0.2, gamma_sigma=0.0, rho=rho)
    for _ in range(2000):
        direction, lam = m.aggregate(g, t64([1.0, 1.0]))
    assert torch.allclose(m.tracked, g, atol=1e-12)
    q = (g @ g.T + rho * torch.eye(2, dtype=D64)).numpy()
    a = np.clip((q[1, 1] - q[0, 1]) / (q[0, 0] + q[1, 1] - 2 * q[0, 1]), 0, 1)  # weight of task 0
    assert lam.tolist() == pytest.approx([a, 1 - a], abs=1e-6)
    assert torch.allclose(direction, lam @ g, atol=1e-9)


def test_moco_tracking_first_step_is_beta_times_gradients():
    g = random_grads(0, 3)
    m = method("moco", 3)  # β = 0.5, Y starts at 0
    m.aggregate(g, torch.ones(3))
    assert torch.allclose(m.tracked, 0.5 * g)


@pytest.mark.parametrize("name, buffer", [("moco", "tracked"), ("db_mtl", "grad_buffer")])
def test_another_batch_size_restarts_the_tracking_at_the_current_gradients(name, buffer):
    """grad_level=feature: a smaller last batch changes d; the buffer restarts at that step's values."""
    m = method(name, 2)
    m.aggregate(random_grads(0, 2, d=6), t64([1.0, 1.0]))
    small = random_grads(1, 2, d=4)
    direction, _ = m.aggregate(small, t64([1.0, 1.0]))
    expected = small if name == "moco" else small / (1.0 + 1e-8)  # db_mtl tracks g / (L + ε)
    assert torch.allclose(getattr(m, buffer), expected)
    assert torch.isfinite(direction).all() and direction.shape == (4,)
    restarts = m.epoch_diagnostics()
    assert restarts.get("tracking_restarts", restarts.get("ema_restarts")) == 1.0


@pytest.mark.parametrize(
    "params", [{"beta": 0.0}, {"gamma": 0.0}, {"rho": -1.0}, {"projection": "x"}, {"grad_norm": "l2"}]
)
def test_moco_rejects_bad_parameters(params):
    with pytest.raises(ConfigError):
        method("moco", 2, **params)


# ----------------------------------------------------------------------------- RGW
def test_rgw_weights_positive_sum_one_and_seeded():
    a, b, c = method("rgw", 4, seed=3), method("rgw", 4, seed=3), method("rgw", 4, seed=4)
    g = random_grads(0, 4)
    draws = []
    for _ in range(5):
        da, wa = a.aggregate(g, torch.ones(4))
        _, wb = b.aggregate(g, torch.ones(4))
        _, wc = c.aggregate(g, torch.ones(4))
        assert (wa > 0).all() and wa.sum().item() == pytest.approx(1.0)
        assert torch.equal(wa, wb)
        assert torch.allclose(da, wa @ g)
        draws.append((wa, wc))
    assert not all(torch.equal(x, y) for x, y in draws)
    assert RandomGradientWeighting.heads_use_weights is False


def test_rgw_weights_are_uniform_on_average():
    m = method("rgw", 3, seed=0)
    mean = torch.stack([m.sample() for _ in range(4000)]).mean(0)
    assert mean.tolist() == pytest.approx([1 / 3] * 3, abs=0.01)


# ----------------------------------------------------------------------------- DB-MTL
@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_db_mtl_balanced_contributions_have_equal_norm(beta):
    """After balancing, every task's contribution α_t m_t has the largest norm."""
    m = method("db_mtl", 4, beta=beta)
    for step in range(5):
        grads = random_grads(step, 4) * t64([0.1, 1.0, 10.0, 100.0]).unsqueeze(1)
        m.aggregate(grads, t64([0.5, 2.0, 1.0, 3.0]))
        buf = m.grad_buffer
        alpha = buf.norm(dim=1).max() / (buf.norm(dim=1) + 1e-8)
        contributions = (alpha.unsqueeze(1) * buf).norm(dim=1)
        assert contributions.tolist() == pytest.approx([contributions.max().item()] * 4, rel=1e-6)


def test_db_mtl_without_ema_is_scale_invariant_and_weights_are_exact():
    """β = 0: d = Σ (α_t/L_t) g_t, and multiplying a task's loss by c (so g by c) changes nothing."""
    grads, losses = random_grads(1, 3), t64([0.5, 2.0, 1.5])
    d1, w1 = method("db_mtl", 3, beta=0.0).aggregate(grads, losses)
    assert torch.allclose(d1, w1 @ grads, atol=1e-12)
    c = t64([1.0, 7.0, 0.01])
    d2, _ = method("db_mtl", 3, beta=0.0).aggregate(grads * c.unsqueeze(1), losses * c)
    assert torch.allclose(d1, d2, rtol=1e-9)


def test_db_mtl_ema_first_step_and_weights():
    """β = 0.9, m starts at 0: m = 0.1 g/L after the first step; weights α_t / (L_t + ε)."""
    m = method("db_mtl", 2)
    grads, losses = t64([[3.0, 4.0], [0.0, 1.0]]), t64([2.0, 0.5])
    direction, weights = m.aggregate(grads, losses)
    assert torch.allclose(m.grad_buffer, 0.1 * grads / losses.unsqueeze(1))
    # ||m|| = (0.25, 0.2): α = (1, 1.25); weights α/L = (0.5, 2.5)
    assert weights.tolist() == pytest.approx([0.5, 2.5], rel=1e-7)
    assert direction.tolist() == pytest.approx((0.1 * weights @ grads).tolist(), rel=1e-7)


def test_db_mtl_heads_descend_the_log_losses():
    """extra_loss makes the heads' gradient Σ ∇L_t/(L_t + ε); negative losses keep factor 1."""
    m = method("db_mtl", 3)
    losses = t64([0.5, 4.0, -2.0]).requires_grad_(True)
    assert DBMTL.heads_use_weights is False
    (losses.sum() + m.extra_loss(losses)).backward()
    assert losses.grad.tolist() == pytest.approx([1 / (0.5 + 1e-8), 1 / (4 + 1e-8), 1.0])
    assert loss_scales(t64([0.0]))[0].item() == pytest.approx(1e8)
    m.aggregate(random_grads(0, 3), losses.detach())
    assert m.epoch_diagnostics()["negative_losses"] == 1.0


# ----------------------------------------------------------------------------- GradNorm
def test_gradnorm_hand_worked_update():
    """w = (1,1), ||g|| = (3,1), equal loss ratios: targets 2, step (3,-1)·0.025, renormalized to 2."""
    new, diag = gradnorm_update(t64([1.0, 1.0]), t64([3.0, 1.0]), t64([1.0, 1.0]), t64([1.0, 1.0]), 1.5, 0.025)
    assert new.tolist() == pytest.approx([0.925 * 2 / 1.95, 1.025 * 2 / 1.95])
    assert diag["grad_loss"] == pytest.approx(2.0)


def test_gradnorm_larger_gradient_loses_weight():
    """Equal loss ratios: the task with the larger gradient norm gets a smaller weight; Σ w = T."""
    m = method("gradnorm", 3)
    grads = t64([[5.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    losses = t64([1.0, 2.0, 3.0])
    d1, w1 = m.aggregate(grads, losses)  # first step: weights 1, stores L(0)
    assert w1.tolist() == [1.0, 1.0, 1.0] and torch.allclose(d1, grads.sum(0))
    assert m.initial_losses.tolist() == [1.0, 2.0, 3.0]
    w = m.loss_weights.clone()
    assert w[0] < 1.0 < w[1] and w.sum().item() == pytest.approx(3.0)
    _, w2 = m.aggregate(grads, losses * 0.5)  # still equal ratios
    assert torch.equal(w2, w.to(w2.dtype))  # the weights applied are the ones before the update
    assert m.loss_weights[0] < w2[0] and m.loss_weights.sum().item() == pytest.approx(3.0)


def test_gradnorm_slower_task_gains_weight():
    """Equal gradient norms: the task whose loss fell less (larger r_t) gets a larger weight."""
    m = method("gradnorm", 2)
    grads = t64([[1.0, 0.0], [0.0, 1.0]])
    m.aggregate(grads, t64([1.0, 1.0]))
    m.aggregate(grads, t64([0.9, 0.3]))
    assert m.loss_weights[0] > m.loss_weights[1]


def test_gradnorm_weights_stay_nonnegative_with_a_huge_step():
    m = method("gradnorm", 2, w_lr=10.0)
    m.aggregate(t64([[100.0, 0.0], [0.0, 1.0]]), t64([1.0, 1.0]))
    assert (m.loss_weights >= 0).all() and m.loss_weights.sum().item() == pytest.approx(2.0)
    assert m.epoch_diagnostics()["clamped_weights"] == 1.0
