"""EW, fixed weights, single task, UW, CAGrad: properties from their papers and hand-worked numbers;
parsing of method parameters. What every method must meet is checked by ``test_contracts.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.errors import ConfigError
from trainables.methods import build_method
from trainables.methods.cagrad import CAGrad, cagrad_weights
from trainables.methods.fixed import parse_weights
from trainables.problems.base import TaskSpec

CL = TaskSpec("CL", (), likelihood="softmax")
RR = TaskSpec("RR", (), likelihood="gaussian")
L1 = TaskSpec("L1", (), likelihood="laplace")
TASKS = [CL, RR]
LOSSES = torch.tensor([0.7, 2.5], dtype=torch.float64)


# ----------------------------------------------------------------------------- ew
def test_ew_returns_sum_and_unit_weights():
    """EW back-propagates the plain sum of the losses and reports weights of one."""
    total, weights = build_method("ew", TASKS).combine(LOSSES)
    assert total.item() == pytest.approx(3.2)
    assert torch.equal(weights, torch.ones(2, dtype=torch.float64))


# ----------------------------------------------------------------------------- fixed
def test_fixed_applies_weights_exactly():
    """fixed: total = w·L with the given weights, which it also reports."""
    total, weights = build_method("fixed", TASKS, {"weights": "0.3,0.7"}).combine(LOSSES)
    assert total.item() == pytest.approx(0.3 * 0.7 + 0.7 * 2.5)
    assert weights.tolist() == pytest.approx([0.3, 0.7])


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("0.3,0.7", [0.3, 0.7]),
        (" 0.3 , 0.7 ", [0.3, 0.7]),
        ("CL=0.3,RR=0.7", [0.3, 0.7]),
        ("RR=0.7,CL=0.3", [0.3, 0.7]),
        ("0,1", [0.0, 1.0]),
    ],
)
def test_parse_weights_accepts(raw, expected):
    """Positional and TASK=w forms (any order) give the weights in task order."""
    assert parse_weights(raw, ["CL", "RR"]) == pytest.approx(expected)


@pytest.mark.parametrize(
    "raw",
    [
        "0.5",  # too few
        "0.2,0.3,0.5",  # too many
        "",  # none
        "-0.1,1.1",  # negative
        "nan,1",  # not finite
        "inf,1",  # not finite
        "0,0",  # all zero
        "a,b",  # not numbers
        "CL=0.5,XX=0.5",  # wrong task name
        "CL=0.5",  # missing task
        "CL=0.3,RR=0.3,XX=0.4",  # extra task
        "CL=x,RR=1",  # named, not a number
    ],
)
def test_parse_weights_rejects(raw):
    """Malformed fixed weights raise ConfigError."""
    with pytest.raises(ConfigError):
        parse_weights(raw, ["CL", "RR"])


def test_fixed_without_weights_is_config_error():
    """Building fixed with no weights is a ConfigError (not a silent default)."""
    with pytest.raises(ConfigError, match="weights"):
        build_method("fixed", TASKS)


# ----------------------------------------------------------------------------- single_task
def test_single_task_default_is_first_task():
    """single_task trains the first task by default: one-hot weights, loss = L_0."""
    method = build_method("single_task", TASKS)
    total, weights = method.combine(LOSSES)
    assert total.item() == pytest.approx(0.7)
    assert weights.tolist() == [1.0, 0.0]
    assert method.trained_tasks() == ["CL"]


def test_single_task_chosen_task():
    """single_task with task=RR: weights one-hot on RR, loss = L_RR, only RR is trained."""
    method = build_method("single_task", TASKS, {"task": "RR"})
    losses = LOSSES.clone().requires_grad_(True)
    total, weights = method.combine(losses)
    total.backward()
    assert total.item() == pytest.approx(2.5)
    assert weights.tolist() == [0.0, 1.0]
    assert losses.grad.tolist() == [0.0, 1.0]
    assert method.trained_tasks() == ["RR"]


def test_single_task_unknown_task():
    """An unknown task name is a ConfigError."""
    with pytest.raises(ConfigError, match="XX"):
        build_method("single_task", TASKS, {"task": "XX"})


# ----------------------------------------------------------------------------- uw
def _uw(tasks, eta):
    method = build_method("uw", tasks)
    with torch.no_grad():
        method.log_sigma.copy_(torch.tensor(eta))
    return method


def test_uw_at_zero_weights_are_one_and_half():
    """At eta=0: softmax weight 1, Gaussian weight 1/2 (Kendall et al. eqs. 7, 10)."""
    total, weights = build_method("uw", TASKS).combine(LOSSES)
    assert weights.tolist() == pytest.approx([1.0, 0.5])
    assert total.item() == pytest.approx(0.7 + 2.5 / 2)


def test_uw_totals_per_likelihood():
    """softmax exp(-2η)L + η, Gaussian exp(-2η)L/2 + η, Laplace exp(-η)L + η."""
    eta = [0.3, -0.4, 0.8]
    losses = torch.tensor([0.7, 2.5, 1.3])
    method = _uw([CL, RR, L1], eta)
    total, weights = method.combine(losses)
    expected_w = [math.exp(-0.6), math.exp(0.8) / 2, math.exp(-0.8)]
    assert weights.tolist() == pytest.approx(expected_w, rel=1e-6)
    expected_total = sum(w * l for w, l in zip(expected_w, losses.tolist())) + sum(eta)
    assert total.item() == pytest.approx(expected_total, rel=1e-6)


def test_uw_unknown_likelihood_is_gaussian():
    """A task without a known likelihood is treated as Gaussian (weight exp(-2η)/2)."""
    _, weights = _uw([TaskSpec("X", (), likelihood="weird")], [0.25]).combine(torch.tensor([1.0]))
    assert weights.item() == pytest.approx(math.exp(-0.5) / 2, rel=1e-6)


def test_uw_gradient_wrt_eta():
    """d/dη [exp(-2η)L + η] = -2 exp(-2η) L + 1; Gaussian: -exp(-2η) L + 1; Laplace: -exp(-η) L + 1."""
    eta = [0.3, -0.4, 0.8]
    lv = [0.7, 2.5, 1.3]
    method = _uw([CL, RR, L1], eta)
    total, _ = method.combine(torch.tensor(lv))
    total.backward()
    expected = [
        -2 * math.exp(-2 * eta[0]) * lv[0] + 1,
        -math.exp(-2 * eta[1]) * lv[1] + 1,
        -math.exp(-eta[2]) * lv[2] + 1,
    ]
    assert method.log_sigma.grad.tolist() == pytest.approx(expected, rel=1e-5)


def test_uw_log_sigma_is_trainable_parameter():
    """UW's log-variances are parameters of the method (so the trainer optimizes them)."""
    params = list(build_method("uw", TASKS).parameters())
    assert len(params) == 1 and params[0].shape == (2,) and params[0].requires_grad


# ----------------------------------------------------------------------------- cagrad
C = 0.5


def _random_gradients(rng, t, d=10):
    return rng.normal(size=(t, d))


def _dual(w, gram, c):
    t = gram.shape[0]
    b = np.full(t, 1.0 / t)
    g0 = math.sqrt(gram.mean())
    quad = np.einsum("...i,ij,...j->...", w, gram, w)
    return w @ gram @ b + c * g0 * np.sqrt(np.maximum(quad, 0.0))


def _expected_effective(w, gram, c):
    t = gram.shape[0]
    g0 = math.sqrt(gram.mean())
    lam = c * g0 / math.sqrt(w @ gram @ w)
    return (1.0 / t + lam * w) / (1.0 + c**2)


def _brute_force_2(gram, c):
    a = np.linspace(0.0, 1.0, 200_001)
    w = np.stack([a, 1 - a], axis=1)
    return w[np.argmin(_dual(w, gram, c))]


def _brute_force_3(gram, c):
    """Grid on the 3-simplex, zoomed around the best point (f is convex on the simplex)."""
    center, half, n = np.array([0.5, 0.5]), 0.5, 201
    for _ in range(5):
        a = np.linspace(center[0] - half, center[0] + half, n)
        b = np.linspace(center[1] - half, center[1] + half, n)
        aa, bb = np.meshgrid(a, b)
        w = np.stack([aa.ravel(), bb.ravel(), 1 - aa.ravel() - bb.ravel()], axis=1)
        w = w[(w >= 0).all(axis=1)]
        best = w[np.argmin(_dual(w, gram, c))]
        center, half = best[:2], 5 * (2 * half / (n - 1))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_cagrad_equal_norms_give_equal_weights(seed):
    """`002` App. A.4 Prop. 1: two gradients of equal norm get equal CAGrad weights."""
    rng = np.random.default_rng(seed)
    g1 = rng.normal(size=10)
    g2 = rng.normal(size=10)
    if seed % 2:  # make them conflict
        g2 = g2 - (1.5 + g2 @ g1 / (g1 @ g1)) * g1
        assert g1 @ g2 < 0
    g2 *= np.linalg.norm(g1) / np.linalg.norm(g2)
    grads = torch.tensor(np.stack([g1, g2]))
    _, weights = CAGrad([CL, RR], c=C).aggregate(grads, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert weights[0].item() == pytest.approx(weights[1].item(), rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_cagrad_weights_minimize_dual_two_tasks(seed):
    """The SLSQP solution matches a brute-force grid minimizer of the dual on the 2-simplex."""
    rng = np.random.default_rng(100 + seed)
    grads = _random_gradients(rng, 2)
    gram = grads @ grads.T
    expected = _expected_effective(_brute_force_2(gram, C), gram, C)
    np.testing.assert_allclose(cagrad_weights(gram, C), expected, atol=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_cagrad_weights_minimize_dual_three_tasks(seed):
    """The SLSQP solution matches a brute-force grid minimizer of the dual on the 3-simplex."""
    rng = np.random.default_rng(200 + seed)
    grads = _random_gradients(rng, 3)
    gram = grads @ grads.T
    expected = _expected_effective(_brute_force_3(gram, C), gram, C)
    np.testing.assert_allclose(cagrad_weights(gram, C), expected, atol=1e-3)


@pytest.mark.parametrize("t", [2, 3, 5])
def test_cagrad_c_zero_is_mean_gradient(t):
    """c = 0: CAGrad is gradient descent on the average loss (weights 1/T)."""
    rng = np.random.default_rng(t)
    grads = torch.tensor(_random_gradients(rng, t))
    tasks = [TaskSpec(f"t{i}", ()) for i in range(t)]
    direction, weights = build_method("cagrad", tasks, {"c": "0"}).aggregate(grads, torch.ones(t))
    np.testing.assert_allclose(weights.numpy(), np.full(t, 1.0 / t), atol=1e-6)
    np.testing.assert_allclose(direction.numpy(), grads.mean(0).numpy(), atol=1e-6)


@pytest.mark.parametrize("t, seed", [(2, 0), (2, 1), (3, 2), (4, 3)])
def test_cagrad_direction_on_ball_boundary(t, seed):
    """rescale=0: d = g0 + λ g_w lies on the sphere ‖d - g0‖ = c‖g0‖ (the constraint is active)."""
    rng = np.random.default_rng(seed)
    grads = _random_gradients(rng, t)
    d = cagrad_weights(grads @ grads.T, C, rescale=0) @ grads
    g0 = grads.mean(0)
    assert np.linalg.norm(d - g0) == pytest.approx(C * np.linalg.norm(g0), rel=1e-6)


@pytest.mark.parametrize("t, seed", [(2, 0), (2, 1), (3, 2), (4, 3)])
def test_cagrad_strong_duality(t, seed):
    """The worst task improvement min_i g_iᵀd of the direction equals the dual minimum (CAGrad eq. 3)."""
    rng = np.random.default_rng(seed)
    grads = _random_gradients(rng, t)
    gram = grads @ grads.T
    d = cagrad_weights(gram, C, rescale=0) @ grads
    if t == 2:
        dual_min = _dual(_brute_force_2(gram, C), gram, C)
    elif t == 3:
        dual_min = _dual(_brute_force_3(gram, C), gram, C)
    else:  # SLSQP's own minimizer, recovered from the effective weights
        eff = cagrad_weights(gram, C, rescale=0)
        lam = eff.sum() - 1.0
        dual_min = _dual((eff - 1.0 / t) / lam, gram, C)
    assert (grads @ d).min() == pytest.approx(dual_min, rel=2e-3)


@pytest.mark.parametrize("t, seed", [(2, 5), (3, 6)])
def test_cagrad_direction_is_primal_optimal(t, seed):
    """No direction in the ball ‖d - g0‖ <= c‖g0‖ (g0 included) has a better worst-task g_iᵀd."""
    rng = np.random.default_rng(seed)
    grads = _random_gradients(rng, t)
    grads[1] = -0.7 * grads[0] + 0.3 * grads[1]  # a conflicting pair
    d = cagrad_weights(grads @ grads.T, C, rescale=0) @ grads
    g0 = grads.mean(0)
    u = rng.normal(size=(20_000, grads.shape[1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    radius = C * np.linalg.norm(g0) * rng.uniform(size=(20_000, 1)) ** 0.1
    candidates = np.vstack([g0, g0 + radius * u])
    best_other = (candidates @ grads.T).min(axis=1).max()
    worst = (grads @ d).min()
    assert worst >= best_other - 1e-3 * abs(worst)
    assert worst > (grads @ g0).min()


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_rescale(seed):
    """rescale=1 is rescale=0 divided by 1+c², rescale=2 divided by 1+c."""
    rng = np.random.default_rng(seed)
    grads = _random_gradients(rng, 3)
    gram = grads @ grads.T
    raw = cagrad_weights(gram, C, rescale=0)
    np.testing.assert_allclose(cagrad_weights(gram, C, rescale=1), raw / (1 + C**2), rtol=1e-12)
    np.testing.assert_allclose(cagrad_weights(gram, C, rescale=2), raw / (1 + C), rtol=1e-12)


@pytest.mark.parametrize("t, scale", [(2, 1e2), (3, 1e2), (2, 1e-2), (3, 1e-2)])
def test_cagrad_weights_scale_invariant(t, scale):
    """Scaling every gradient by s leaves the weights unchanged (λ = c‖g0‖/‖g_w‖ is scale-free)."""
    rng = np.random.default_rng(7)
    grads = _random_gradients(rng, t)
    base = cagrad_weights(grads @ grads.T, C)
    scaled = cagrad_weights((scale * grads) @ (scale * grads).T, C)
    np.testing.assert_allclose(scaled, base, atol=2e-3)


def test_cagrad_aggregate_direction_is_weighted_sum():
    """aggregate returns direction == weights @ grads, with the weights of cagrad_weights."""
    rng = np.random.default_rng(11)
    grads = torch.tensor(_random_gradients(rng, 3, d=13))
    tasks = [TaskSpec(f"t{i}", ()) for i in range(3)]
    direction, weights = build_method("cagrad", tasks, {"c": "0.4", "rescale": "1"}).aggregate(grads, torch.ones(3))
    torch.testing.assert_close(direction, weights @ grads)
    np.testing.assert_allclose(weights.numpy(), cagrad_weights((grads @ grads.T).numpy(), 0.4, 1), rtol=1e-10)


def test_cagrad_heads_get_plain_sum():
    """CAGrad's heads get the plain sum of their losses (the official implementation)."""
    assert CAGrad.heads_use_weights is False


# ----------------------------------------------------------------------------- parsing & registry
def test_unknown_parameter_names_method():
    """An unknown method parameter is a ConfigError that names the method."""
    with pytest.raises(ConfigError, match="cagrad"):
        build_method("cagrad", TASKS, {"alpha": 0.5})
    with pytest.raises(ConfigError, match="ew"):
        build_method("ew", TASKS, {"c": 0.5})


@pytest.mark.parametrize("params", [{"c": "abc"}, {"rescale": "1.5"}, {"c": None}])
def test_bad_parameter_value(params):
    """A value that cannot be cast to the parameter's type is a ConfigError."""
    with pytest.raises(ConfigError, match="cagrad"):
        build_method("cagrad", TASKS, params)


def test_parameters_are_cast():
    """String values from the command line are cast to the declared types."""
    method = build_method("cagrad", TASKS, {"c": "0.25", "rescale": "2"})
    assert method.params == {"c": 0.25, "rescale": 2}
    assert build_method("cagrad", TASKS).params == {"c": 0.5, "rescale": 1}


def test_unknown_method():
    """build_method with an unknown name is a ConfigError listing the known ones."""
    with pytest.raises(ConfigError, match="nosuch"):
        build_method("nosuch", TASKS)
