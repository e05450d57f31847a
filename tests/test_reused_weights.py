"""Steps where a gradient method reuses its weights skip the per-task gradients (Nash-MTL's update_weights_every)."""

from __future__ import annotations

import pytest
import torch

from trainables import trainer as trainer_module
from trainables.problems import build_problem
from trainables.trainer import Trainer


def test_nash_computes_task_gradients_only_on_update_steps(monkeypatch):
    calls = []
    original = trainer_module.feature_grads
    monkeypatch.setattr(trainer_module, "feature_grads", lambda *a, **k: calls.append(1) or original(*a, **k))
    trainer = Trainer(build_problem("toy"), {"method": "nash_mtl", "nash_mtl.update_weights_every": 3, "steps_per_epoch": 7})
    weights = [trainer.train_step(*batch)[1] for batch in trainer.splits.train]
    assert len(calls) == 3  # steps 0, 3 and 6
    assert int(trainer.method.step) == 7
    assert torch.equal(weights[1], weights[0]) and torch.equal(weights[2], weights[0])
    assert not torch.equal(weights[3], weights[0])


def test_a_reused_step_applies_the_weighted_sum_of_task_gradients():
    """On a reuse step the update is -lr * sum_t w_t grad L_t, exactly as a weighted loss would give."""
    problem = build_problem("toy")
    config = {"method": "nash_mtl", "nash_mtl.update_weights_every": 2, "optimizer": "sgd", "momentum": 0.0,
              "lr": 0.01, "steps_per_epoch": 2}
    trainer = Trainer(problem, config)
    batches = list(trainer.splits.train)
    trainer.train_step(*batches[0])  # update step: solves alpha
    x = trainer.model.encoder.x.detach().clone().requires_grad_(True)
    losses, weights = trainer.train_step(*batches[1])  # reuse step
    from trainables.problems.toy import objectives

    (grad,) = torch.autograd.grad((weights * objectives(x)).sum(), x)
    assert trainer.model.encoder.x.detach() == pytest.approx(x.detach() - 0.01 * grad, abs=1e-12)


def test_rgw_takes_no_per_task_gradients_and_steps_along_its_weighted_sum(monkeypatch):
    """RGW's weights ignore the gradients: each step is one backward of Σ w_t L_t with fresh weights,
    the weights the method's seeded generator draws."""
    calls = []
    original = trainer_module.feature_grads
    monkeypatch.setattr(trainer_module, "feature_grads", lambda *a, **k: calls.append(1) or original(*a, **k))
    from trainables.methods.rgw import RandomGradientWeighting
    from trainables.problems.toy import objectives

    config = {"method": "rgw", "rgw.seed": 5, "optimizer": "sgd", "momentum": 0.0, "lr": 0.01, "steps_per_epoch": 3}
    trainer = Trainer(build_problem("toy"), config)
    twin = RandomGradientWeighting(trainer.method.tasks, seed=5)
    for batch in trainer.splits.train:
        x = trainer.model.encoder.x.detach().clone().requires_grad_(True)
        _, weights = trainer.train_step(*batch)
        expected = twin.sample()
        torch.testing.assert_close(weights.double(), expected)
        (grad,) = torch.autograd.grad((expected * objectives(x)).sum(), x)
        assert trainer.model.encoder.x.detach() == pytest.approx(x.detach() - 0.01 * grad, abs=1e-12)
    assert calls == []
