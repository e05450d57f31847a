"""CONTRIBUTING.md's example method is real: registered as its page says, the contract tests
run on it with nothing added, and its own property holds."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from test_contracts import (
    check_capabilities,
    check_checkpoint_round_trip,
    check_properties,
    check_edge_cases,
    check_nan_losses_raise_diverged,
    check_toy_run_and_exact_resume,
    check_toy_run_at_feature_level_with_a_negative_loss,
    registered,  # noqa: F401 (the fixture that registers a method for one test)
)
from test_method_docs import REFERENCES, reference_short_names, shape_problems
from trainables.errors import ConfigError
from trainables.methods import METHODS

PAGE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


@pytest.fixture
def example_module():
    """The page's first Python block, loaded as the module ``trainables/methods/unit_norm.py`` would be."""
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    module = types.ModuleType("contributing_unit_norm")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, str(PAGE), "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


def test_the_example_method_meets_every_contract(example_module, registered):  # noqa: F811
    cls = registered(example_module.UnitNorm)
    assert cls.name in METHODS.names()
    check_capabilities(cls)
    check_properties(cls)
    check_edge_cases(cls)
    check_checkpoint_round_trip(cls)
    check_toy_run_and_exact_resume(cls.name)
    check_toy_run_at_feature_level_with_a_negative_loss(cls.name)  # a gradient aggregator
    check_nan_losses_raise_diverged(cls.name)
    assert shape_problems(example_module.__doc__, reference_short_names(REFERENCES.read_text())) == []


def test_the_example_method_gives_every_task_the_same_norm(example_module):
    """Its own property, as the page states it: each contribution w_t g_t has norm s / T."""
    from conftest import make_tasks

    grads = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.1, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    method = example_module.UnitNorm(make_tasks(3), scale=2.0)
    direction, weights = method.aggregate(grads, torch.ones(3, dtype=torch.float64))
    norms = (weights[:, None] * grads).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((3,), 2.0 / 3, dtype=torch.float64))
    torch.testing.assert_close(direction, weights @ grads)
    with pytest.raises(ConfigError, match=r"unit_norm.scale must be > 0"):
        example_module.UnitNorm(make_tasks(3), scale=0)
