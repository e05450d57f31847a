"""Fixed weights (`002` §3.5): the EMA extraction by hand, extract-weights and rerun end to end, and bad input."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from analysis.weights import ema_trajectory, extract_fixed_weights, normalize_epochs
from searcher.cli import main
from trainables.config import repeat_seed
from trainables.errors import ConfigError
from trainables.methods.fixed import parse_weights

# Three epochs, two tasks, as logged (unnormalized): sums 4, 4, 4 -> rows / 4.
RAW = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
NORMALIZED = [[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]]
# beta 0.9: ema1 = w1; ema2 = 0.9*(0.25, 0.75) + 0.1*(0.5, 0.5) = (0.275, 0.725);
# ema3 = 0.9*(0.275, 0.725) + 0.1*(0.75, 0.25) = (0.2475 + 0.075, 0.6525 + 0.025) = (0.3225, 0.6775).
EMA = [[0.25, 0.75], [0.275, 0.725], [0.3225, 0.6775]]


def test_ema_extraction_by_hand():
    x = extract_fixed_weights(RAW)
    assert x.epochs == [1, 2, 3] and x.epoch == 3 and x.beta == 0.9
    np.testing.assert_allclose(x.normalized, NORMALIZED)
    np.testing.assert_allclose(x.ema, EMA)
    np.testing.assert_allclose(x.weights, [0.3225, 0.6775])
    # --epoch 2 (e.g. a run ASHA stopped): the EMA after two epochs only.
    np.testing.assert_allclose(extract_fixed_weights(RAW, epoch=2).weights, [0.275, 0.725])
    assert extract_fixed_weights(RAW, epoch=2).epoch == 2
    # beta 0.5: ema2 = (0.375, 0.625), ema3 = 0.5*(0.375, 0.625) + 0.5*(0.75, 0.25) = (0.5625, 0.4375).
    np.testing.assert_allclose(extract_fixed_weights(RAW, beta=0.5).weights, [0.5625, 0.4375])
    # beta 0: the last epoch's normalized weights; the epochs may be any logged steps.
    np.testing.assert_allclose(extract_fixed_weights(RAW, epochs=[4, 5, 6], beta=0.0).weights, [0.75, 0.25])


def test_three_tasks_and_the_pieces():
    # (2, 1, 1)/4 and (0, 2, 2)/4: ema2 = 0.9*(.5, .25, .25) + 0.1*(0, .5, .5) = (.45, .275, .275).
    x = extract_fixed_weights([[2.0, 1.0, 1.0], [0.0, 2.0, 2.0]])
    np.testing.assert_allclose(x.weights, [0.45, 0.275, 0.275])
    assert math.isclose(float(x.weights.sum()), 1.0)
    # The EMA itself does not normalize: it starts at the first row.
    np.testing.assert_allclose(ema_trajectory(np.array([[2.0, 0.0], [0.0, 2.0]]), 0.9), [[2.0, 0.0], [1.8, 0.2]])
    np.testing.assert_allclose(normalize_epochs(np.array([[3.0, 1.0]])), [[0.75, 0.25]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epoch": 4}, "epoch 4 was not logged (logged: epochs 1..3)"),
        ({"epoch": 0}, "epoch 0 was not logged"),
        ({"beta": 1.5}, "beta must be in [0, 1]"),
    ],
)
def test_extraction_rejects(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        extract_fixed_weights(RAW, **kwargs)


def test_weights_that_cannot_be_normalized():
    with pytest.raises(ConfigError, match="epoch 2"):
        extract_fixed_weights([[1.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ConfigError, match="epoch 1"):
        extract_fixed_weights([[float("nan"), 1.0]])


# ---------------------------------------------------------------- from MLflow

def logged_run(uri: str, method: str = "cagrad", weights=RAW, space: str = "toy", tasks=("f1", "f2")) -> str:
    """A run as `searcher train` leaves it, with hand-made weight histories (steps = epochs)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("toy")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("toy")
    run = client.create_run(experiment_id, tags={"searcher.method": method, "searcher.space": space,
                                                 "searcher.status": "completed"}, run_name=f"{method}-0000")
    run_id = run.info.run_id
    for key, value in {"method": method, "lr": "0.01", "optimizer": "sgd", "dropout": "0.0", "seed": "3",
                       "run_index": "0", "steps_per_epoch": "4", "start": "1", "max_epochs": "3",
                       "data_source": "toy", f"{method}.c": "0.5"}.items():
        client.log_param(run_id, key, value)
    for epoch, row in enumerate(weights, start=1):
        client.log_metric(run_id, "train/f1/loss", 1.0, step=epoch)
        for task, w in zip(tasks, row):
            client.log_metric(run_id, f"weight/{task}", w, step=epoch)
    client.set_terminated(run_id)
    return run_id


def test_extract_weights_reads_the_logged_histories(tmp_path, monkeypatch, capsys, tracking_uri):
    monkeypatch.chdir(tmp_path)
    run_id = logged_run(tracking_uri)
    assert main(["extract-weights", run_id, "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert "f1=0.3225" in out and "f2=0.6775" in out
    record = json.loads((tmp_path / f"weights-{run_id[:8]}.json").read_text())
    assert record["weights"] == pytest.approx({"f1": 0.3225, "f2": 0.6775})
    assert record["per_epoch"] == {"f1": pytest.approx([0.25, 0.5, 0.75]), "f2": pytest.approx([0.75, 0.5, 0.25])}
    assert record["ema"]["f1"] == pytest.approx([0.25, 0.275, 0.3225])
    assert record["per_epoch_raw"]["f1"] == [1.0, 2.0, 3.0]
    assert (record["epoch"], record["epochs"], record["beta"], record["method"]) == (3, [1, 2, 3], 0.9, "cagrad")

    out_file = tmp_path / "early.json"
    assert main(["extract-weights", run_id, "--epoch", "2", "--beta", "0.9", "--out", str(out_file),
                 "--tracking-uri", tracking_uri]) == 0
    early = json.loads(out_file.read_text())
    assert early["epoch"] == 2 and early["weights"] == pytest.approx({"f1": 0.275, "f2": 0.725})
    artifacts = {f.path for f in MlflowClient(tracking_uri).list_artifacts(run_id, "fixed_weights")}
    assert artifacts == {"fixed_weights/weights-beta0.9-epoch3.json", "fixed_weights/weights-beta0.9-epoch3.png",
                         "fixed_weights/weights-beta0.9-epoch2.json", "fixed_weights/weights-beta0.9-epoch2.png"}


def test_end_to_end_cagrad_extract_then_rerun(ray_session, tmp_path, monkeypatch, capsys, tracking_uri, train_toy):
    monkeypatch.chdir(tmp_path)  # the store's default artifact location is ./mlruns
    run_id = train_toy("cagrad", 3, "steps_per_epoch=10", "lr=0.01")
    client = MlflowClient(tracking_uri)

    assert main(["extract-weights", run_id, "--tracking-uri", tracking_uri]) == 0
    record = json.loads((tmp_path / f"weights-{run_id[:8]}.json").read_text())
    assert record["source_run_id"] == run_id and record["method"] == "cagrad" and record["space"] == "toy"
    assert record["tasks"] == ["f1", "f2"] and record["beta"] == 0.9 and record["epoch"] == 3
    for key in ("epochs", "per_epoch_raw", "per_epoch", "ema", "weights"):
        assert key in record

    # The numbers agree with the logged weight/* histories, recomputed here step by step.
    logged = {t: [m.value for m in sorted(client.get_metric_history(run_id, f"weight/{t}"), key=lambda m: m.step)]
              for t in ("f1", "f2")}
    assert len(logged["f1"]) == 3 and record["per_epoch_raw"] == logged
    rows = [[logged["f1"][e], logged["f2"][e]] for e in range(3)]
    ema = None
    for f1, f2 in rows:
        w = (f1 / (f1 + f2), f2 / (f1 + f2))
        ema = w if ema is None else tuple(0.9 * a + 0.1 * b for a, b in zip(ema, w))
    assert record["weights"]["f1"] == pytest.approx(ema[0] / sum(ema))
    assert record["weights"]["f2"] == pytest.approx(ema[1] / sum(ema))
    assert sum(record["weights"].values()) == pytest.approx(1.0)
    assert record["per_epoch"]["f1"] == pytest.approx([r[0] / sum(r) for r in rows])

    artifacts = {f.path: f.file_size for f in client.list_artifacts(run_id, "fixed_weights")}
    assert set(artifacts) == {"fixed_weights/weights-beta0.9-epoch3.json", "fixed_weights/weights-beta0.9-epoch3.png"}
    png = client.download_artifacts(run_id, "fixed_weights/weights-beta0.9-epoch3.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and artifacts["fixed_weights/weights-beta0.9-epoch3.png"] > 10_000
    capsys.readouterr()

    assert main(["rerun", run_id, "--weights", f"weights-{run_id[:8]}.json", "--repeats", "2",
                 "--tracking-uri", tracking_uri]) == 0
    assert "rerun 2/2" in capsys.readouterr().out
    runs = mlflow.search_runs(experiment_names=["toy"], filter_string="tags.`searcher.role` = 'rerun'")
    assert len(runs) == 2
    for _, run in runs.iterrows():
        assert run["params.method"] == "fixed" and run["tags.searcher.method"] == "fixed"
        assert run["tags.searcher.source_run"] == run_id and run["tags.searcher.source_method"] == "cagrad"
        assert parse_weights(run["params.fixed.weights"], ["f1", "f2"]) == [record["weights"]["f1"], record["weights"]["f2"]]
        # the source's hyperparameters and run index, the seeds of its confirm repeats 1 and 2
        assert run["params.lr"] == "0.01" and run["params.steps_per_epoch"] == "10" and run["params.max_epochs"] == "3"
        assert run["params.run_index"] == "0" and run["tags.searcher.status"] == "completed"
        assert run["tags.searcher.mode"] == "rerun"
        assert [a.path for a in client.list_artifacts(run.run_id)] == ["fixed_weights.json", "model"]  # model/best.pt: keep_model
    assert sorted(runs["params.seed"]) == [str(repeat_seed(0, 0)), str(repeat_seed(0, 1))] == ["100000", "200000"]
    assert sorted(runs["params.repeat"]) == ["0", "1"]
    # the source, the launch's parent run and the two reruns
    assert len(mlflow.search_runs(experiment_names=["toy"])) == 4

    # Extracted on the fly with another beta, into another experiment, for one epoch.
    assert main(["rerun", run_id, "--beta", "0.5", "--max-epochs", "1", "--experiment", "reruns",
                 "--tracking-uri", tracking_uri]) == 0
    (run,) = [r for _, r in mlflow.search_runs(experiment_names=["reruns"],
                                                filter_string="tags.`searcher.role` = 'rerun'").iterrows()]
    ema = None
    for r in rows:
        w = (r[0] / sum(r), r[1] / sum(r))
        ema = w if ema is None else tuple(0.5 * a + 0.5 * b for a, b in zip(ema, w))
    assert parse_weights(run["params.fixed.weights"], ["f1", "f2"]) == pytest.approx([ema[0] / sum(ema), ema[1] / sum(ema)])
    assert run["tags.searcher.weights_beta"] == "0.5" and run["params.max_epochs"] == "1"
    # where the weights came from: the source run itself, its method; the paper's statistic and EMA
    assert run["tags.searcher.weights_run"] == run_id == run["tags.searcher.source_run"]
    assert run["tags.searcher.weights_method"] == run["tags.searcher.source_method"]
    assert (run["tags.searcher.weights_per_epoch"], run["tags.searcher.weights_ema"]) == ("mean", "paper")


# ---------------------------------------------------------------- bad input: one line each

def one_line_error(capsys, args, message):
    capsys.readouterr()  # drop what the set-up printed (MLflow creating the store)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("searcher: error: ") and message in err, err
    assert "\n" not in err
    return err


def test_a_method_without_weights_gives_one_line(capsys, tmp_path, monkeypatch, tracking_uri, train_toy):
    monkeypatch.chdir(tmp_path)
    run_id = train_toy("pcgrad", 1, "steps_per_epoch=2")
    capsys.readouterr()
    one_line_error(capsys, ["extract-weights", run_id, "--tracking-uri", tracking_uri], "method pcgrad defines none")
    one_line_error(capsys, ["rerun", run_id, "--tracking-uri", tracking_uri], "method pcgrad defines none")
    assert not list(tmp_path.glob("weights-*.json"))


def test_unknown_runs_and_stores_give_one_line(capsys, tmp_path, monkeypatch, tracking_uri):
    monkeypatch.chdir(tmp_path)
    MlflowClient(tracking_uri).create_experiment("toy")
    one_line_error(capsys, ["extract-weights", "0123456789abcdef", "--tracking-uri", tracking_uri], "no run '0123456789abcdef'")
    one_line_error(capsys, ["rerun", "0123456789abcdef", "--tracking-uri", tracking_uri], "no run '0123456789abcdef'")
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    one_line_error(capsys, ["extract-weights", "abc", "--tracking-uri", missing], "no MLflow store at")
    assert not (tmp_path / "nope.db").exists()


def test_runs_without_epochs_and_epochs_not_logged(capsys, tmp_path, monkeypatch, tracking_uri):
    monkeypatch.chdir(tmp_path)
    empty = logged_run(tracking_uri, weights=[])
    one_line_error(capsys, ["extract-weights", empty, "--tracking-uri", tracking_uri], "logged no epochs")
    run_id = logged_run(tracking_uri)
    one_line_error(capsys, ["extract-weights", run_id, "--epoch", "4", "--tracking-uri", tracking_uri],
                   f"run {run_id}: epoch 4 was not logged (logged: epochs 1..3)")
    one_line_error(capsys, ["extract-weights", run_id, "--beta", "2", "--tracking-uri", tracking_uri], "beta must be in [0, 1]")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not JSON"),
        ('{"tasks": ["f1", "f2"]}', 'no "weights" entry'),
        ('{"weights": {"f1": 0.5, "CL": 0.5}}', "weights for tasks ['CL', 'f1'], the problem has ['f1', 'f2']"),
        ('{"tasks": ["CL", "RR"], "weights": {"CL": 0.5, "RR": 0.5}}', "its tasks ['CL', 'RR'] are not the problem's"),
        ('{"weights": {"f1": -0.5, "f2": 1.5}}', "finite, non-negative and not all zero"),
        ('{"weights": {"f1": NaN, "f2": 1.0}}', "finite, non-negative and not all zero"),
        ('{"weights": {"f1": 0, "f2": 0}}', "not all zero"),
        ('{"weights": {"f1": "a", "f2": 1.0}}', "must be numbers"),
        ('{"weights": [0.2, 0.3, 0.5]}', "3 weights for 2 tasks"),
        ('[0.5, 0.5]', 'no "weights" entry'),
    ],
)
def test_malformed_weights_files_give_one_line(capsys, tmp_path, monkeypatch, tracking_uri, content, message):
    monkeypatch.chdir(tmp_path)
    run_id = logged_run(tracking_uri)
    path = tmp_path / "w.json"
    path.write_text(content)
    err = one_line_error(capsys, ["rerun", run_id, "--weights", str(path), "--tracking-uri", tracking_uri], message)
    assert f"weights file {path}" in err
    client = MlflowClient(tracking_uri)
    assert len(client.search_runs([client.get_experiment_by_name("toy").experiment_id])) == 1  # nothing trained


def test_rerun_flags_that_do_not_fit(capsys, tmp_path, monkeypatch, tracking_uri):
    monkeypatch.chdir(tmp_path)
    run_id = logged_run(tracking_uri)
    one_line_error(capsys, ["rerun", run_id, "--weights", "missing.json", "--tracking-uri", tracking_uri],
                   "weights file missing.json: cannot read it")
    one_line_error(capsys, ["rerun", run_id, "--weights", "w.json", "--beta", "0.5", "--tracking-uri", tracking_uri], "--beta")
    one_line_error(capsys, ["rerun", run_id, "--repeats", "0", "--tracking-uri", tracking_uri], "--repeats must be at least 1")


def test_a_list_of_weights_in_the_files_task_order(tmp_path):
    from analysis.extract import read_weights_file

    path = tmp_path / "w.json"
    path.write_text('{"tasks": ["f2", "f1"], "weights": [0.75, 0.25]}')
    weights, record = read_weights_file(path, ["f1", "f2"])
    assert weights == [0.25, 0.75] and record["tasks"] == ["f2", "f1"]


def test_a_rerun_carries_the_source_lr_schedule():
    """A rerun trains with the source's lr schedule and its settings (plateau on QM9), not the defaults."""
    from test_run_record import run as logged_run

    from searcher.rerun import source_params
    from trainables.problems import build_problem

    toy = build_problem("toy")
    source = logged_run({}, {"method": "cagrad", "lr": "0.01", "lr_schedule": "plateau", "plateau_factor": "0.5",
                             "plateau_patience": "3", "plateau_min_lr": "1e-05", "lr_step_every": "0",
                             "cagrad.c": "0.5", "steps_per_epoch": "10", "seed": "4"})
    params = source_params(source, set(toy.defaults), toy)
    assert {k: params[k] for k in ("lr_schedule", "plateau_factor", "plateau_patience", "plateau_min_lr")} == \
        {"lr_schedule": "plateau", "plateau_factor": "0.5", "plateau_patience": "3", "plateau_min_lr": "1e-05"}
    assert params["steps_per_epoch"] == "10" and "cagrad.c" not in params and "seed" not in params
