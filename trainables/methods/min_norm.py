"""Min-norm point of the convex hull of T vectors, from their Gramian only.

Shared by MGDA / MGDA-UB (Sener & Koltun, NeurIPS 2018, eq. 3: min_w ||sum_t w_t g_t||^2 over
the simplex), EDM (Katrutsa et al. 2020: the same problem on unit gradients) and CDTT.

The reference code (isl-org/MultiObjectiveOptimization ``min_norm_solvers.py``, reused by the
`002` authors in ``optimizers/min_norm.py``) works as follows, and so do we, on the Gramian K:

* two vectors: the closed form of the paper's Algorithm 1 (``two_task_min_norm``);
* T >= 3: start from the best pair (the closed form on every pair), then iterate. The reference
  offers projected gradient descent with an exact line search (``find_min_norm_element``, used
  by the `002` MGDA) and Frank-Wolfe (``find_min_norm_element_FW``, used by the `002` EDM and
  CDTT), both stopped after 250 iterations or an L1 change below 1e-5. Both are available here
  (``solver="pgd"`` / ``"fw"``).

Deviations, on purpose:

* ``solver="exact"`` (our default) finishes the problem with a primal active-set method on the
  Gramian, which terminates at the exact minimizer. On random Gramians (T = 3..11, checked
  against SLSQP) the reference's PGD leaves weights up to ~0.2 off for T = 11 and its FW up to
  ~0.05 off for T = 3..11 after their 250 iterations; the papers define the min-norm point, so we
  return it.
* the reference's two-vector closed form returns 0.999 / 0.001 (not 1 / 0) when the minimum is at
  a vertex; we return the exact vertex (the authors' own TODO questions the constants).
* all-zero Gramians (every gradient zero: every point of the simplex is a minimizer) give the
  uniform weights 1/T instead of the reference's arbitrary (0.999, 0.001, 0, ...).
"""

from __future__ import annotations

import numpy as np

#: Iteration cap and stopping threshold of the reference's PGD / Frank-Wolfe solvers.
MAX_ITER = 250
STOP_CRIT = 1e-5
SOLVERS = ("exact", "pgd", "fw")

_FEAS_TOL = 1e-12
_OPT_TOL = 1e-11
_RIDGE = 1e-13


def two_task_min_norm(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """argmin_c ||c x1 + (1-c) x2||^2 on [0, 1] from <x1,x1>, <x1,x2>, <x2,x2>: (c, min value)."""
    if v12 >= v11:  # x1 is the min-norm point of the segment
        return 1.0, float(v11)
    if v12 >= v22:  # x2 is
        return 0.0, float(v22)
    gamma = (v22 - v12) / (v11 + v22 - 2.0 * v12)
    return float(gamma), float(v22 + gamma * (v12 - v22))


def best_pair(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """The min-norm point over all segments [x_i, x_j] (the reference's initialization)."""
    t = gram.shape[0]
    best = (0, 1, 1.0, np.inf)
    for i in range(t):
        for j in range(i + 1, t):
            c, value = two_task_min_norm(gram[i, i], gram[i, j], gram[j, j])
            if value < best[3]:
                best = (i, j, c, value)
    i, j, c, value = best
    w = np.zeros(t)
    w[i] += c
    w[j] += 1.0 - c
    return w, float(value)


def project_to_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {z >= 0, sum z = 1} (the reference's sort-based routine)."""
    m = len(y)
    sorted_y = np.sort(y)[::-1]
    tmpsum = 0.0
    tmax_f = (np.sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += sorted_y[i]
        tmax = (tmpsum - 1.0) / (i + 1.0)
        if tmax > sorted_y[i + 1]:
            tmax_f = tmax
            break
    return np.maximum(y - tmax_f, 0.0)


def _pgd_next_point(cur: np.ndarray, grad: np.ndarray) -> np.ndarray:
    n = len(cur)
    proj_grad = grad - np.sum(grad) / n
    tm1 = -cur[proj_grad < 0] / proj_grad[proj_grad < 0]
    tm2 = (1.0 - cur[proj_grad > 0]) / proj_grad[proj_grad > 0]
    t = 1.0
    if np.any(tm1 > 1e-7):
        t = float(np.min(tm1[tm1 > 1e-7]))
    if np.any(tm2 > 1e-7):
        t = min(t, float(np.min(tm2[tm2 > 1e-7])))
    return project_to_simplex(proj_grad * t + cur)


def _pgd(gram: np.ndarray, w: np.ndarray, max_iter: int, stop: float) -> np.ndarray:
    """The reference's projected gradient descent with a line search between iterates."""
    for _ in range(max_iter):
        new_point = _pgd_next_point(w, -gram @ w)
        nc, _ = two_task_min_norm(w @ gram @ w, w @ gram @ new_point, new_point @ gram @ new_point)
        new_w = nc * w + (1.0 - nc) * new_point
        if np.sum(np.abs(new_w - w)) < stop:
            return w
        w = new_w
    return w


def _frank_wolfe(gram: np.ndarray, w: np.ndarray, max_iter: int, stop: float) -> np.ndarray:
    """The reference's Frank-Wolfe: move towards the vertex of smallest <x_t, current point>."""
    for _ in range(max_iter):
        t = int(np.argmin(gram @ w))
        nc, _ = two_task_min_norm(w @ gram @ w, w @ gram[:, t], gram[t, t])
        new_w = nc * w
        new_w[t] += 1.0 - nc
        if np.sum(np.abs(new_w - w)) < stop:
            return w
        w = new_w
    return w


def _equality_qp(gram: np.ndarray, support: np.ndarray) -> np.ndarray:
    """min wᵀKw subject to sum w = 1 with w zero off ``support`` (KKT system, least squares)."""
    m = len(support)
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = gram[np.ix_(support, support)]
    kkt[:m, m] = 1.0
    kkt[m, :m] = 1.0
    rhs = np.zeros(m + 1)
    rhs[m] = 1.0
    return np.linalg.lstsq(kkt, rhs, rcond=None)[0][:m]


def _active_set(gram: np.ndarray, w: np.ndarray, max_iter: int) -> np.ndarray:
    """Primal active-set method for min wᵀKw on the simplex, from the feasible point ``w``."""
    t = len(w)
    gram = gram + _RIDGE * np.eye(t)  # strictly convex: unique subproblem solutions, no cycling
    in_support = w > 0
    for _ in range(max_iter):
        support = np.flatnonzero(in_support)
        z = _equality_qp(gram, support)
        if np.all(z >= -_FEAS_TOL):
            w = np.zeros(t)
            w[support] = np.maximum(z, 0.0)
            w /= w.sum()
            grad = gram @ w
            value = w @ grad
            outside = np.flatnonzero(~in_support)
            if outside.size == 0:
                return w
            j = outside[np.argmin(grad[outside])]
            if grad[j] >= value - _OPT_TOL * max(1.0, abs(float(value))):
                return w  # KKT: no vertex improves the objective
            in_support[j] = True
            continue
        # the subproblem's minimizer leaves the simplex: walk towards it until a weight hits zero
        current = w[support]
        step = z - current
        shrinking = step < 0
        ratios = current[shrinking] / -step[shrinking]
        alpha = min(1.0, float(ratios.min()))
        current = current + alpha * step
        dropped = support[shrinking][ratios <= alpha + 1e-15]
        current[np.isin(support, dropped)] = 0.0
        current = np.maximum(current, 0.0)
        w = np.zeros(t)
        w[support] = current
        w /= w.sum()
        in_support = w > 0
    return w


def min_norm_weights(
    gram: np.ndarray, solver: str = "exact", max_iter: int = MAX_ITER, stop_crit: float = STOP_CRIT
) -> np.ndarray:
    """Weights w on the simplex minimizing ||sum_t w_t x_t||^2 = wᵀKw, from K = XXᵀ (T x T).

    The Gramian is divided by its mean diagonal first (the minimizer is unchanged) so that the
    tolerances are relative.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown min-norm solver {solver!r} (known: {', '.join(SOLVERS)})")
    gram = np.asarray(gram, dtype=np.float64)
    t = gram.shape[0]
    if t == 1:
        return np.ones(1)
    scale = float(np.trace(gram)) / t
    if not np.isfinite(scale) or scale <= 0.0:  # every vector is zero: any point is the minimizer
        return np.full(t, 1.0 / t)
    gram = 0.5 * (gram + gram.T) / scale
    w, _ = best_pair(gram)
    if t == 2:  # the closed form is the exact minimizer
        return w
    if solver == "pgd":
        return _pgd(gram, w, max_iter, stop_crit)
    if solver == "fw":
        return _frank_wolfe(gram, w, max_iter, stop_crit)
    return _active_set(gram, w, max_iter=10 * t + 50)
