"""Issue 13: fixed weights robust to spiking steps (per-epoch median) and to the first epoch
(bias-corrected EMA), each checked by hand; the paper's defaults (`002` §3.5) unchanged."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.extract import artifact_stem, extract_from_run, read_weights_file
from analysis.weights import ema_trajectory, extract_fixed_weights, first_epoch_share, mean_median_gaps
from searcher import tracking
from searcher.cli import main
from trainables.errors import ConfigError
from trainables.methods.base import LossWeighting
from trainables.problems import build_problem
from trainables.trainer import Trainer

# The three epochs of tests/test_weights.py: normalized (0.25, 0.75), (0.5, 0.5), (0.75, 0.25);
# the paper EMA (β = 0.9) ends at (0.3225, 0.6775).
RAW = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
# The debiased EMA (Kingma & Ba 2015, Algorithm 1), β = 0.9, by hand:
#   m1 = 0.1·(0.25, 0.75) = (0.025, 0.075),                       m̂1 = m1 / 0.1   = (0.25, 0.75)
#   m2 = 0.9·m1 + 0.1·(0.5, 0.5) = (0.0725, 0.1175),              m̂2 = m2 / 0.19  = (29/76, 47/76)
#   m3 = 0.9·m2 + 0.1·(0.75, 0.25) = (0.14025, 0.13075),          m̂3 = m3 / 0.271 = (561/1084, 523/1084)
DEBIASED = [[0.25, 0.75], [29 / 76, 47 / 76], [561 / 1084, 523 / 1084]]


def test_debiased_ema_by_hand_and_the_paper_default_unchanged():
    x = extract_fixed_weights(RAW, ema="debiased")
    np.testing.assert_allclose(x.ema, DEBIASED)
    np.testing.assert_allclose(x.weights, [561 / 1084, 523 / 1084])
    assert (x.ema_kind, x.per_epoch, x.beta) == ("debiased", "mean", 0.9)
    assert x.first_epoch_share == pytest.approx(81 / 271)  # 0.1·0.81 / (1 - 0.729)
    # β = 0.5: m̂2 = (0.3125, 0.4375)/0.75 = (5/12, 7/12); m̂3 = (0.53125, 0.34375)/0.875 = (17/28, 11/28)
    np.testing.assert_allclose(extract_fixed_weights(RAW, beta=0.5, ema="debiased").ema[1:],
                               [[5 / 12, 7 / 12], [17 / 28, 11 / 28]])
    # β = 1: the limit of (1-β)β^(k-j)/(1-β^k) is 1/k, the running mean; β = 0: the last epoch.
    np.testing.assert_allclose(extract_fixed_weights(RAW, beta=1.0, ema="debiased").weights, [0.5, 0.5])
    np.testing.assert_allclose(extract_fixed_weights(RAW, beta=0.0, ema="debiased").weights, [0.75, 0.25])

    # The defaults are `002`'s: mean, paper EMA, β = 0.9, the same numbers as before.
    paper = extract_fixed_weights(RAW)
    assert (paper.ema_kind, paper.per_epoch) == ("paper", "mean")
    np.testing.assert_allclose(paper.ema, [[0.25, 0.75], [0.275, 0.725], [0.3225, 0.6775]])
    np.testing.assert_allclose(ema_trajectory(np.array(RAW) / 4.0), paper.ema)
    assert paper.first_epoch_share == pytest.approx(0.81)
    # --epoch 2: the share after two epochs, 0.9 (paper) and 0.09/0.19 = 9/19 (debiased)
    assert extract_fixed_weights(RAW, epoch=2).first_epoch_share == pytest.approx(0.9)
    assert extract_fixed_weights(RAW, epoch=2, ema="debiased").first_epoch_share == pytest.approx(9 / 19)


def test_first_epoch_share_by_hand():
    # paper: β^(k-1)
    assert first_epoch_share(1) == 1.0
    assert first_epoch_share(3) == pytest.approx(0.81)
    assert first_epoch_share(10) == pytest.approx(0.387420489)  # 0.9^9
    assert first_epoch_share(7) == pytest.approx(0.531441) and first_epoch_share(8) == pytest.approx(0.4782969)
    # debiased: (1-β)·β^(k-1) / (1-β^k)
    assert first_epoch_share(1, ema="debiased") == 1.0
    assert first_epoch_share(3, ema="debiased") == pytest.approx(0.081 / 0.271)  # 0.2989
    assert first_epoch_share(10, ema="debiased") == pytest.approx(0.0387420489 / 0.6513215599)  # 0.0595
    assert first_epoch_share(4, beta=1.0, ema="debiased") == pytest.approx(0.25)
    assert first_epoch_share(4, beta=1.0) == 1.0
    # It is the EMA's response to the first epoch: w_1 = (1, 0), then (0, 1) every epoch.
    impulse = np.array([[1.0, 0.0]] + [[0.0, 1.0]] * 9)
    for kind in ("paper", "debiased"):
        column = ema_trajectory(impulse, 0.9, kind)[:, 0]
        np.testing.assert_allclose(column, [first_epoch_share(k, 0.9, kind) for k in range(1, 11)])
    with pytest.raises(ConfigError, match="integer >= 1"):
        first_epoch_share(0)
    with pytest.raises(ConfigError, match="ema must be one of paper, debiased"):
        first_epoch_share(3, ema="adam")
    with pytest.raises(ConfigError, match="per_epoch must be one of mean, median"):
        extract_fixed_weights(RAW, per_epoch="mode")


def test_mean_median_gaps_by_hand():
    # epoch 1 agrees; epoch 2: (0.5, 0.5) vs (0.25, 0.75) -> 0.25; epoch 3: the median cannot be normalized -> NaN
    gaps = mean_median_gaps([[1.0, 3.0], [2.0, 2.0], [1.0, 1.0]], [[2.0, 6.0], [1.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(gaps, [0.0, 0.25, np.nan])


class OneSpike(LossWeighting):
    """Test method. Epoch 1 (10 steps): weights (0.5, 0.5), but (1e6, 0.5) at step 4, as CAGrad
    reports for a task whose gradient is near zero. Epoch 2: (k, k²) at its k-th step."""

    name = "one_spike"

    def __init__(self, tasks):
        super().__init__(tasks)
        self.step = 0

    def combine(self, losses):
        self.step += 1
        if self.step <= 10:
            w = [1e6 if self.step == 4 else 0.5, 0.5]
        else:
            k = self.step - 10
            w = [float(k), float(k * k)]
        return losses.sum(), torch.tensor(w, dtype=losses.dtype)


def test_the_trainer_logs_the_median_and_extraction_by_median_ignores_the_spike(tracking_uri):
    toy = build_problem("toy")
    trainer = Trainer(toy, {"method": "ew", "lr": 0.01, "steps_per_epoch": 10})
    trainer.method = OneSpike(toy.tasks)
    first, second = list(trainer.fit(2))
    # epoch 1: the mean is dominated by the one step, the median is not
    assert first["weight/f1"] == pytest.approx((9 * 0.5 + 1e6) / 10)  # 100000.45
    assert (first["weight_median/f1"], first["weight/f2"], first["weight_median/f2"]) == (0.5, 0.5, 0.5)
    # epoch 2: 10 steps, an even count: the median is the mean of the 5th and 6th values
    assert (second["weight/f1"], second["weight_median/f1"]) == pytest.approx((5.5, 5.5))
    assert second["weight/f2"] == pytest.approx(38.5)  # (1 + 4 + ... + 100) / 10
    assert second["weight_median/f2"] == pytest.approx(30.5)  # (25 + 36) / 2, not torch.median's 25

    # Logged as `searcher train` and a search's trials do (tracking.epoch_metrics keeps weight_median/)
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("toy"), tags={"searcher.method": "ew", "searcher.space": "toy"}).info.run_id
    for metrics in (first, second):
        kept = tracking.epoch_metrics(metrics)
        assert {"weight_median/f1", "weight_median/f2"} <= set(kept)
        client.log_batch(run_id, [Metric(k, v, int(time.time() * 1000), int(metrics["epoch"])) for k, v in kept.items()])

    mean = extract_from_run(client, run_id)
    median = extract_from_run(client, run_id, per_epoch="median")
    # epoch 1 normalized: mean (100000.45, 0.5)/100000.95, median (0.5, 0.5);
    # epoch 2 normalized: mean (5.5, 38.5)/44 = (0.125, 0.875), median (5.5, 30.5)/36 = (11/72, 61/72)
    m1 = 100000.45 / 100000.95
    assert mean["weights"]["f1"] == pytest.approx(0.9 * m1 + 0.1 * 0.125)  # 0.9125: the spike's
    assert median["weights"]["f1"] == pytest.approx(0.9 * 0.5 + 0.1 * 11 / 72)  # 0.4653: the steps'
    assert median["per_epoch_raw"] == {"f1": [0.5, 5.5], "f2": [0.5, 30.5]}
    assert (median["per_epoch_statistic"], mean["per_epoch_statistic"]) == ("median", "mean")
    spike = [w for w in mean["warnings"] if "a few steps dominate the mean" in w]
    assert len(spike) == 1 and "in 1 of 2 epochs (most in epoch 1: 0.50)" in spike[0]
    assert "--per-epoch median (it gives f1=0.4653, f2=0.5347 instead of f1=0.9125, f2=0.0875)" in spike[0]
    assert not any("dominate the mean" in w for w in median["warnings"])


def test_a_real_cagrad_run_whose_weights_spike(tmp_path, monkeypatch, tracking_uri, train_toy):
    """CAGrad on the toy, from (-8.5, 7.5) with Adam at lr 0.05: at one step of the first 100,
    x ≈ (-5.004, 3.59) sits by f1's log singularity (|∇f1| ≈ 822, |∇f2| ≈ 0.41), so f2's gradient
    is near zero next to f1's and CAGrad reports a weight of about 400 for f2 (about 1.5 at the
    other steps): the epoch's mean weight of f2 is several times its median."""
    monkeypatch.chdir(tmp_path)
    run_id = train_toy("cagrad", 1, "start=0", "lr=0.05", "optimizer=adam", "steps_per_epoch=100", "c=0.5")
    client = MlflowClient(tracking_uri)
    logged = {k: v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith("weight")}
    # c = 0.5: the weight of the task CAGrad does not favour is (1/T)/(1 + c²) = 0.4 at every step
    assert logged["weight/f1"] == pytest.approx(0.4) and logged["weight_median/f1"] == pytest.approx(0.4)
    assert logged["weight/f2"] > 3 * logged["weight_median/f2"]

    mean = extract_from_run(client, run_id)
    median = extract_from_run(client, run_id, per_epoch="median")
    assert any("a few steps dominate the mean" in w for w in mean["warnings"])
    assert not any("dominate the mean" in w for w in median["warnings"])
    # the one step pulls f2's fixed weight towards 1; the median keeps f1's share of the other steps
    assert mean["weights"]["f1"] < median["weights"]["f1"] - 0.1
    assert median["weights"]["f1"] == pytest.approx(0.4 / (0.4 + logged["weight_median/f2"]))
    # one epoch: all of the result is epoch 1's, with either EMA
    assert mean["first_epoch_share"] == 1.0 and any("epoch 1 carries 100%" in w for w in mean["warnings"])


# ---------------------------------------------------------------- hand-made MLflow runs

def logged_run(uri: str, mean_rows, median_rows=None, tasks=("f1", "f2")) -> str:
    """A finished cagrad run on the toy with hand-made weight/ (and weight_median/) histories."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("toy")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("toy")
    run_id = client.create_run(experiment_id, tags={"searcher.method": "cagrad", "searcher.space": "toy",
                                                    "searcher.status": "completed"}, run_name="cagrad-0000").info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for epoch, row in enumerate(mean_rows, start=1):
        metrics.append(Metric("train/f1/loss", 1.0, now, epoch))
        metrics += [Metric(f"weight/{t}", w, now, epoch) for t, w in zip(tasks, row)]
    for epoch, row in enumerate(median_rows or [], start=1):
        metrics += [Metric(f"weight_median/{t}", w, now, epoch) for t, w in zip(tasks, row)]
    client.log_batch(run_id, metrics=metrics)
    client.log_param(run_id, "method", "cagrad")
    client.set_terminated(run_id)
    return run_id


# The medians of RAW's epochs, but epoch 3's is (1, 3): normalized (0.25, 0.75) against the
# mean's (0.75, 0.25), a gap of 0.5 (> 0.1). Median, paper EMA: ema3 = 0.9·(0.275, 0.725) +
# 0.1·(0.25, 0.75) = (0.2725, 0.7275); debiased: m3 = 0.9·(0.0725, 0.1175) + 0.1·(0.25, 0.75)
# = (0.09025, 0.18075), / 0.271 = (361/1084, 723/1084).
MEDIAN = [[1.0, 3.0], [2.0, 2.0], [1.0, 3.0]]


def test_extract_from_run_both_options_and_the_warnings(tracking_uri):
    client = MlflowClient(tracking_uri)
    run_id = logged_run(tracking_uri, RAW, MEDIAN)

    paper = extract_from_run(client, run_id)
    assert paper["weights"] == pytest.approx({"f1": 0.3225, "f2": 0.6775})
    assert (paper["per_epoch_statistic"], paper["ema_kind"], paper["first_epoch_share"]) == ("mean", "paper", pytest.approx(0.81))
    share, spikes = paper["warnings"]
    assert share == ("epoch 1 carries 81% of the fixed weights after 3 epochs (paper EMA): "
                     "use --ema debiased (its share would be 30%) or a longer run")
    assert spikes.startswith("the per-epoch mean and median weights (each normalized to sum 1) differ by more than 0.1 "
                             "in 1 of 3 epochs (most in epoch 3: 0.50): a few steps dominate the mean")
    assert "consider --per-epoch median (it gives f1=0.2725, f2=0.7275 instead of f1=0.3225, f2=0.6775)" in spikes

    debiased = extract_from_run(client, run_id, ema="debiased")
    assert debiased["weights"] == pytest.approx({"f1": 561 / 1084, "f2": 523 / 1084})
    assert debiased["ema"]["f1"] == pytest.approx([d[0] for d in DEBIASED])
    assert debiased["first_epoch_share"] == pytest.approx(81 / 271)
    assert len(debiased["warnings"]) == 1 and "f1=0.333, f2=0.667 instead of f1=0.5175, f2=0.4825" in debiased["warnings"][0]

    median = extract_from_run(client, run_id, per_epoch="median")
    assert median["weights"] == pytest.approx({"f1": 0.2725, "f2": 0.7275})
    assert median["per_epoch_raw"] == {"f1": [1.0, 2.0, 1.0], "f2": [3.0, 2.0, 3.0]}
    assert median["warnings"] == [share]  # the first epoch still weighs 81%; no advice to use the median
    both = extract_from_run(client, run_id, per_epoch="median", ema="debiased")
    assert both["weights"] == pytest.approx({"f1": 361 / 1084, "f2": 723 / 1084}) and both["warnings"] == []

    # --epoch 2 (a run ASHA stopped): the gap of epoch 3 is not looked at; epoch 1 weighs 0.9 of the paper EMA
    early = extract_from_run(client, run_id, epoch=2)
    assert early["warnings"] == ["epoch 1 carries 90% of the fixed weights after 2 epochs (paper EMA): "
                                 "use --ema debiased (its share would be 47%) or a longer run"]


def test_the_first_epoch_warning_by_run_length(tracking_uri):
    client = MlflowClient(tracking_uri)
    for epochs, ema, warned in ((7, "paper", True), (8, "paper", False),  # 0.9^6 = 0.531, 0.9^7 = 0.478
                                (3, "debiased", False), (1, "debiased", True), (30, "debiased", False)):
        run_id = logged_run(tracking_uri, [[1.0, 3.0]] * epochs, [[1.0, 3.0]] * epochs)
        record = extract_from_run(client, run_id, ema=ema)
        assert record["first_epoch_share"] == pytest.approx(first_epoch_share(epochs, 0.9, ema))
        assert record["weights"] == pytest.approx({"f1": 0.25, "f2": 0.75})
        assert bool(record["warnings"]) is warned, (epochs, ema, record["warnings"])
    assert record["first_epoch_share"] == pytest.approx(0.1 * 0.9**29 / (1 - 0.9**30))  # 30 epochs: 0.0049
    one = extract_from_run(client, logged_run(tracking_uri, [[1.0, 3.0]]), ema="debiased")
    assert one["warnings"] == ["epoch 1 carries 100% of the fixed weights after 1 epoch (debiased EMA): "
                               "train longer, or take a later --epoch"]


def test_runs_from_before_the_median_was_logged(tracking_uri):
    client = MlflowClient(tracking_uri)
    run_id = logged_run(tracking_uri, RAW)  # weight/ only
    with pytest.raises(ConfigError) as err:
        extract_from_run(client, run_id, per_epoch="median")
    assert str(err.value) == (f"run {run_id} (cagrad) logged no weight_median/<task> metrics (it was trained before "
                              "the trainer logged per-epoch medians): use --per-epoch mean")
    # the mean works as before, without the spike warning (nothing to compare with)
    record = extract_from_run(client, run_id)
    assert record["weights"] == pytest.approx({"f1": 0.3225, "f2": 0.6775}) and len(record["warnings"]) == 1


def test_artifact_stems_and_old_files(tmp_path):
    record = {"beta": 0.9, "epoch": 10}  # a record from before the options: the paper's
    assert artifact_stem(record) == "weights-beta0.9-epoch10"
    assert artifact_stem({**record, "per_epoch_statistic": "mean", "ema_kind": "paper"}) == "weights-beta0.9-epoch10"
    assert artifact_stem({**record, "per_epoch_statistic": "median", "ema_kind": "paper"}) == "weights-beta0.9-epoch10-median"
    assert artifact_stem({**record, "per_epoch_statistic": "mean", "ema_kind": "debiased"}) == "weights-beta0.9-epoch10-debiased"
    assert (artifact_stem({**record, "per_epoch_statistic": "median", "ema_kind": "debiased"})
            == "weights-beta0.9-epoch10-median-debiased")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"source_run_id": "abc", "tasks": ["f1", "f2"], "beta": 0.9, "epoch": 3,
                               "weights": {"f1": 0.3225, "f2": 0.6775}}))
    assert read_weights_file(old, ["f1", "f2"])[0] == [0.3225, 0.6775]


def test_cli_flags_end_to_end(tmp_path, monkeypatch, capsys, tracking_uri):
    monkeypatch.chdir(tmp_path)
    run_id = logged_run(tracking_uri, RAW, MEDIAN)
    capsys.readouterr()
    assert main(["extract-weights", run_id, "--per-epoch", "median", "--ema", "debiased", "--tracking-uri", tracking_uri]) == 0
    out, err = capsys.readouterr()
    assert "EMA (beta 0.9, per-epoch median, debiased EMA) at epoch 3" in out
    assert "f1=0.333026" in out and "f2=0.666974" in out and "warning" not in out + err
    path = tmp_path / f"weights-{run_id[:8]}-median-debiased.json"
    record = json.loads(path.read_text())
    assert (record["per_epoch_statistic"], record["ema_kind"], record["warnings"]) == ("median", "debiased", [])
    assert record["weights"] == pytest.approx({"f1": 361 / 1084, "f2": 723 / 1084})
    assert read_weights_file(path, ["f1", "f2"])[0] == pytest.approx([361 / 1084, 723 / 1084])

    # the defaults: the paper's numbers, and both warnings, one line each on stderr
    assert main(["extract-weights", run_id, "--tracking-uri", tracking_uri]) == 0
    out, err = capsys.readouterr()
    assert "f1=0.3225" in out and "(beta 0.9) at epoch 3" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines)
    assert "--ema debiased" in lines[0] and "--per-epoch median" in lines[1]
    assert json.loads((tmp_path / f"weights-{run_id[:8]}.json").read_text())["weights"]["f1"] == pytest.approx(0.3225)
    artifacts = {f.path for f in MlflowClient(tracking_uri).list_artifacts(run_id, "fixed_weights")}
    assert artifacts == {f"fixed_weights/weights-beta0.9-epoch3{s}.{x}" for s in ("", "-median-debiased") for x in ("json", "png")}

    # bad input: argparse's choices; an old run asked for its median: one line, exit status 2
    with pytest.raises(SystemExit) as exit_:
        main(["extract-weights", run_id, "--per-epoch", "mode", "--tracking-uri", tracking_uri])
    assert exit_.value.code == 2 and "invalid choice: 'mode'" in capsys.readouterr().err
    old = logged_run(tracking_uri, RAW)
    capsys.readouterr()
    assert main(["extract-weights", old, "--per-epoch", "median", "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("searcher: error: ") and "use --per-epoch mean" in err and "\n" not in err
