"""The Ray Tune function trainable: per-epoch reports, checkpoints, restore, divergence."""

from __future__ import annotations

import shutil

import pytest
from ray import tune

from trainables import tune_trainable
from trainables.trial import DIVERGED_SCORE, RunSettings
from trainables.tune_trainable import train_trial


class FakeSession:
    """Stands in for Ray's session: records reports and keeps checkpoint copies."""

    def __init__(self, tmp_path, restore_from=None):
        self.reports, self.checkpoints = [], []
        self.tmp_path, self.restore_from = tmp_path, restore_from

    def get_checkpoint(self):
        return self.restore_from

    def report(self, metrics, checkpoint=None):
        self.reports.append(dict(metrics))
        if checkpoint is not None:  # Ray copies the directory before the trainable deletes it
            target = self.tmp_path / f"ckpt{id(self)}-{len(self.reports)}"
            shutil.copytree(checkpoint.path, target)
            self.checkpoints.append(tune.Checkpoint.from_directory(str(target)))
        else:
            self.checkpoints.append(None)


@pytest.fixture
def session(monkeypatch, tmp_path):
    def make(restore_from=None):
        fake = FakeSession(tmp_path, restore_from)
        monkeypatch.setattr(tune_trainable.tune, "get_checkpoint", fake.get_checkpoint)
        monkeypatch.setattr(tune_trainable.tune, "report", fake.report)
        return fake

    return make


CONFIG = {"method": "cagrad", "lr": 0.05, "start": 0, "steps_per_epoch": 10}


def test_reports_every_epoch_with_a_checkpoint(session):
    fake = session()
    train_trial(dict(CONFIG), RunSettings(problem="toy", max_epochs=3))
    assert [r["epoch"] for r in fake.reports] == [1, 2, 3]
    assert all(c is not None for c in fake.checkpoints)
    assert all(r["diverged"] == 0.0 for r in fake.reports)


def test_checkpoint_every_k_epochs_still_checkpoints_the_last(session):
    fake = session()
    train_trial(dict(CONFIG), RunSettings(problem="toy", max_epochs=5, checkpoint_every=2))
    assert [c is not None for c in fake.checkpoints] == [False, True, False, True, True]


def test_restore_from_a_checkpoint_continues_the_same_run(session):
    straight = session()
    train_trial(dict(CONFIG), RunSettings(problem="toy", max_epochs=4))
    interrupted = session()
    train_trial(dict(CONFIG), RunSettings(problem="toy", max_epochs=2))
    resumed = session(restore_from=interrupted.checkpoints[-1])
    train_trial(dict(CONFIG), RunSettings(problem="toy", max_epochs=4))
    assert [r["epoch"] for r in resumed.reports] == [3, 4]
    for key in ("val/score", "best/val_score", "weight/f1"):
        assert [r[key] for r in resumed.reports] == pytest.approx([r[key] for r in straight.reports[2:]], abs=1e-12)


def test_divergence_is_reported_as_worst_with_a_reason(session):
    fake = session()
    train_trial({**CONFIG, "method": "ew", "lr": 1e300}, RunSettings(problem="toy", max_epochs=3))
    (last,) = fake.reports
    assert last["diverged"] == 1.0 and last["best/val_score"] == DIVERGED_SCORE
    assert "diverged in epoch 1" in last["diverged_reason"]
