"""Gramian-based gradient weightings: MGDA / MGDA-UB, EDM, CDTT, IMTL-G / IMTL, Aligned-MTL(-UB), Nash-MTL.

Properties from the papers (min-norm point, bisector, equal projections, condition number one,
bargaining equation), `002` App. A.4 equal-weight propositions, hand-worked numbers, and the
trainer reaching their own state (CDTT's tensioners, IMTL's loss scales). What every method
must meet (finite on degenerate inputs and in float32, T = 11, both gradient levels, direction
== wᵀG) is checked for all of them by ``test_contracts.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from conftest import make_tasks as _tasks
from trainables.errors import ConfigError
from trainables.methods import METHODS, build_method
from trainables.methods.aligned_mtl import AlignedMTL, AlignedMTLUB, aligned_matrix, aligned_mtl_weights
from trainables.methods.cdtt import WINDOW, apply_tensioners, direction_check, tensions
from trainables.methods.edm import edm_weights
from trainables.methods.imtl import imtl_g_scales
from trainables.methods import nash_mtl as nash_module
from trainables.methods.mgda import MGDA, MGDAUB, gradient_normalizers, mgda_weights
from trainables.methods.min_norm import min_norm_weights, two_task_min_norm
from trainables.methods.nash_mtl import clip_factor, nash_bargaining_weights
from trainables.problems import build_problem
from trainables.trainer import Trainer


def _method(name: str, t: int = 2, **params):
    return build_method(name, _tasks(t), params)


def _gram(grads: np.ndarray) -> np.ndarray:
    return grads @ grads.T


def _equal_norm_pair(seed: int, d: int = 10) -> np.ndarray:
    """Two gradients of equal norm; odd seeds make them conflict (negative inner product)."""
    rng = np.random.default_rng(seed)
    g1, g2 = rng.normal(size=d), rng.normal(size=d)
    if seed % 2:
        g2 = g2 - (1.5 + g2 @ g1 / (g1 @ g1)) * g1
        assert g1 @ g2 < 0
    g2 *= np.linalg.norm(g1) / np.linalg.norm(g2)
    return np.stack([g1, g2])


def _run(method, grads: np.ndarray, losses) -> tuple[np.ndarray, np.ndarray]:
    g = torch.tensor(grads, dtype=torch.float64)
    direction, weights = method.aggregate(g, torch.as_tensor(losses, dtype=torch.float64))
    return direction.numpy(), weights.numpy()


# ============================================================================ trainer runs
def test_cdtt_toy_run_reaches_tensioners():
    """CDTT on the toy for more than one window: the tensioners run (history full) without NaN."""
    trainer = Trainer(build_problem("toy"), {"method": "cdtt", "steps_per_epoch": 2 * WINDOW, "lr": 0.05, "cdtt.alpha": 1.0})
    metrics = list(trainer.fit(1))[0]
    assert all(math.isfinite(v) for v in metrics.values())
    assert int(trainer.method.iterations) == 2 * WINDOW and bool(trainer.method.has_prev)


def test_imtl_trainer_learns_loss_scales():
    """IMTL's s is a method parameter the trainer optimizes (it moves away from zero)."""
    trainer = Trainer(build_problem("toy"), {"method": "imtl", "steps_per_epoch": 5, "lr": 0.05})
    list(trainer.fit(1))
    assert trainer.method.loss_scale.abs().min() > 0


def test_forced_grad_levels():
    """The UB variants declare that they must run on the representation gradients."""
    assert MGDAUB.forced_grad_level == "feature" and AlignedMTLUB.forced_grad_level == "feature"
    assert MGDA.forced_grad_level is None and AlignedMTL.forced_grad_level is None
    assert issubclass(MGDAUB, MGDA) and issubclass(AlignedMTLUB, AlignedMTL)


def test_heads_follow_references():
    """Heads: plain sum everywhere (reference codes); Nash-MTL and IMTL reach theirs through extra_loss."""
    for name in ["mgda", "mgda_ub", "edm", "cdtt", "imtl_g", "imtl", "aligned_mtl", "aligned_mtl_ub", "nash_mtl"]:
        assert METHODS.get(name).heads_use_weights is False
        assert METHODS.get(name).kind == "gradient" and METHODS.get(name).defines_weights


# ============================================================================ (b) `002` A.4
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["mgda", "mgda_ub", "edm", "imtl_g", "imtl", "aligned_mtl", "aligned_mtl_ub", "nash_mtl"])
def test_equal_norms_and_losses_give_equal_weights(name, seed):
    """`002` App. A.4 (Props. 2-4 and their analogues): equal gradient norms and equal losses -> equal weights."""
    grads = _equal_norm_pair(seed)
    direction, weights = _run(_method(name), grads, [0.8, 0.8])
    assert weights[0] == pytest.approx(weights[1], rel=1e-9)
    np.testing.assert_allclose(direction, weights @ grads, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_cdtt_equal_norms_and_losses_give_equal_weights(seed):
    """`002` A.4 Prop. 5: CDTT keeps equal weights with equal norms and losses, tensioners included."""
    method = _method("cdtt", alpha=0.8)
    rng = np.random.default_rng(seed)
    for _ in range(WINDOW + 5):
        grads = _equal_norm_pair(int(rng.integers(1000))) * rng.uniform(0.2, 3.0)
        _, weights = _run(method, grads, [0.6, 0.6])
        assert weights[0] == pytest.approx(weights[1], rel=1e-9)
        assert weights.sum() == pytest.approx(1.0)
    assert bool(method.has_prev)


# ============================================================================ parameters
@pytest.mark.parametrize(
    "name, params",
    [
        ("mgda", {"normalization": "l1"}),
        ("mgda", {"weights_on": "both"}),
        ("mgda_ub", {"solver": "newton"}),
        ("edm", {"solver": "sgd"}),
        ("cdtt", {"alpha": 1.5}),
        ("cdtt", {"alpha": -0.1}),
        ("aligned_mtl", {"scale_mode": "max"}),
        ("nash_mtl", {"optim_niter": 0}),
        ("nash_mtl", {"update_weights_every": 0}),
        ("nash_mtl", {"max_norm": "inf"}),
    ],
)
def test_out_of_range_parameters(name, params):
    """Out-of-range hyperparameters are one-line ConfigErrors naming the method."""
    with pytest.raises(ConfigError, match=name.split("_")[0]):
        _method(name, **params)


# ============================================================================ min-norm solver / MGDA
def _norm_sq(w, gram):
    return np.einsum("...i,ij,...j->...", w, gram, w)


def _grid_2(gram):
    a = np.linspace(0.0, 1.0, 200_001)
    w = np.stack([a, 1 - a], axis=1)
    return w[np.argmin(_norm_sq(w, gram))]


def _grid_3(gram):
    """Grid on the 3-simplex, zoomed around the best point (the objective is convex)."""
    center, half, n = np.array([0.5, 0.5]), 0.5, 201
    for _ in range(5):
        a = np.linspace(center[0] - half, center[0] + half, n)
        b = np.linspace(center[1] - half, center[1] + half, n)
        aa, bb = np.meshgrid(a, b)
        w = np.stack([aa.ravel(), bb.ravel(), 1 - aa.ravel() - bb.ravel()], axis=1)
        w = w[(w >= 0).all(axis=1)]
        best = w[np.argmin(_norm_sq(w, gram))]
        center, half = best[:2], 5 * (2 * half / (n - 1))
    return best


def _slsqp(gram, starts=4, seed=0):
    t = gram.shape[0]
    best = None
    for s in range(starts):
        x0 = np.random.default_rng(seed + s).dirichlet(np.ones(t))
        res = minimize(
            lambda x: x @ gram @ x,
            x0,
            jac=lambda x: 2 * gram @ x,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * t,
            constraints=({"type": "eq", "fun": lambda x: x.sum() - 1.0},),
            options={"ftol": 1e-15, "maxiter": 500},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x


@pytest.mark.parametrize("seed", range(6))
def test_min_norm_two_tasks_matches_grid(seed):
    """T=2: the closed form is the grid minimizer of ||w1 g1 + w2 g2||² on the segment."""
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(2, 5)) * rng.uniform(0.2, 3.0, size=(2, 1))
    gram = _gram(grads)
    np.testing.assert_allclose(min_norm_weights(gram), _grid_2(gram), atol=2e-5)


@pytest.mark.parametrize("seed", range(5))
def test_min_norm_three_tasks_matches_grid(seed):
    """T=3: the solver's weights are the (zoomed) grid minimizer on the simplex."""
    rng = np.random.default_rng(10 + seed)
    grads = rng.normal(size=(3, 6)) * rng.uniform(0.2, 3.0, size=(3, 1))
    gram = _gram(grads)
    np.testing.assert_allclose(min_norm_weights(gram), _grid_3(gram), atol=1e-3)


@pytest.mark.parametrize("t", [4, 5])
def test_min_norm_matches_slsqp(t):
    """T=4, 5: on 25 random Gramians the weights match SLSQP's and the norm is no larger."""
    rng = np.random.default_rng(t)
    for _ in range(25):
        grads = rng.normal(size=(t, 12)) * rng.uniform(0.2, 3.0, size=(t, 1))
        gram = _gram(grads)
        ours, ref = min_norm_weights(gram), _slsqp(gram)
        assert np.all(ours >= 0) and ours.sum() == pytest.approx(1.0, abs=1e-12)
        assert _norm_sq(ours, gram) <= _norm_sq(ref, gram) * (1 + 1e-9) + 1e-15
        np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("t", [3, 6, 11])
def test_min_norm_kkt_conditions(t):
    """KKT of min wᵀKw on the simplex: (Kw)_i = wᵀKw where w_i > 0 and >= it elsewhere."""
    rng = np.random.default_rng(100 + t)
    for _ in range(10):
        grads = rng.normal(size=(t, 15)) + rng.uniform(-1, 1) * rng.normal(size=15)
        gram = _gram(grads)
        w = min_norm_weights(gram)
        kw, value = gram @ w, w @ gram @ w
        scale = np.trace(gram) / t
        assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)
        assert np.all(kw >= value - 1e-9 * scale)
        np.testing.assert_allclose(kw[w > 1e-9], value, atol=1e-8 * scale)


def test_min_norm_two_task_closed_form_hand_worked():
    """g1=(1,0), g2=(0,2): gamma = (4-0)/(1+4) = 0.8, d=(0.8, 0.4) ⟂ g1-g2; vertex when g1ᵀg2 >= |g1|²."""
    gamma, cost = two_task_min_norm(1.0, 0.0, 4.0)
    assert gamma == pytest.approx(0.8) and cost == pytest.approx(0.8)
    d = 0.8 * np.array([1.0, 0.0]) + 0.2 * np.array([0.0, 2.0])
    assert d @ np.array([1.0, -2.0]) == pytest.approx(0.0)
    assert two_task_min_norm(1.0, 2.0, 5.0) == (1.0, 1.0)  # g1=(1,0), g2=(2,1): g1 itself
    assert two_task_min_norm(5.0, 2.0, 1.0) == (0.0, 1.0)


@pytest.mark.parametrize("solver", ["pgd", "fw"])
def test_reference_solvers_approach_the_min_norm(solver):
    """The reference's PGD / Frank-Wolfe (250 iterations) get within 1e-3 of the minimal norm for T=3."""
    rng = np.random.default_rng(7)
    for _ in range(10):
        grads = rng.normal(size=(3, 10))
        gram = _gram(grads)
        w = min_norm_weights(gram, solver)
        assert np.all(w >= -1e-12) and w.sum() == pytest.approx(1.0)
        exact = _norm_sq(min_norm_weights(gram), gram)
        assert _norm_sq(w, gram) <= exact + 1e-3 * np.trace(gram) / 3


def test_min_norm_degenerate_gramians():
    """All-zero Gramian -> uniform; a zero vector -> all weight on it; duplicates -> a minimizer."""
    np.testing.assert_allclose(min_norm_weights(np.zeros((4, 4))), np.full(4, 0.25))
    grads = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(min_norm_weights(_gram(grads)), [0.0, 1.0, 0.0], atol=1e-12)
    grads = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    w = min_norm_weights(_gram(grads))
    assert _norm_sq(w, _gram(grads)) == pytest.approx(0.5, abs=1e-12)


def test_mgda_none_is_plain_min_norm_on_simplex():
    """normalization=none: the weights are the min-norm point of the raw gradients, on the simplex."""
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(4, 9))
    direction, weights = _run(_method("mgda", 4, normalization="none"), grads, np.ones(4))
    np.testing.assert_allclose(weights, min_norm_weights(_gram(grads)), atol=1e-12)
    assert weights.sum() == pytest.approx(1.0) and np.all(weights >= 0)
    np.testing.assert_allclose(direction, weights @ grads, atol=1e-12)


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalizations(normalization):
    """The direction is sum alpha_t g_t / n_t with alpha the min-norm point of the normalized gradients."""
    rng = np.random.default_rng(2)
    grads = rng.normal(size=(3, 8)) * np.array([[0.1], [1.0], [5.0]])
    losses = np.array([0.5, 2.0, 0.1])
    norms = np.linalg.norm(grads, axis=1)
    n = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    alpha = min_norm_weights(_gram(grads / n[:, None]))
    direction, weights = _run(_method("mgda", 3, normalization=normalization), grads, losses)
    np.testing.assert_allclose(weights, alpha / n, rtol=1e-9)
    np.testing.assert_allclose(direction, (alpha[:, None] * grads / n[:, None]).sum(0), rtol=1e-9, atol=1e-12)


def test_mgda_default_is_loss_plus_on_normalized():
    """Defaults follow the `002` code: loss+ normalization; MGDA-UB applies alpha to the raw losses."""
    assert _method("mgda").params == {"normalization": "loss+", "weights_on": "normalized", "solver": "exact"}
    assert _method("mgda_ub").params == {"normalization": "loss+", "weights_on": "raw", "solver": "exact"}
    rng = np.random.default_rng(4)
    grads, losses = rng.normal(size=(3, 6)), np.array([0.3, 1.0, 3.0])
    _, alpha = mgda_weights(_gram(grads), losses, "loss+")
    _, weights_ub = _run(_method("mgda_ub", 3), grads, losses)
    np.testing.assert_allclose(weights_ub, alpha, atol=1e-12)
    assert weights_ub.sum() == pytest.approx(1.0)


def test_mgda_unusable_denominators_leave_gradients_unnormalized():
    """Zero gradient (l2), zero or negative loss (loss, loss+): the denominator is 1 (reference skips zeros)."""
    gram = np.diag([4.0, 0.0, 9.0])
    np.testing.assert_allclose(gradient_normalizers(gram, np.ones(3), "l2"), [2.0, 1.0, 3.0])
    np.testing.assert_allclose(gradient_normalizers(gram, np.array([0.0, 1.0, -2.0]), "loss"), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(gradient_normalizers(gram, np.array([0.5, 1.0, -2.0]), "loss+"), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(gradient_normalizers(gram, np.array([2.0, 1.0, 3.0]), "loss+"), [4.0, 1.0, 9.0])


# ============================================================================ EDM
def test_edm_hand_worked_orthogonal():
    """g1=(3,0), g2=(0,1): unit vectors e1, e2, c=(½,½), w ∝ (½/3, ½/1) -> (¼, ¾), d=(¾, ¾) at 45°."""
    direction, weights = _run(_method("edm"), np.array([[3.0, 0.0], [0.0, 1.0]]), [1.0, 1.0])
    np.testing.assert_allclose(weights, [0.25, 0.75], atol=1e-12)
    np.testing.assert_allclose(direction, [0.75, 0.75], atol=1e-12)


def test_edm_direction_is_bisector():
    """Interior min-norm point of the unit gradients -> the direction has equal angles with every g_t."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        t = int(rng.integers(2, 6))
        grads = (rng.normal(size=(t, 10)) + 0.5 * rng.normal(size=10)) * rng.uniform(0.05, 20.0, size=(t, 1))
        weights, c, norms = edm_weights(_gram(grads))
        if c.min() < 1e-4:
            continue
        d = weights @ grads
        cosines = grads @ d / (norms * np.linalg.norm(d))
        np.testing.assert_allclose(cosines, cosines[0], rtol=1e-8)
        gamma = 1.0 / np.sum(c / norms)
        np.testing.assert_allclose(weights, gamma * c / norms, rtol=1e-10)
        assert weights.sum() == pytest.approx(1.0)
        checked += 1
    assert checked >= 10


def test_edm_is_scale_invariant_per_task():
    """Rescaling one gradient changes its weight inversely: the unit-vector problem is unchanged."""
    rng = np.random.default_rng(5)
    grads = rng.normal(size=(3, 7))
    base, _, _ = edm_weights(_gram(grads))
    scaled = grads * np.array([[10.0], [1.0], [1.0]])
    w, _, _ = edm_weights(_gram(scaled))
    np.testing.assert_allclose((w @ scaled) / np.linalg.norm(w @ scaled), (base @ grads) / np.linalg.norm(base @ grads), atol=1e-10)


def test_edm_zero_gradient_skips_shared_update():
    """A zero task gradient: zero weights (the reference leaves the shared parameters alone)."""
    grads = np.array([[1.0, 2.0], [0.0, 0.0]])
    direction, weights = _run(_method("edm"), grads, [1.0, 1.0])
    assert np.all(weights == 0) and np.all(direction == 0)


# ============================================================================ CDTT
def test_cdtt_tension_function():
    """tension = max(0, α/(1+exp(-e p + e)) + 1 - α): p=1 -> 1-α/2; p -> -inf -> 1-α; NaN -> 0."""
    alpha = 0.6
    t = tensions(alpha, np.array([1.0, -np.inf, np.nan, 3.0]))
    assert t[0] == pytest.approx(1 - alpha / 2)
    assert t[1] == pytest.approx(1 - alpha)
    assert t[2] == 0.0
    assert t[3] == pytest.approx(alpha / (1 + math.exp(-3 * math.e + math.e)) + 1 - alpha)


def test_cdtt_tensioner_weights_match_vectors():
    """Weights w'_j = w_j(1 - Σ r) + r_j give d + Σ tension_t (g_t - d)/||g_t - d||."""
    rng = np.random.default_rng(8)
    grads = rng.normal(size=(3, 6))
    w, _, _ = edm_weights(_gram(grads))
    tension = np.array([0.3, 0.9, 0.5])
    d = w @ grads
    expected = d + sum(tension[i] * (grads[i] - d) / np.linalg.norm(grads[i] - d) for i in range(3))
    np.testing.assert_allclose(apply_tensioners(_gram(grads), w, tension) @ grads, expected, atol=1e-12)


def test_cdtt_direction_check_projects_onto_hyperplane():
    """g_iᵀv < 0: v moves to where the line g_i -> v meets g_iᵀx = 0 (the reference's tan formula)."""
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = np.array([-1.0, 2.0])  # v = (-1, 2): angle with g_1 above 90 degrees
    v = w @ g
    new = direction_check(_gram(g), w) @ g
    assert new @ g[0] == pytest.approx(0.0, abs=1e-12)
    # the reference: tan(pi - angle(g1, v - g1)) ||g1|| * unit(v - (vᵀu)u)
    u = g[0]
    perp = v - (v @ u) * u
    angle = math.acos((g[0] @ (v - g[0])) / np.linalg.norm(v - g[0]))
    np.testing.assert_allclose(new, math.tan(math.pi - angle) * perp / np.linalg.norm(perp), atol=1e-12)


class _ReferenceCDTT:
    """The `002` / authors' CDTT on explicit vectors (trigonometric form), with an exact EDM solve."""

    def __init__(self, t: int, alpha: float) -> None:
        self.alpha, self.window, self.iterations, self.prev, self.corrections = alpha, np.zeros((t, WINDOW)), 0, None, 0

    def step(self, grads: np.ndarray, losses: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(grads, axis=1)
        units = grads / norms[:, None]
        self.window[:, self.iterations % WINDOW] = norms
        self.iterations += 1
        c = min_norm_weights(units @ units.T)
        d = (c @ units) / np.sum(c / norms)
        if self.iterations >= WINDOW:
            sums = self.window.sum(axis=1)
            if self.prev is not None:
                v = d.copy()
                for i in range(len(grads)):
                    p = sums[i] / self.prev[i] + math.log10(losses[i])
                    tension = max(0.0, self.alpha / (1 + math.exp(-p * math.e + math.e)) + 1 - self.alpha)
                    diff = grads[i] - d
                    v = v + tension * diff / np.linalg.norm(diff)
                for i in range(len(grads)):
                    cos = grads[i] @ v / (norms[i] * np.linalg.norm(v))
                    if math.degrees(math.acos(np.clip(cos, -1, 1))) > 90:
                        self.corrections += 1
                        u = units[i]
                        w = v - (v @ u) * u
                        back = v - grads[i]
                        alpha_angle = math.pi - math.acos((grads[i] @ back) / (norms[i] * np.linalg.norm(back)))
                        v = math.tan(alpha_angle) * norms[i] * w / np.linalg.norm(w)
                d = v
            self.prev = sums
        return d


def test_cdtt_matches_reference_algorithm():
    """Over 3 windows of random gradients and losses, our directions equal the reference's vector form."""
    rng = np.random.default_rng(12)
    method, reference = _method("cdtt", 3, alpha=0.8), _ReferenceCDTT(3, 0.8)
    for k in range(3 * WINDOW):
        grads = rng.normal(size=(3, 8)) * rng.uniform(0.05, 0.5, size=(3, 1))
        losses = rng.uniform(0.05, 3.0, size=3)
        direction, weights = _run(method, grads, losses)
        expected = reference.step(grads, losses)
        np.testing.assert_allclose(direction, expected, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(weights @ grads, direction, rtol=1e-8, atol=1e-10)
        if k < WINDOW:  # no tensioners before the window is full and has a predecessor
            np.testing.assert_allclose(weights, edm_weights(_gram(grads))[0], atol=1e-12)
    assert reference.corrections > 0  # the direction check was exercised


def test_cdtt_history_is_in_buffers_and_resumes():
    """The norm window, step count and previous sum are buffers: a reloaded copy continues identically."""
    rng = np.random.default_rng(2)
    method = _method("cdtt", 3, alpha=0.4)
    seq = [(rng.normal(size=(3, 5)), rng.uniform(0.1, 2.0, size=3)) for _ in range(WINDOW + 4)]
    for grads, losses in seq[: WINDOW + 1]:
        _run(method, grads, losses)
    state = method.state_dict()
    assert {"norm_window", "iterations", "prev_window_sum", "has_prev"} <= set(state)
    copy = _method("cdtt", 3, alpha=0.4)
    copy.load_state_dict(state)
    for grads, losses in seq[WINDOW + 1 :]:
        np.testing.assert_array_equal(_run(method, grads, losses)[1], _run(copy, grads, losses)[1])


def test_cdtt_zero_gradient_skips_history():
    """A step with a zero gradient leaves the history untouched (as the reference returns early)."""
    method = _method("cdtt")
    _run(method, np.array([[1.0, 0.0], [0.0, 0.0]]), [1.0, 1.0])
    assert int(method.iterations) == 0


# ============================================================================ IMTL-G / IMTL
def _projections(grads, direction):
    return (grads / np.linalg.norm(grads, axis=1, keepdims=True)) @ direction


@pytest.mark.parametrize("t", [2, 3, 4, 6, 11])
def test_imtl_g_equal_projections(t):
    """IMTL-G: u_iᵀd is the same for every task, and the scales sum to one."""
    rng = np.random.default_rng(t)
    for _ in range(5):
        grads = rng.normal(size=(t, 3 * t)) * rng.uniform(0.1, 10.0, size=(t, 1))
        direction, alpha = _run(_method("imtl_g", t), grads, np.ones(t))
        proj = _projections(grads, direction)
        np.testing.assert_allclose(proj, proj[0], rtol=1e-7)
        assert alpha.sum() == pytest.approx(1.0)


def test_imtl_g_matches_paper_formula_on_vectors():
    """alpha_{2..T} = g_1 Uᵀ (D Uᵀ)^{-1} on explicit vectors (LibMTL's form) equals our Gramian version."""
    rng = np.random.default_rng(3)
    grads = rng.normal(size=(4, 9))
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    d_mat, u_mat = grads[0] - grads[1:], units[0] - units[1:]
    a = grads[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    np.testing.assert_allclose(imtl_g_scales(_gram(grads)), np.concatenate([[1 - a.sum()], a]), rtol=1e-9)


def test_imtl_g_hand_worked():
    """g1=(1,0), g2=(0,2): d=(α1, 2α2) with u1ᵀd = u2ᵀd -> α = (2/3, 1/3)."""
    direction, alpha = _run(_method("imtl_g"), np.array([[1.0, 0.0], [0.0, 2.0]]), [1.0, 1.0])
    np.testing.assert_allclose(alpha, [2 / 3, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(direction, [2 / 3, 2 / 3], atol=1e-12)


def test_imtl_g_negative_scales_are_kept_and_reported():
    """Near-opposite gradients give a negative scale: not clipped, reported as the epoch's min/max."""
    grads = np.array([[1.0, 0.0, 0.0], [-1.0, 0.3, 0.0], [0.2, 1.0, 0.5]])
    method = _method("imtl_g", 3)
    direction, alpha = _run(method, grads, np.ones(3))
    assert alpha.min() < 0
    proj = _projections(grads, direction)
    np.testing.assert_allclose(proj, proj[0], rtol=1e-9)
    _run(method, np.eye(3), np.ones(3))
    diag = method.epoch_diagnostics()
    assert diag["imtl_min_scale"] == pytest.approx(alpha.min())
    assert diag["imtl_max_scale"] >= alpha.max()
    assert method.epoch_diagnostics() == {}  # reset after each epoch


def test_imtl_g_singular_system_uses_pseudo_inverse():
    """Identical gradients (U Dᵀ = 0): the least-squares solution alpha = (1, 0), no NaN."""
    np.testing.assert_allclose(imtl_g_scales(np.ones((2, 2))), [1.0, 0.0])


def test_imtl_weights_are_imtl_g_on_scaled_gradients():
    """IMTL: weights = alpha(e^s g) · e^s, and the direction still has equal unit projections."""
    rng = np.random.default_rng(6)
    grads = rng.normal(size=(3, 8))
    method = _method("imtl", 3)
    s = np.array([0.4, -1.0, 0.2])
    with torch.no_grad():
        method.loss_scale.copy_(torch.tensor(s))
    direction, weights = _run(method, grads, np.ones(3))
    scaled = grads * np.exp(s)[:, None]
    np.testing.assert_allclose(weights, imtl_g_scales(_gram(scaled)) * np.exp(s), rtol=1e-6)
    proj = _projections(grads, direction)
    np.testing.assert_allclose(proj, proj[0], rtol=1e-6)


def test_imtl_extra_loss_gradients():
    """extra_loss: d/ds_t = e^{s_t} L_t - 1 (IMTL-L), and the heads' losses get e^{s_t} - 1 on top of 1."""
    method = _method("imtl", 3)
    s = torch.tensor([0.5, -0.3, 0.0])
    with torch.no_grad():
        method.loss_scale.copy_(s)
    losses = torch.tensor([0.7, 2.0, 0.0], requires_grad=True)
    method.extra_loss(losses).backward()
    np.testing.assert_allclose(method.loss_scale.grad.numpy(), (torch.exp(s) * losses.detach() - 1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(losses.grad.numpy(), (torch.exp(s) - 1).numpy(), rtol=1e-6)
    assert isinstance(method.loss_scale, torch.nn.Parameter)


# ============================================================================ Aligned-MTL
@pytest.mark.parametrize("t, d", [(2, 5), (3, 10), (5, 12), (11, 40), (6, 3)])
def test_aligned_gradients_have_equal_singular_values(t, d):
    """The aligned matrix B G has all nonzero singular values equal to sqrt(λ_min) (condition number 1)."""
    rng = np.random.default_rng(t * 100 + d)
    grads = rng.normal(size=(t, d)) * rng.uniform(0.1, 10.0, size=(t, 1))
    gram = _gram(grads)
    aligned = aligned_matrix(gram) @ grads
    sv = np.linalg.svd(aligned, compute_uv=False)
    sv = sv[sv > 1e-9 * sv.max()]
    assert len(sv) == min(t, d)
    lam = np.linalg.eigvalsh(gram)
    np.testing.assert_allclose(sv, math.sqrt(sorted(lam)[::-1][min(t, d) - 1]), rtol=1e-7)
    direction, weights = _run(_method("aligned_mtl", t), grads, np.ones(t))
    np.testing.assert_allclose(direction, aligned.sum(axis=0), rtol=1e-8, atol=1e-10)


def test_aligned_hand_worked_orthogonal():
    """g1=(3,0), g2=(0,1): λ = 9, 1, B = diag(1/3, 1): weights (1/3, 1), d = (1, 1)."""
    direction, weights = _run(_method("aligned_mtl"), np.array([[3.0, 0.0], [0.0, 1.0]]), [1.0, 1.0])
    np.testing.assert_allclose(weights, [1 / 3, 1.0], atol=1e-12)
    np.testing.assert_allclose(direction, [1.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("mode", ["median", "rmse"])
def test_aligned_scale_modes(mode):
    """median / rmse scale the aligned gradients' common singular value (official code's options)."""
    rng = np.random.default_rng(9)
    grads = rng.normal(size=(4, 10))
    gram = _gram(grads)
    lam = np.sort(np.linalg.eigvalsh(gram))
    sigma = math.sqrt(lam[1]) if mode == "median" else math.sqrt(lam.mean())  # torch.median: lower middle
    sv = np.linalg.svd(aligned_matrix(gram, mode) @ grads, compute_uv=False)
    np.testing.assert_allclose(sv, sigma, rtol=1e-8)
    np.testing.assert_allclose(aligned_mtl_weights(gram, mode), aligned_matrix(gram, mode).sum(1))


# ============================================================================ Nash-MTL
def _raw_alpha(grads):
    """Nash alpha without clipping (max_norm=0)."""
    return _run(_method("nash_mtl", grads.shape[0], max_norm=0.0), grads, np.ones(grads.shape[0]))[1]


@pytest.mark.parametrize("t", [2, 3, 4, 6])
def test_nash_bargaining_equation(t):
    """alpha ⊙ (GGᵀ alpha) = 1 on the raw Gramian (the reference's normalized-and-rescaled problem), alpha > 0."""
    rng = np.random.default_rng(t)
    for _ in range(5):
        grads = rng.normal(size=(t, 4 * t)) * rng.uniform(0.01, 100.0, size=(t, 1))
        alpha = _raw_alpha(grads)
        assert np.all(alpha > 0)
        np.testing.assert_allclose(alpha * (_gram(grads) @ alpha), 1.0, atol=1e-8)


def _reference_ccp(gram, niter=20):
    """The official convex-concave iteration (normalized Gramian, factor in the constraints), with SLSQP for ECOS."""
    t = gram.shape[0]
    f = np.linalg.norm(gram)
    g = gram / f
    alpha = np.ones(t)
    for _ in range(niter):
        prev = alpha
        coef = g.sum(axis=0) + (1 / prev + (1 / (g @ prev)) @ g) / f
        res = minimize(
            lambda a: coef @ a,
            prev,
            jac=lambda a: coef,
            method="SLSQP",
            bounds=[(1e-12, None)] * t,
            constraints=({"type": "ineq", "fun": lambda a: np.log(a * f) + np.log(np.maximum(g @ a, 1e-300))},),
            options={"ftol": 1e-14, "maxiter": 300},
        )
        alpha = res.x
        if np.linalg.norm(alpha - prev) < 1e-6:
            break
    return alpha


@pytest.mark.parametrize("seed", range(3))
def test_nash_matches_reference_iteration(seed):
    """Our Newton solve reaches the fixed point of the official CCP iteration."""
    rng = np.random.default_rng(50 + seed)
    grads = rng.normal(size=(3, 8)) * rng.uniform(0.3, 3.0, size=(3, 1))
    np.testing.assert_allclose(_raw_alpha(grads), _reference_ccp(_gram(grads)), rtol=1e-4)


def test_nash_hand_worked_orthogonal_and_clip():
    """Orthogonal g1 (norm 2), g2 (norm ½): alpha = (½, 2), d = u1 + u2 of norm √2, clipped to norm 1."""
    grads = np.array([[2.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(_raw_alpha(grads), [0.5, 2.0], rtol=1e-10)
    direction, weights = _run(_method("nash_mtl"), grads, [1.0, 1.0])
    factor = 1.0 / (math.sqrt(2) + 1e-6)
    np.testing.assert_allclose(weights, np.array([0.5, 2.0]) * factor, rtol=1e-9)
    assert np.linalg.norm(direction) == pytest.approx(1.0, abs=1e-5)
    assert clip_factor(_gram(grads), np.array([0.5, 2.0]), 10.0) == 1.0


def test_nash_scale_invariant_direction():
    """Scaling all gradients by c scales alpha by 1/c: the direction (before clipping) is unchanged."""
    rng = np.random.default_rng(4)
    grads = rng.normal(size=(3, 7))
    a, b = _raw_alpha(grads), _raw_alpha(grads * 1e3)
    np.testing.assert_allclose(b, a / 1e3, rtol=1e-8)


def test_nash_update_weights_every(monkeypatch):
    """update_weights_every=3: alpha is solved on calls 0, 3, 6 only and reused in between."""
    calls = []
    original = nash_module.nash_bargaining_weights

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(nash_module, "nash_bargaining_weights", counting)
    method = _method("nash_mtl", 3, update_weights_every=3, max_norm=0.0)
    rng = np.random.default_rng(0)
    weights = [_run(method, rng.normal(size=(3, 6)), np.ones(3))[1] for _ in range(7)]
    assert len(calls) == 3 and int(method.step) == 7
    np.testing.assert_array_equal(weights[0], weights[1])
    np.testing.assert_array_equal(weights[0], weights[2])
    assert not np.allclose(weights[2], weights[3])
    np.testing.assert_array_equal(weights[3], weights[5])


def test_nash_unsolvable_keeps_previous_alpha():
    """A zero gradient makes the equation unsolvable: the previous alpha (ones at the start) is kept."""
    prev = np.array([0.3, 0.7])
    np.testing.assert_array_equal(nash_bargaining_weights(np.diag([1.0, 0.0]), prev), prev)
    method = _method("nash_mtl", max_norm=0.0)
    _, weights = _run(method, np.array([[1.0, 0.0], [0.0, 0.0]]), [1.0, 1.0])
    np.testing.assert_array_equal(weights, [1.0, 1.0])
    good = np.array([[2.0, 0.0], [0.0, 0.5]])
    _run(method, good, [1.0, 1.0])
    _, weights = _run(method, np.array([[1.0, 0.0], [-1.0, 0.0]]), [1.0, 1.0])  # opposite: no bargaining point
    np.testing.assert_allclose(weights, [0.5, 2.0], rtol=1e-9)


def test_nash_heads_get_unclipped_alpha_and_state_is_buffered():
    """extra_loss gives the heads alpha (unclipped, as the reference's weighted loss); step/alpha are buffers."""
    method = _method("nash_mtl")
    grads = np.array([[2.0, 0.0], [0.0, 0.5]])
    _run(method, grads, [1.0, 1.0])
    losses = torch.tensor([0.4, 1.1], dtype=torch.float64, requires_grad=True)
    method.extra_loss(losses).backward()
    np.testing.assert_allclose(losses.grad.numpy() + 1.0, [0.5, 2.0], rtol=1e-9)  # trainer adds the plain 1
    assert {"step", "prev_alpha"} <= set(method.state_dict())
    diag = method.epoch_diagnostics()
    assert diag["nash_clip_scale"] == pytest.approx(1 / (math.sqrt(2) + 1e-6))
    assert diag["nash_alpha_sum"] == pytest.approx(2.5)
