"""Budget curves (``analysis.budget``, Dodge et al. 2019 §3 eq. 1) and their figure.

The expected values are worked out by hand on small inputs and checked against a brute-force
enumeration of every ordered draw with replacement.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from analysis import report_plots
from analysis.budget import COLUMNS, budget_curves, expected_at_best, expected_max

PNG = b"\x89PNG\r\n\x1a\n"


def brute_force(selection: list[float], reported: list[float], n: int) -> tuple[float, float]:
    """Mean and std of ``reported`` at the winner over all N^n ordered draws (ties: the first drawn wins)."""
    outcomes = []
    for draw in itertools.product(range(len(selection)), repeat=n):
        best = max(selection[i] for i in draw)
        winner = next(i for i in draw if selection[i] == best)
        outcomes.append(reported[winner])
    return float(np.mean(outcomes)), float(np.std(outcomes))


def test_expected_max_hand_worked() -> None:
    mean, std = expected_max([3.0, 1.0, 2.0])
    assert len(mean) == len(std) == 3
    # n = 1: the sample mean and the population std
    assert mean[0] == pytest.approx(2.0)
    assert std[0] == pytest.approx(np.std([1.0, 2.0, 3.0], ddof=0))
    # n = 2: P = (1/9, 3/9, 5/9)
    assert mean[1] == pytest.approx(22 / 9)
    p = np.array([1, 3, 5]) / 9
    assert std[1] == pytest.approx(math.sqrt(float(p @ (np.array([1, 2, 3]) - 22 / 9) ** 2)))
    # n = 3: P = (1/27, 7/27, 19/27)
    assert mean[2] == pytest.approx(72 / 27)


def test_expected_max_limits_and_shape() -> None:
    mean, std = expected_max([1.0, 2.0, 3.0], n_max=200)
    assert len(mean) == 200
    assert mean[-1] == pytest.approx(3.0, abs=1e-12) and std[-1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(mean) >= -1e-12)  # more trials never lower the expected best
    assert np.all(mean <= 3.0 + 1e-12) and np.all(mean >= 1.0)
    single_mean, single_std = expected_max([0.7], n_max=5)
    np.testing.assert_allclose(single_mean, 0.7)
    np.testing.assert_allclose(single_std, 0.0)
    empty_mean, empty_std = expected_max([])
    assert empty_mean.size == 0 and empty_std.size == 0
    assert expected_max([math.nan, math.nan])[0].size == 0
    assert expected_max([1.0, 2.0], n_max=0)[0].size == 0


def test_expected_max_drops_nan() -> None:
    with_nan = expected_max([1.0, math.nan, 3.0, 2.0])
    without = expected_max([1.0, 2.0, 3.0])
    assert len(with_nan[0]) == 3  # N counts only the values kept
    np.testing.assert_allclose(with_nan[0], without[0])
    np.testing.assert_allclose(with_nan[1], without[1])


def test_expected_at_best_hand_worked() -> None:
    mean, std = expected_at_best([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    for n in (1, 2, 3):
        p = np.array([1 ** n, 2 ** n - 1 ** n, 3 ** n - 2 ** n]) / 3 ** n
        assert mean[n - 1] == pytest.approx(10 * p[0] + 20 * p[1] + 30 * p[2])
    # reported equal to the selection: the same curve as expected_max
    np.testing.assert_allclose(expected_at_best([4.0, 1.0, 2.5], [4.0, 1.0, 2.5])[0], expected_max([4.0, 1.0, 2.5])[0])
    # the order of the trials does not matter, only the pairing
    np.testing.assert_allclose(expected_at_best([3.0, 1.0, 2.0], [30.0, 10.0, 20.0])[0], mean)
    with pytest.raises(ValueError):
        expected_at_best([1.0, 2.0], [1.0])


def test_expected_at_best_ties() -> None:
    # levels: selection 1 -> {10} and selection 2 -> {20, 40} (mean 30, population variance 100)
    mean, std = expected_at_best([1.0, 2.0, 2.0], [10.0, 20.0, 40.0])
    # n = 1: P = (1/3, 2/3); the sample mean and the population std of the reported values
    assert mean[0] == pytest.approx(70 / 3)
    assert std[0] ** 2 == pytest.approx(4200 / 27)
    # n = 2: P = (1/9, 8/9): mean = 10/9 + 8/9 * 30 = 250/9,
    # var = 1/9 (10 - 250/9)^2 + 8/9 (100 + (30 - 250/9)^2) = 10400/81
    assert mean[1] == pytest.approx(250 / 9)
    assert std[1] ** 2 == pytest.approx(10400 / 81)
    # both agree with enumerating the 9 draws, a tie going to the trial drawn first
    mean, std = expected_at_best([1.0, 2.0, 2.0], [10.0, 20.0, 40.0], n_max=4)
    for n in (1, 2, 3, 4):
        bf_mean, bf_std = brute_force([1.0, 2.0, 2.0], [10.0, 20.0, 40.0], n)
        assert mean[n - 1] == pytest.approx(bf_mean, rel=1e-12)
        assert std[n - 1] == pytest.approx(bf_std, rel=1e-9)


def test_expected_at_best_nan_handling() -> None:
    # a trial without a selection score cannot win: it is dropped
    np.testing.assert_allclose(expected_at_best([1.0, math.nan, 2.0], [5.0, 99.0, 7.0])[0],
                               expected_at_best([1.0, 2.0], [5.0, 7.0])[0])
    # a missing reported value of a trial that may win leaves the expectation undefined
    assert np.isnan(expected_at_best([1.0, 2.0], [math.nan, 7.0])[0]).all()
    assert expected_at_best([math.nan], [1.0])[0].size == 0


@pytest.mark.parametrize("selection, reported", [
    ([0.3, 0.9, 0.1, 0.5], [1.0, -2.0, 4.0, 8.0]),  # distinct
    ([0.5, 0.9, 0.5, 0.9], [1.0, -2.0, 4.0, 8.0]),  # two tied pairs
])
def test_brute_force_enumeration(selection: list[float], reported: list[float]) -> None:
    """N = 4, n = 3: the 4^3 ordered draws with replacement give the estimators exactly."""
    max_mean, max_std = expected_max(selection, n_max=3)
    bf_mean, bf_std = brute_force(selection, selection, 3)
    assert max_mean[2] == pytest.approx(bf_mean, rel=1e-12)
    assert max_std[2] == pytest.approx(bf_std, rel=1e-9)
    at_mean, at_std = expected_at_best(selection, reported, n_max=3)
    bf_mean, bf_std = brute_force(selection, reported, 3)
    assert at_mean[2] == pytest.approx(bf_mean, rel=1e-12)
    assert at_std[2] == pytest.approx(bf_std, rel=1e-9)


def two_methods(test: bool = True) -> pd.DataFrame:
    return pd.DataFrame({
        "method": ["uw", "ew", "uw", "ew", "ew", "uw"],
        "val_score": [0.5, 1.0, 0.7, 2.0, 3.0, math.nan],
        "test_delta_m": [1.0, -1.0, 3.0, 0.0, 2.0, 50.0] if test else [math.nan] * 6,
    })


def test_budget_curves_table() -> None:
    curves = budget_curves(two_methods())
    assert list(curves.columns) == COLUMNS
    assert list(curves["method"]) == ["uw", "uw", "ew", "ew", "ew"]  # first-seen order; uw's NaN score dropped
    assert list(curves["trials"]) == [1, 2, 1, 2, 3]
    assert list(curves["trials_available"]) == [2, 2, 3, 3, 3]
    ew = curves[curves["method"] == "ew"]
    np.testing.assert_allclose(ew["expected_best_val"], [2.0, 22 / 9, 72 / 27])
    np.testing.assert_allclose(ew["expected_test_delta_m"], expected_at_best([1.0, 2.0, 3.0], [-1.0, 0.0, 2.0])[0])
    uw = curves[curves["method"] == "uw"]
    np.testing.assert_allclose(uw["expected_best_val"], [0.6, 0.5 / 4 + 0.7 * 3 / 4])
    np.testing.assert_allclose(uw["expected_test_delta_m"], [2.0, 1.0 / 4 + 3.0 * 3 / 4])
    assert (uw["val_min"] == 0.5).all() and (uw["val_max"] == 0.7).all()
    assert (uw["test_delta_m_min"] == 1.0).all() and (uw["test_delta_m_max"] == 3.0).all()

    no_test = budget_curves(two_methods(test=False))
    assert len(no_test) == 5 and no_test["expected_test_delta_m"].isna().all()
    np.testing.assert_allclose(no_test["expected_best_val"], curves["expected_best_val"])

    empty = budget_curves(pd.DataFrame({"method": [], "val_score": [], "test_delta_m": []}))
    assert empty.empty and list(empty.columns) == COLUMNS


@pytest.mark.parametrize("test, has_test", [(True, True), (False, True), (True, False)])
def test_budget_plot(tmp_path, test: bool, has_test: bool) -> None:
    curves = budget_curves(two_methods(test))
    png, html = report_plots.budget_curves(curves, "toy: budget", tmp_path / "budget.png", tmp_path / "budget.html",
                                           has_test=has_test)
    assert png.read_bytes().startswith(PNG)
    text = html.read_text(encoding="utf-8")
    assert "uw (N=2)" in text and "ew (N=3)" in text
    assert ("of the best-on-validation trial" in text) == (test and has_test)
