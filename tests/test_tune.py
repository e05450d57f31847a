"""A real search: Ray Tune + OptunaSearch (define-by-run) + ASHA, logged to MLflow from the driver."""

from __future__ import annotations

import os

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from searcher.search import SearchOptions, best_per_method, run_search
from searcher.session import open_session
from spaces import SPACES, suggest


def test_define_by_run_space_is_conditional_on_the_method():
    """Each method gets only its own parameters, named <method>.<param>, from the space's ranges."""
    space = SPACES.get("mnist_cl_rr")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(40):
        trial = study.ask()
        constants = suggest(trial, space, ["ew", "cagrad", "single_task"], ["CL", "RR"], fixed={"dropout": 0.1})
        params = trial.params
        method = params["method"]
        seen.setdefault(method, set()).update(params)
        assert 0.0005 <= params["lr"] <= 0.01  # log-uniform over the paper's grid's span (tpe/random)
        assert params["optimizer"] in ("adam", "adamw", "sgd")
        assert "dropout" not in params and constants["dropout"] == 0.1
        assert constants["run_index"] == trial.number and constants["batch_size"] == 256
        if method == "cagrad":
            assert 0.0 <= params["cagrad.c"] <= 1.0
        if method == "single_task":
            assert params["single_task.task"] in ("CL", "RR")
        study.tell(trial, 0.0)
    assert seen["ew"] == {"method", "lr", "optimizer"}
    assert seen["cagrad"] == {"method", "lr", "optimizer", "cagrad.c"}
    assert seen["single_task"] == {"method", "lr", "optimizer", "single_task.task"}


def test_search_leaves_one_mlflow_run_per_trial_with_epoch_metrics(ray_session, tracking_uri, tmp_path):
    session = open_session("toy", ["ew", "cagrad"], ["steps_per_epoch=20"], None, max_epochs=4)
    options = SearchOptions(num_samples=3, seed=1, storage=str(tmp_path / "ray"), name="toy-test", grace_period=1)
    table = run_search(session, options, tracking_uri, "toy-test")

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["toy-test"])
    parents = runs[runs["tags.searcher.role"] == "search"]
    trials = runs[runs["tags.searcher.role"] != "search"]
    assert len(parents) == 1 and len(trials) == 6
    assert (trials["tags.mlflow.parentRunId"] == parents.run_id.iloc[0]).all()
    assert trials["params.method"].value_counts().to_dict() == {"ew": 3, "cagrad": 3}  # 3 trials per method
    assert set(trials["tags.searcher.status"]) <= {"completed", "stopped_early"}

    client = MlflowClient(tracking_uri)
    for _, run in trials.iterrows():
        epochs = int(run["metrics.epoch"])
        for key in ("weight/f1", "val/f1/value", "train/f2/loss", "best/val_score"):
            history = client.get_metric_history(run.run_id, key)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, epochs + 1))
        scores = [m.value for m in sorted(client.get_metric_history(run.run_id, "val/score"), key=lambda m: m.step)]
        assert run["metrics.best/val_score"] == pytest.approx(max(scores))
        if run["tags.searcher.status"] == "completed":
            assert epochs == 4
        if run["params.method"] == "ew":
            assert run["metrics.weight/f1"] == 1.0

    # the printed table is the best MLflow run of each method
    assert set(table["method"]) == set(trials["params.method"])
    for _, row in table.iterrows():
        best = trials[trials["params.method"] == row["method"]]["metrics.best/val_score"].max()
        assert row["val_score"] == pytest.approx(best, abs=1e-3)
    assert (tmp_path / "ray" / "toy-test").is_dir()


def test_a_search_logs_to_its_own_experiment_whatever_mlflow_experiment_id_says(ray_session, tracking_uri, tmp_path, monkeypatch):
    """MLFLOW_EXPERIMENT_ID (a user's shell, or `mlflow.set_experiment` earlier in the process)
    takes precedence over the experiment name in Ray's MLflow callback; ours must not follow it."""
    from searcher.train import train_once

    client = MlflowClient(tracking_uri)
    other = client.create_experiment("other")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", other)
    session = open_session("toy", ["ew"], ["steps_per_epoch=5"], None, max_epochs=1)
    run_search(session, SearchOptions(num_samples=2, seed=0, storage=str(tmp_path / "ray"), name="own"), tracking_uri, "own")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    train_once(session, tracking_uri, "own-train", seed=0)
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ  # a single run does not export it either

    def count(name: str) -> int:
        return len(client.search_runs([client.get_experiment_by_name(name).experiment_id]))

    assert count("own") == 3 and count("own-train") == 1  # the search's parent run and two trials
    assert count("other") == 0


def test_a_diverging_trial_is_marked_and_does_not_stop_the_search(ray_session, tracking_uri, tmp_path):
    session = open_session("toy", ["ew"], ["steps_per_epoch=5", "lr=1e300"], None, max_epochs=2)
    options = SearchOptions(num_samples=2, seed=0, storage=str(tmp_path / "ray"), name="toy-nan", scheduler="fifo")
    run_search(session, options, tracking_uri, "toy-nan")
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["toy-nan"])
    runs = runs[runs["tags.searcher.role"] != "search"]
    assert len(runs) == 2
    assert set(runs["tags.searcher.status"]) == {"diverged"}
    assert runs["tags.searcher.diverged_reason"].str.contains("diverged in epoch 1").all()


def test_best_per_method_groups_single_task_by_task_and_ranks_methods_apart_from_references():
    import pandas as pd

    df = pd.DataFrame(
        {
            "config/method": ["ew", "ew", "single_task", "single_task"],
            "config/single_task.task": [None, None, "CL", "RR"],
            "config/lr": [0.1, 0.2, 0.1, 0.1],
            "best/val_score": [1.0, 3.0, 2.0, 5.0],
            "best/epoch": [1, 2, 3, 4],
            "best/test/CL/accuracy": [0.1, 0.3, 0.2, 0.5],
            "best/test/RR/mse": [1.0, 0.9, 0.8, 0.7],
        }
    )
    table = best_per_method(df)
    rows = table.set_index("method")
    # a single-task row shows only the metrics of the task it trained
    assert rows.loc["single_task[RR]", "RR/mse"] == 0.7 and pd.isna(rows.loc["single_task[RR]", "CL/accuracy"])
    assert rows.loc["single_task[CL]", "CL/accuracy"] == 0.2 and pd.isna(rows.loc["single_task[CL]", "RR/mse"])
    assert rows.loc["ew", "RR/mse"] == 0.9
    # the methods are ranked; the references (one task's score each) follow, apart, unranked
    assert list(table["method"]) == ["ew", "single_task[CL]", "single_task[RR]"]
    assert list(table["role"]) == ["method", "reference", "reference"]
    assert list(table["val_score"]) == [3.0, 2.0, 5.0]
    assert rows.loc["ew", "params"] == "lr=0.2" and rows.loc["single_task[RR]", "params"] == "lr=0.1"
    assert rows.loc["ew", "trials"] == 2 and rows.loc["ew", "finished"] == 2


def test_every_requested_method_has_a_row_and_a_reason_when_it_has_no_result():
    import pandas as pd

    from searcher.search import first_error
    from trainables.trial import DIVERGED_SCORE

    df = pd.DataFrame(
        {
            "config/method": ["ew", "ew", "uw", "uw", "cagrad"],
            "best/val_score": [1.0, 3.0, float("nan"), DIVERGED_SCORE, 2.0],
            "best/epoch": [1, 2, 0, 0, 2],
            "diverged": [0.0, 0.0, 0.0, 1.0, 0.0],
            "error": [None, None, "RuntimeError: CUDA out of memory", None, None],
        }
    )
    table = best_per_method(df, ["ew", "uw", "cagrad", "pcgrad"]).set_index("method")
    assert list(table.index) == ["ew", "cagrad", "uw", "pcgrad"]  # ranked; those without a result last
    assert table.loc["uw", "note"] == "no finished trial: 1 failed (RuntimeError: CUDA out of memory), 1 diverged"
    assert table.loc["pcgrad", "note"] == "no finished trial: no trial ran" and table.loc["pcgrad", "trials"] == 0
    assert (table.loc["uw", "trials"], table.loc["uw", "finished"], table.loc["uw", "failed"]) == (2, 0, 1)
    assert pd.isna(table.loc["uw", "val_score"])
    assert first_error(best_per_method(df, ["ew", "uw"])) is None  # some trials succeeded: exit 0

    failed = pd.DataFrame({"config/method": ["ew", "uw"], "error": ["ValueError: boom", "ValueError: bang"]})
    everything_failed = best_per_method(failed, ["ew", "uw"])
    assert first_error(everything_failed) == "no finished trial: 1 failed (ValueError: boom)"
    # every trial diverged (a result, clearly marked), none failed: not an error of the command
    diverged = pd.DataFrame({"config/method": ["ew"], "best/val_score": [DIVERGED_SCORE], "diverged": [1.0]})
    assert first_error(best_per_method(diverged, ["ew"])) is None


def test_a_search_whose_every_trial_failed_exits_non_zero_with_the_first_error(ray_session, tracking_uri, tmp_path, capsys):
    """A trial that errors (here: asking for CUDA on a machine that has none, which only the
    worker can know on a cluster) is a failure, not a divergence: when all of them fail the
    command says so in one line and exits 1, after logging what there is."""
    import torch

    from searcher.cli import main

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA, so that device=cuda fails in the trial")
    rc = main(["tune", "--space", "toy", "--methods", "ew", "--num-samples", "2", "--max-epochs", "1",
               "--scheduler", "fifo", "--param", "device=cuda", "--storage", str(tmp_path / "ray"),
               "--name", "broken", "--tracking-uri", tracking_uri, "--experiment", "broken"])
    captured = capsys.readouterr()
    assert rc == 1
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("searcher: error: every trial of the search failed; no finished trial: 2 failed (")
    assert "ew       2         0       2" in captured.out  # the table still lists the method
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["broken"])
    trials = runs[runs["tags.searcher.role"] != "search"]
    assert len(trials) == 2 and set(trials["tags.searcher.status"]) == {"failed"}
