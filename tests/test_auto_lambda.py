"""Auto-Lambda's look-ahead meta step on a hand-made quadratic problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.methods import build_method
from trainables.methods.capabilities import StepContext
from trainables.problems.base import TaskSpec

TASKS = [TaskSpec("a", ()), TaskSpec("b", ())]
A, B = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])


class Point(nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(2))


def losses(model, inputs, targets):
    """Training: task a pulls theta to A, task b to B. Validation: only A matters."""
    la = (model.theta - A).pow(2).sum()
    lb = (model.theta - B).pow(2).sum()
    return torch.stack([la, lb]) if inputs.item() == 0 else torch.stack([la, 0.0 * lb])


def context(model, optimizer):
    val = (torch.tensor(1.0), {})
    return StepContext(model, torch.tensor(0.0), {}, lambda: val, losses, optimizer)


def test_weights_move_towards_the_task_that_helps_validation():
    model = Point()
    model.theta.data = torch.tensor([0.0, 0.5])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method("auto_lambda", TASKS, {"aux_lr_scale": 1.0, "init_weight": 0.1})
    method.configure({"lr": 0.1})
    before = method.weights.clone()
    method.before_step(context(model, opt))
    assert method.weights[0] > before[0]  # task a's gradient agrees with the validation gradient
    assert method.weights[1] < before[1]  # task b's opposes it


def test_meta_gradient_is_minus_alpha_times_the_mixed_second_derivative():
    """h_i = grad L_i(theta) . grad L_val(theta'); the first Adam step moves each weight by -lr*sign(grad)."""
    model = Point()
    model.theta.data = torch.tensor([0.3, -0.2])
    alpha = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=alpha)
    method = build_method("auto_lambda", TASKS, {"aux_lr_scale": 0.5, "init_weight": 0.1})
    method.configure({"lr": alpha})
    theta = model.theta.detach().clone()
    w = method.weights.clone()
    # by hand: theta' = theta - alpha * sum_i w_i * 2 (theta - c_i); d = 2 (theta' - A)
    theta_p = theta - alpha * (w[0] * 2 * (theta - A) + w[1] * 2 * (theta - B))
    d = 2 * (theta_p - A)
    h = torch.stack([2 * (theta - A) @ d, 2 * (theta - B) @ d])
    grad = -alpha * h
    method.before_step(context(model, opt))
    # Adam's first step moves by lr * m_hat / (sqrt(v_hat) + eps) = lr * sign(grad)
    assert method.weights == pytest.approx(w - 0.5 * alpha * torch.sign(grad), abs=1e-5)
    assert torch.equal(model.theta.detach(), theta) or torch.allclose(model.theta.detach(), theta, atol=1e-7)


def test_state_is_checkpointed_and_weights_are_applied():
    method = build_method("auto_lambda", TASKS, {"init_weight": 0.3})
    assert {"weights", "exp_avg", "exp_avg_sq", "adam_steps"} <= set(method.state_dict())
    total, weights = method.combine(torch.tensor([2.0, 4.0]))
    assert total.item() == pytest.approx(0.3 * 6.0) and weights.tolist() == pytest.approx([0.3, 0.3])
    assert list(method.parameters()) == []  # not trained by the model's optimizer


def test_meta_lr_is_the_scaled_initial_lr_not_the_decayed_one():
    """As the reference's meta optimizer: aux_lr_scale x the run's initial lr, fixed."""
    model = Point()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)  # decayed from 0.1 by the schedule
    method = build_method("auto_lambda", TASKS, {"aux_lr_scale": 2.0})
    method.configure({"lr": 0.1})
    before = method.weights.clone()
    method.before_step(context(model, opt))
    assert (method.weights - before).abs().max().item() == pytest.approx(0.2, rel=1e-4)
