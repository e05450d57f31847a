"""bench/asha_replay.py replays Ray's ASHA rule faithfully (checked against Ray's own bracket)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers.async_hyperband import _Bracket

spec = importlib.util.spec_from_file_location("asha_replay", Path(__file__).parents[1] / "bench" / "asha_replay.py")
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)


def test_rungs_below_max_t():
    assert replay.rungs(1, 3, 10) == [1, 3, 9]
    assert replay.rungs(2, 3, 10) == [2, 6]
    assert replay.rungs(6, 3, 30) == [6, 18]
    assert replay.rungs(1, 2, 10) == [1, 2, 4, 8]


def test_async_replay_by_hand():
    """Rungs 1 and 3 (eta 3, 4 epochs). A: first everywhere, runs 4. B (worse at 1): the cutoff
    at rung 1 is A's score, B is below: stopped after 1 epoch. C (better than A at 1, worse at 3):
    passes rung 1 (cutoff = 2/3-quantile of {A, B}), stopped at rung 3 (below A)."""
    curves = np.array([
        [1.0, 2.0, 3.0, 4.0],  # A
        [0.5, 5.0, 6.0, 7.0],  # B: a late bloomer ASHA stops
        [1.5, 1.6, 1.7, 1.8],  # C
    ])
    epochs, finished = replay.replay_async(curves, np.array([0, 1, 2]), grace=1, eta=3)
    assert finished == [0] and epochs == 4 + 1 + 3


def test_sync_replay_by_hand():
    """Nine trials, eta 3, rungs 1 and 3 of 9 epochs: 9 x 1 + 3 x 2 + 1 x 6 = 21 epochs; the
    survivors are the top third at each rung by best-so-far score."""
    rng = np.random.default_rng(0)
    curves = np.cumsum(rng.uniform(0, 1, (9, 9)), axis=1)
    epochs, alive = replay.replay_sync(curves, grace=1, eta=3)
    assert epochs == 21
    top3 = np.argsort(-curves[:, 0])[:3]
    assert alive == [int(top3[np.argmax(curves[top3, 2])])]


@pytest.mark.parametrize("grace,eta", [(1, 2), (1, 3), (2, 3), (1, 4)])
def test_async_replay_makes_rays_decisions(grace, eta):
    """Feeding the same trials in the same order to Ray Tune's own ASHA bracket stops the same
    trials at the same epochs."""
    rng = np.random.default_rng(grace * 10 + eta)
    curves = np.cumsum(rng.normal(0.5, 1.0, (25, 10)), axis=1)
    order = rng.permutation(25)
    epochs, finished = replay.replay_async(curves, order, grace, eta)
    bracket = _Bracket(grace, 10, eta, 0)
    ray_epochs, ray_finished = 0, []
    for trial in order:
        handle = SimpleNamespace(trial_id=str(trial))
        for epoch in range(1, 11):
            action = bracket.on_result(handle, epoch, float(curves[trial, :epoch].max()))
            if action == "STOP" and epoch < 10:
                ray_epochs += epoch
                break
        else:
            ray_epochs += 10
            ray_finished.append(int(trial))
    assert (epochs, finished) == (ray_epochs, ray_finished)
