"""Pareto fronts (`003` §2) with mixed directions, ties, duplicates and missing values; counts as `003` Tables 2 and A2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.pareto import dominates, non_dominated, optimizer_counts, pareto_counts
from trainables.errors import ConfigError

# (accuracy: higher is better, error: lower is better)
HIB = [True, False]
POINTS = {
    "a": (0.90, 0.30),   # best accuracy (with its duplicate d)
    "b": (0.80, 0.10),   # best error (with its duplicate c)
    "c": (0.80, 0.10),   # duplicate of b: neither dominates the other, both optimal
    "d": (0.90, 0.30),   # duplicate of a
    "e": (0.85, 0.20),   # in between: a trade-off, optimal
    "f": (0.80, 0.20),   # ties b on accuracy, worse error: dominated by b
    "g": (0.90, 0.35),   # ties a on accuracy, worse error: dominated by a
    "h": (0.70, 0.50),   # dominated by everything above
    "i": (math.nan, 0.05),  # not comparable: never optimal and dominates nothing (else it would beat b, c)
}
FRONT = {"a", "b", "c", "d", "e"}


def test_front_with_mixed_directions_ties_and_duplicates():
    names = list(POINTS)
    mask = non_dominated([POINTS[n] for n in names], HIB)
    assert {n for n, on in zip(names, mask) if on} == FRONT


def test_dominates_pairwise():
    assert dominates(POINTS["b"], POINTS["f"], HIB)       # equal on one, better on the other
    assert not dominates(POINTS["f"], POINTS["b"], HIB)
    assert not dominates(POINTS["b"], POINTS["c"], HIB)   # identical points
    assert not dominates(POINTS["a"], POINTS["b"], HIB) and not dominates(POINTS["b"], POINTS["a"], HIB)
    assert not dominates(POINTS["i"], POINTS["b"], HIB)   # NaN never dominates
    # the directions matter: with both metrics lower-is-better, f (0.80, 0.20) now beats a (0.90, 0.30)
    assert dominates(POINTS["f"], POINTS["a"], [False, False])
    # both lower-is-better: b and c (0.80, 0.10) beat a, d, e, f, g; h (0.70, 0.50) has the lowest first value
    names = "abcdefgh"
    mask = non_dominated([POINTS[n] for n in names], [False, False])
    assert {n for n, on in zip(names, mask) if on} == {"b", "c", "h"}


def test_front_on_003_table_a3():
    """`003` Table A3 (CityScapes, SegNet): mIoU ↑, pixAcc ↑, AbsErr ↓, RelErr ↓ of the best run per method and optimizer.

    UW+Adam has the best AbsErr (0.0136) and RelErr (35.69), CAGrad+Adam the best mIoU and pixAcc, and every
    other row has a lower mIoU (<= 0.7013) and pixAcc (<= 0.9196) and a higher AbsErr and RelErr than UW+Adam,
    so the front is these two. By optimizer (as `003` Table 2): Adam 2 on the front, SGD 0; no Adam row is
    dominated by an SGD row (all six are "PO w.r.t. SGD"), while UW+Adam dominates every SGD row.
    """
    rows = {
        ("EW", "adam"): (0.6898, 0.9165, 0.0196, 109.84), ("EW", "sgd"): (0.6967, 0.9179, 0.0216, 113.82),
        ("UW", "adam"): (0.7052, 0.9202, 0.0136, 35.69), ("UW", "sgd"): (0.6750, 0.9110, 0.0219, 114.67),
        ("RLW", "adam"): (0.7013, 0.9196, 0.0197, 103.61), ("RLW", "sgd"): (0.6918, 0.9156, 0.0227, 113.59),
        ("IMTL", "adam"): (0.6963, 0.9170, 0.0148, 45.63), ("IMTL", "sgd"): (0.6716, 0.9107, 0.0230, 114.38),
        ("PCGrad", "adam"): (0.6770, 0.9135, 0.0226, 103.88), ("PCGrad", "sgd"): (0.6972, 0.9176, 0.0235, 107.06),
        ("CAGrad", "adam"): (0.7088, 0.9208, 0.0162, 66.39), ("CAGrad", "sgd"): (0.6896, 0.9156, 0.0205, 115.52),
    }
    hib = [True, True, False, False]
    keys = list(rows)
    points = np.array([rows[k] for k in keys])
    mask = non_dominated(points, hib)
    assert {k for k, on in zip(keys, mask) if on} == {("UW", "adam"), ("CAGrad", "adam")}

    counts = optimizer_counts(points, [k[1] for k in keys], hib).set_index("optimizer")
    assert counts.loc["adam"].to_dict() == {"runs": 6, "pareto_optimal": 2, "pareto_optimal_vs_others": 6}
    assert counts.loc["sgd"].to_dict() == {"runs": 6, "pareto_optimal": 0, "pareto_optimal_vs_others": 0}

    by_method = pareto_counts([k[0] for k in keys], mask).set_index("group")
    assert by_method["runs"].to_dict() == {"EW": 2, "UW": 2, "RLW": 2, "IMTL": 2, "PCGrad": 2, "CAGrad": 2}
    assert by_method["pareto_optimal"].to_dict() == {"EW": 0, "UW": 1, "RLW": 0, "IMTL": 0, "PCGrad": 0, "CAGrad": 1}


def test_vs_others_is_not_the_full_front():
    """adam x (1, 1) and y (2, 0); sgd z (0, 2) (both higher-better). Full front: x, y, z.
    A second sgd run w (3, 3) dominates every adam run: PO w.r.t. sgd = 0 for adam, and w alone is optimal."""
    points = [(1, 1), (2, 0), (0, 2), (3, 3)]
    counts = optimizer_counts(points, ["adam", "adam", "sgd", "sgd"], [True, True]).set_index("optimizer")
    assert counts.loc["adam"].tolist() == [2, 0, 0]
    assert counts.loc["sgd"].tolist() == [2, 1, 2]
    alone = optimizer_counts(points[:3], ["adam", "adam", "adam"], [True, True])
    assert alone.iloc[0].tolist() == ["adam", 3, 3, 3]  # no other optimizer: nothing dominates from outside


def test_front_properties_on_random_ties():
    """On integer points (many ties and duplicates), checked against the definition by brute force:
    no point of the front is dominated, and every point off it is dominated by one on it."""
    rng = np.random.default_rng(3)
    points = rng.integers(0, 5, size=(60, 3)).astype(float)
    hib = [True, False, True]
    mask = non_dominated(points, hib)
    for i, p in enumerate(points):
        dominated = any(dominates(q, p, hib) for q in points)
        assert mask[i] == (not dominated)
        if not mask[i]:
            assert any(dominates(points[j], p, hib) for j in np.flatnonzero(mask))


def test_bad_shapes_and_empty_input():
    with pytest.raises(ConfigError, match="2 metric columns but 3 directions"):
        non_dominated([(1, 2)], [True, True, True])
    assert non_dominated(np.zeros((0, 2)), HIB).shape == (0,)
    assert optimizer_counts(np.zeros((0, 2)), [], HIB).empty
