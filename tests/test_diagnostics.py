"""Gradient diagnostics between tasks (`003` §4.2, `004` §5): each measure on hand-worked gradients, and the trainer's
logged values against gradients worked out independently on the CAGrad toy."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.diagnostics import EpochDiagnostics, conflict_matrix, cosine_matrix, magnitude_matrix, pair_measures
from trainables.problems import build_problem
from trainables.problems.toy import STARTS, objectives
from trainables.trainer import Trainer


def measures(*rows):
    return pair_measures(torch.tensor(rows, dtype=torch.float64), [f"t{i}" for i in range(len(rows))])


def test_identical_opposite_orthogonal_and_scaled_gradients():
    same = measures([1.0, 2.0, -3.0], [1.0, 2.0, -3.0])
    assert same["cos/t0-t1"] == pytest.approx(1.0) and same["mag/t0-t1"] == pytest.approx(1.0)
    assert same["conflict/t0-t1"] == 0.0 and same["conflict_pairs"] == 0.0
    opposite = measures([1.0, 2.0, -3.0], [-1.0, -2.0, 3.0])
    assert opposite["cos/t0-t1"] == pytest.approx(-1.0) and opposite["mag/t0-t1"] == pytest.approx(1.0)
    assert opposite["conflict/t0-t1"] == 1.0 and opposite["conflict_pairs"] == 1.0
    orthogonal = measures([1.0, 0.0], [0.0, 1.0])  # products 0: no component of opposite sign
    assert orthogonal["cos/t0-t1"] == 0.0 and orthogonal["mag/t0-t1"] == 1.0 and orthogonal["conflict/t0-t1"] == 0.0
    # |g| = sqrt 2, |g'| = sqrt 18: S_mag = 2 * 6 / (2 + 18) = 0.6, same direction
    scaled = measures([1.0, 1.0], [3.0, 3.0])
    assert scaled["cos/t0-t1"] == pytest.approx(1.0) and scaled["mag/t0-t1"] == pytest.approx(0.6)


def test_conflicting_components_zero_gradients_and_three_tasks():
    # products -1, 2, 0, -6: opposite signs in components 0 and 3 of 4
    assert conflict_matrix(torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.0, -1.0, 5.0, -2.0]]))[0, 1] == 0.5
    zero = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert math.isnan(cosine_matrix(zero)[0, 1]) and magnitude_matrix(zero)[0, 1] == 0.0
    assert math.isnan(magnitude_matrix(torch.zeros(2, 2))[0, 1])
    # T = 3: pairs (cos, mag) = (0, 1), (-1, 0.6), (0.6, 1): GDS and GMS average them (`004` eqs. 5b, 6b), the
    # ordered pairs counting each twice
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])
    m = pair_measures(g, ["a", "b", "c"])
    assert (m["cos/a-b"], m["cos/a-c"], m["cos/b-c"]) == (0.0, pytest.approx(-1.0), 0.0)
    assert m["mag/a-c"] == pytest.approx(0.6) and m["mag/b-c"] == pytest.approx(0.6)
    assert m["gds"] == pytest.approx(-1 / 3) and m["gms"] == pytest.approx((1 + 0.6 + 0.6) / 3)
    assert m["conflict_pairs"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        pair_measures(g, ["a", "b"])


def test_epoch_means_leave_undefined_values_out():
    epoch = EpochDiagnostics()
    epoch.add("param", {"gds": 0.5, "gms": math.nan})
    epoch.add("param", {"gds": -0.5, "gms": 0.8})
    assert epoch.result() == {"diag/param/gds": 0.0, "diag/param/gms": 0.8}
    assert epoch.result() == {}  # reset for the next epoch


def test_the_trainer_logs_the_toy_gradients_measures():
    """Toy problem: the shared parameter is the point x; the loss of task t is f_t(x). With one step per epoch and
    diagnostics every step, epoch 1's values are those of the gradients of f1 and f2 at the start point."""
    x = torch.tensor(STARTS[0], dtype=torch.float64, requires_grad=True)
    f = objectives(x)
    g1, = torch.autograd.grad(f[0], x, retain_graph=True)
    g2, = torch.autograd.grad(f[1], x)
    cos = float(g1 @ g2 / (g1.norm() * g2.norm()))
    mag = float(2 * g1.norm() * g2.norm() / (g1.norm() ** 2 + g2.norm() ** 2))

    toy = build_problem("toy")
    trainer = Trainer(toy, {"method": "ew", "lr": 0.01, "start": 0, "steps_per_epoch": 1, "diagnostics_every": 1})
    first = next(iter(trainer.fit(1)))
    assert first["diag/param/cos/f1-f2"] == pytest.approx(cos) and first["diag/param/gds"] == pytest.approx(cos)
    assert first["diag/param/mag/f1-f2"] == pytest.approx(mag) and first["diag/param/conflict_pairs"] == float(cos < 0)
    assert "diag/feature/gds" in first
    # diagnostics do not change the training: the same run without them ends at the same point
    plain = Trainer(toy, {"method": "ew", "lr": 0.01, "start": 0, "steps_per_epoch": 5})
    watched = Trainer(toy, {"method": "ew", "lr": 0.01, "start": 0, "steps_per_epoch": 5, "diagnostics_every": 2})
    for a, b in zip(plain.fit(2), watched.fit(2)):
        assert a["val/score"] == b["val/score"]
    assert not any(k.startswith("diag/") for k in a) and any(k.startswith("diag/") for k in b)
    # a single-task run has no pair of trained tasks: nothing to log
    stl = Trainer(toy, {"method": "single_task", "single_task.task": "f1", "steps_per_epoch": 2, "diagnostics_every": 1})
    assert not any(k.startswith("diag/") for k in next(iter(stl.fit(1))))
