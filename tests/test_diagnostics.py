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
    watched = Trainer(toy, {"method": "ew", "lr": 0.01, "start": 0, "steps_per_epoch": 5, "diagnostics_every": 2, "diagnostics_samples": 3})
    for a, b in zip(plain.fit(2), watched.fit(2)):
        assert a["val/score"] == b["val/score"]
    assert not any(k.startswith("diag/") for k in a) and any(k.startswith("diag/") for k in b)
    # a single-task run has no pair of trained tasks, and the toy's loss has no samples: nothing to log
    stl = Trainer(toy, {"method": "single_task", "single_task.task": "f1", "steps_per_epoch": 2, "diagnostics_every": 1})
    assert not any(k.startswith("diag/") for k in next(iter(stl.fit(1))))


def test_feature_disentanglement_on_hand_made_saliencies():
    """`004` eqs. 7-8: position 0 equally salient to both tasks (entropy ln 2), positions 1 and 2 to one task
    each (entropy 0), position 3 to none (left out): FD = ln 2 / 3. Scaling a task's gradient changes p, not
    where it is zero; two tasks alike everywhere give ln 2, and T tasks alike log T."""
    from trainables.diagnostics import feature_disentanglement

    g = torch.tensor([[1.0, 0.0, 2.0, 0.0], [-1.0, 3.0, 0.0, 0.0]])
    assert feature_disentanglement(g) == pytest.approx(math.log(2) / 3)
    assert feature_disentanglement(torch.tensor([[1.0, -2.0], [2.0, 4.0]])) == pytest.approx(
        -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)) / 2 - (1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)) / 2
    )
    assert feature_disentanglement(torch.ones(3, 5)) == pytest.approx(math.log(3))
    assert math.isnan(feature_disentanglement(torch.zeros(2, 3)))


def test_sample_measures_and_the_vectorized_conflict_count():
    from trainables.diagnostics import sample_measures

    g = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    g[1, :7] = 0.0
    loop = [[float(((g[i] * g[j]) < 0).sum()) / 40 for j in range(5)] for i in range(5)]
    assert torch.allclose(conflict_matrix(g), torch.tensor(loop, dtype=torch.float64))
    m = sample_measures(g)
    assert set(m) == {"gds", "gms", "conflict_pairs", "conflict_params"}  # no per-pair values between samples
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    cos = [float(g[i] @ g[j] / (g[i].norm() * g[j].norm())) for i, j in pairs]
    assert m["gds"] == pytest.approx(sum(cos) / len(cos))
    assert m["conflict_pairs"] == pytest.approx(sum(c < 0 for c in cos) / len(cos))
    assert m["conflict_params"] == pytest.approx(sum(loop[i][j] for i, j in pairs) / len(pairs))


class TwoRegressions:
    """A tiny two-task problem: a linear+tanh encoder on 4 inputs, one linear head per task, MSE losses."""

    @staticmethod
    def build():
        from torch import nn

        from trainables.metrics import MetricSpec, mean_absolute_error
        from trainables.problems.base import MTLModel, Problem, Splits, TaskSpec, tensor_batches

        class Problem2(Problem):
            name = "two_regressions"
            defaults = {"batch_size": 6}
            MAE = MetricSpec("mae", higher_is_better=False, fn=mean_absolute_error)

            @property
            def tasks(self):
                return [TaskSpec("a", (self.MAE,), {"mae": 1.0}), TaskSpec("b", (self.MAE,), {"mae": 1.0})]

            def load(self, data, config, generator, device) -> Splits:
                g = torch.Generator().manual_seed(1)
                x = torch.randn(6, 4, generator=g)
                y = {"a": torch.randn(6, 1, generator=g), "b": torch.randn(6, 1, generator=g)}
                batches = tensor_batches(x, y, 6, shuffle=False)
                return Splits(batches, batches, batches, "random", {"train": 6})

            def build_model(self, config) -> MTLModel:
                torch.manual_seed(2)
                return MTLModel(nn.Sequential(nn.Linear(4, 5), nn.Tanh()), {"a": nn.Linear(5, 1), "b": nn.Linear(5, 1)})

            def loss(self, task, output, target):
                return ((output - target) ** 2).mean()

        return Problem2()


@pytest.mark.parametrize("method", ["ew", "pcgrad", "single_task"])
def test_between_sample_measures_equal_a_per_sample_loop(method):
    """`003` §4.2's single-task setting: the trainer's per-sample gradients (one step, diagnostics on it) equal
    those of a plain loop that back-propagates each sample's loss alone through a copy of the initial model;
    a gradient method's own per-task gradients give the same between-task values as recomputing them."""
    import copy

    problem = TwoRegressions.build()
    config = {"method": method, "lr": 0.01, "diagnostics_every": 1, "diagnostics_samples": 4, "single_task.task": "b"}
    trainer = Trainer(problem, config)
    model = copy.deepcopy(trainer.model)
    first = next(iter(trainer.fit(1)))
    x, y = next(iter(trainer.splits.train))
    params = list(model.encoder.parameters())
    tasks = ["b"] if method == "single_task" else ["a", "b"]
    for task in tasks:
        rows = []
        for i in range(4):
            loss = problem.loss(task, model(x[i:i + 1])[task], y[task][i:i + 1])
            rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
        g = torch.stack(rows).double()
        pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
        cos = [float(g[i] @ g[j] / (g[i].norm() * g[j].norm())) for i, j in pairs]
        mag = [float(2 * g[i].norm() * g[j].norm() / (g[i].norm() ** 2 + g[j].norm() ** 2)) for i, j in pairs]
        assert first[f"diag/param/sample/{task}/gds"] == pytest.approx(sum(cos) / 6, rel=1e-5)
        assert first[f"diag/param/sample/{task}/gms"] == pytest.approx(sum(mag) / 6, rel=1e-5)
        assert f"diag/feature/sample/{task}/gds" in first
    # the diagnostics leave the training alone: the same run without them ends at the same parameters
    plain = Trainer(problem, {k: v for k, v in config.items() if not k.startswith("diagnostics")})
    next(iter(plain.fit(1)))
    for p, q in zip(plain.model.parameters(), trainer.model.parameters()):
        assert torch.equal(p, q)
    assert first["diag/param/sample/gms"] == pytest.approx(
        sum(first[f"diag/param/sample/{t}/gms"] for t in tasks) / len(tasks))
    if method == "single_task":
        assert "diag/param/gds" not in first and "diag/param/sample/a/gds" not in first
        return
    full = [torch.cat([g.flatten() for g in torch.autograd.grad(
        problem.loss(t, model(x)[t], y[t]), params)]) for t in ("a", "b")]
    cos_ab = float(full[0] @ full[1] / (full[0].norm() * full[1].norm()))
    assert first["diag/param/gds"] == pytest.approx(cos_ab, rel=1e-5)
    assert "diag/param/fd" in first and 0.0 <= first["diag/feature/fd"] <= math.log(2) + 1e-12
