"""``searcher report``: selection, means over seeds, Δm, MR, fixed weights and the Pareto front from MLflow runs.

The first tests build an experiment by hand (runs with known metrics, as ``train``/``tune``/``rerun``
leave them) so every number can be worked out on paper; the last one runs the whole chain for real:
a Ray search with ``ew``, ``cagrad`` and ``single_task`` on the toy problem, ``extract-weights``,
``rerun --repeats 2``, ``report``, and recomputes the report's CSV from the MLflow metrics.
"""

from __future__ import annotations

import json
import math
import os
import statistics

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.report import build_report
from searcher.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(client: MlflowClient, experiment_id: str, method: str, params: dict, val: float | None = None,
             f1: float | None = None, f2: float | None = None, status: str = "completed", tags: dict | None = None,
             weights: list | None = None, name: str | None = None) -> str:
    """A finished run as the trainer logs it: params, tags, best/* metrics (and weight/<task> per epoch)."""
    all_tags = {"searcher.method": method, "searcher.space": "toy", "searcher.status": status, **(tags or {})}
    if method == "single_task":
        all_tags["searcher.task"] = params["single_task.task"]
    run = client.create_run(experiment_id, tags=all_tags, run_name=name or f"{method}-{params.get('run_index', 0)}")
    run_id = run.info.run_id
    params = {"method": method, "optimizer": "adam", "seed": "0", "run_index": "0", **params}
    logged = [Param(k, str(v)) for k, v in params.items()]
    metrics = [Metric(k, v, 0, 3) for k, v in (("best/val_score", val), ("best/test/f1/value", f1), ("best/test/f2/value", f2))
               if v is not None]
    for epoch, row in enumerate(weights or [], start=1):
        metrics += [Metric("weight/f1", row[0], epoch, epoch), Metric("weight/f2", row[1], epoch, epoch)]
    client.log_batch(run_id, metrics=metrics, params=logged)
    client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(module_store):
    return module_store


@pytest.fixture(scope="module")
def hand(store):
    return hand_experiment(store)


def hand_experiment(uri: str, name: str = "hand") -> dict[str, str]:
    """Toy tasks f1, f2 (metric 'value', lower is better). Single-task references: f1 1.0, f2 4.0."""
    client = MlflowClient(uri)
    exp = client.create_experiment(name)
    ids = {}
    ids["search"] = make_run(client, exp, "", {}, tags={"searcher.role": "search"}, name="toy-search")
    # ew, configuration A (lr 0.1): two seeds, mean validation -2.0 (its first seed alone, -1.0, is the best run of ew)
    ids["A0"] = make_run(client, exp, "ew", {"lr": 0.1, "run_index": 0}, -1.0, 2.0, 6.0)
    ids["A1"] = make_run(client, exp, "ew", {"lr": 0.1, "run_index": 1}, -3.0, 4.0, 8.0)
    # ew, configuration B (lr 0.01): -1.5 beats A's mean -2.0; a confirmation run (logged with one param less, joined
    # by its tag) is averaged into B's metrics but not into the choice (its -10.0 would unselect B)
    ids["B0"] = make_run(client, exp, "ew", {"lr": 0.01, "run_index": 2, "space": "toy"}, -1.5, 3.0, 5.0)
    ids["B1"] = make_run(client, exp, "ew", {"lr": 0.01, "seed": 7}, -10.0, 5.0, 7.0, tags={"searcher.confirm_of": ids["B0"]})
    # a diverged ew run with the best validation score of all: listed, never selected nor averaged
    ids["div"] = make_run(client, exp, "ew", {"lr": 1.0, "run_index": 3}, -0.5, 0.1, 0.1, status="diverged",
                          tags={"searcher.diverged_reason": "training diverged in epoch 2 (losses: f1=nan)"})
    ids["C0"] = make_run(client, exp, "cagrad", {"lr": 0.01, "cagrad.c": 0.5, "optimizer": "sgd", "run_index": 4},
                         -1.2, 3.0, 4.5, weights=[[0.5, 1.5], [1.0, 1.0], [0.6, 0.4]])
    ids["Cfail"] = make_run(client, exp, "cagrad", {"lr": 0.1, "cagrad.c": 0.2, "run_index": 5}, status="failed")
    # single-task references: the best validation configuration, not the best test value (S1b has f1 0.5)
    ids["S1"] = make_run(client, exp, "single_task", {"single_task.task": "f1", "lr": 0.01, "run_index": 6}, -1.0, 1.0, 50.0)
    ids["S1b"] = make_run(client, exp, "single_task", {"single_task.task": "f1", "lr": 0.1, "run_index": 7}, -2.0, 0.5, 60.0)
    ids["S2"] = make_run(client, exp, "single_task", {"single_task.task": "f2", "lr": 0.01, "run_index": 8}, -4.0, 60.0, 4.0)
    rerun = {"searcher.role": "rerun", "searcher.source_run": ids["C0"], "searcher.source_method": "cagrad",
             "searcher.mode": "train"}
    fixed = {"fixed.weights": "f1=0.4,f2=0.6", "lr": 0.01, "seed": 10004}
    ids["R0"] = make_run(client, exp, "fixed", {**fixed, "run_index": 0}, -1.3, 2.5, 5.0, tags=rerun)
    ids["R1"] = make_run(client, exp, "fixed", {**fixed, "run_index": 1}, -1.4, 3.5, 6.0, tags=rerun)
    ids["old_report"] = make_run(client, exp, "", {}, tags={"searcher.role": "report"}, name="report")
    return ids


def dm(f1: float, f2: float, ref1: float = 1.0, ref2: float = 4.0) -> float:
    """`002` eq. 1 for two lower-is-better single-metric tasks."""
    return (-(f1 - ref1) / ref1 * 100 - (f2 - ref2) / ref2 * 100) / 2


def test_report_on_hand_made_runs(store, hand, tmp_path, capsys):
    tracking_uri, ids = store, hand
    out = tmp_path / "report"
    assert main(["report", "--experiment", "hand", "--out", str(out), "--tracking-uri", tracking_uri]) == 0
    printed = capsys.readouterr().out
    assert "### Verdict: best configuration per method" in printed and "| method | configuration |" in printed

    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert list(summary.index) == ["cagrad", "ew", "single_task[f1]", "single_task[f2]"]  # by Δm, then STL

    ew = summary.loc["ew"]
    assert ew["run_ids"].split() == [ids["B0"], ids["B1"]] and ew["seeds"] == 2
    assert ew["val_score"] == pytest.approx(-5.75)  # mean of the two runs; B was chosen on B0's -1.5 alone
    assert ew["f1/value"] == pytest.approx(4.0) and ew["f1/value std"] == pytest.approx(math.sqrt(2))
    assert ew["f2/value"] == pytest.approx(6.0) and ew["f2/value std"] == pytest.approx(math.sqrt(2))
    # Δm per run: B0 (3, 5) -> (-200 - 25)/2 = -112.5; B1 (5, 7) -> (-400 - 75)/2 = -237.5
    assert dm(3, 5) == -112.5 and dm(5, 7) == -237.5
    assert ew["delta_m"] == pytest.approx(-175.0) and ew["delta_m_std"] == pytest.approx(125 / math.sqrt(2))

    cagrad = summary.loc["cagrad"]
    assert cagrad["run_ids"] == ids["C0"] and cagrad["seeds"] == 1 and cagrad["excluded_runs"] == 0
    assert cagrad["delta_m"] == pytest.approx(dm(3.0, 4.5)) == -106.25 and math.isnan(cagrad["delta_m_std"])
    # MR over ew (4, 6) and cagrad (3, 4.5): cagrad first on both tasks
    assert (cagrad["mean_rank"], ew["mean_rank"]) == (1.0, 2.0)
    assert "cagrad.c=0.5" in cagrad["configuration"] and "lr=0.01" in cagrad["configuration"]

    stl1 = summary.loc["single_task[f1]"]
    assert stl1["run_ids"] == ids["S1"] and stl1["f1/value"] == 1.0 and math.isnan(stl1["f2/value"])
    assert math.isnan(stl1["delta_m"]) and math.isnan(stl1["mean_rank"])
    assert summary.loc["single_task[f2]", "f2/value"] == 4.0

    # fixed weights beside their source (cagrad C0) and the best EW, as `002` Table 2
    fixed = pd.read_csv(out / "fixed_weights.csv").iloc[0]
    assert fixed["source_run_id"] == ids["C0"] and fixed["source_method"] == "cagrad" and fixed["seeds"] == 2
    assert fixed["fixed_delta_m"] == pytest.approx((dm(2.5, 5.0) + dm(3.5, 6.0)) / 2) == -118.75
    assert fixed["fixed_delta_m_std"] == pytest.approx(statistics.stdev([dm(2.5, 5.0), dm(3.5, 6.0)]))
    assert fixed["source_delta_m"] == pytest.approx(-106.25) and fixed["ew_delta_m"] == pytest.approx(-175.0)
    assert fixed["best_smto"] == "cagrad"
    assert fixed["f1/value"] == pytest.approx(3.0) and fixed["f1/value std"] == pytest.approx(math.sqrt(0.5))

    # Pareto front over the four multi-task configurations, each the mean of its seeds (lower is better on both):
    # A (A0, A1) = (3, 7), B (B0 and its confirmation B1) = (4, 6), C (C0) = (3, 4.5), R (R0, R1) = (3, 5.5):
    # C dominates the other three (equal f1 and better f2 than A and R; better on both than B)
    configs = pd.read_csv(out / "pareto_configurations.csv")
    assert sorted(configs["runs"]) == [1, 2, 2, 2] and sorted(configs["label"]) == ["cagrad", "ew", "ew", "fixed[cagrad]"]
    points = {tuple(sorted(r.run_ids.split())): (r["f1/value"], r["f2/value"], r.pareto_optimal) for _, r in configs.iterrows()}
    assert points[tuple(sorted([ids["A0"], ids["A1"]]))] == (3.0, 7.0, False)
    assert points[tuple(sorted([ids["B0"], ids["B1"]]))] == (4.0, 6.0, False)
    assert points[(ids["C0"],)] == (3.0, 4.5, True)
    assert points[tuple(sorted([ids["R0"], ids["R1"]]))] == (3.0, 5.5, False)
    by_method = pd.read_csv(out / "pareto_by_method.csv").set_index("method")
    assert by_method.loc["ew", ["configurations", "pareto_optimal"]].tolist() == [2, 0]
    assert by_method.loc["fixed[cagrad]", ["configurations", "pareto_optimal"]].tolist() == [1, 0]
    assert by_method.loc["cagrad", ["configurations", "pareto_optimal"]].tolist() == [1, 1]
    by_optimizer = pd.read_csv(out / "pareto_by_optimizer.csv").set_index("optimizer")
    # the adam configurations (A, B, R) are all dominated by the sgd configuration C
    assert by_optimizer.loc["adam", ["configurations", "pareto_optimal", "pareto_optimal_vs_others"]].tolist() == [3, 0, 0]
    assert by_optimizer.loc["sgd", ["configurations", "pareto_optimal", "pareto_optimal_vs_others"]].tolist() == [1, 1, 1]

    excluded = pd.read_csv(out / "excluded_runs.csv").set_index("run_id")
    assert excluded.loc[ids["div"], "status"] == "diverged" and "epoch 2" in excluded.loc[ids["div"], "reason"]
    assert excluded.loc[ids["Cfail"], "status"] == "failed"
    assert ids["search"] not in set(pd.read_csv(out / "runs.csv")["run_id"])

    markdown = (out / "report.md").read_text()
    assert "training diverged in epoch 2" in markdown and "| cagrad | cagrad.c=0.5 lr=0.01 optimizer=sgd | sgd | 1 |" in markdown
    assert "f1=0.4, f2=0.6" in markdown and "Single-task references: the best single_task configuration" in markdown
    for name in ("pareto.png", "weights.png"):
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 10_000
    assert (out / "pareto.html").read_text().count("plotly") > 10

    # the report run: in the experiment, named and tagged, with every file and the headline numbers
    client = MlflowClient(tracking_uri)
    reports = client.search_runs([client.get_experiment_by_name("hand").experiment_id],
                                 "tags.`searcher.role` = 'report' and attributes.run_name = 'report'")
    report = [r for r in reports if r.info.run_id != ids["old_report"]]
    assert len(report) == 1
    report = report[0]
    assert report.info.status == "FINISHED"
    assert report.data.metrics["delta_m/ew"] == pytest.approx(-175.0)
    assert report.data.metrics["mean_rank/cagrad"] == 1.0
    assert report.data.metrics["pareto_optimal/cagrad"] == 1.0 and report.data.metrics["pareto_optimal/fixed_cagrad_"] == 0.0
    artifacts = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"report.md", "summary.csv", "fixed_weights.csv", "pareto_configurations.csv", "pareto.png", "pareto.html",
            "weights.png", "weights.html", "excluded_runs.csv"} <= artifacts

    # a second report ignores the first (and the old one): the same runs, the same numbers
    again = build_report(tracking_uri, "hand")
    assert len(again.records) == 12 and again.summary.set_index("method").loc["ew", "delta_m"] == pytest.approx(-175.0)


def test_weight_trajectory_of_the_best_smto_run(store, hand):
    ids = hand
    report = build_report(store, "hand")
    assert list(report.main.weights) == ["cagrad"]
    history = report.main.weights["cagrad"]
    assert history["run_id"] == ids["C0"] and history["epochs"] == [1, 2, 3]
    assert history["rows"] == [[0.5, 1.5], [1.0, 1.0], [0.6, 0.4]]


def test_references_from_a_file_and_bad_files(store, tmp_path, capsys):
    tracking_uri = store
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("no-stl")
    make_run(client, exp, "ew", {"lr": 0.1}, -1.0, 4.0, 6.0)
    make_run(client, exp, "cagrad", {"lr": 0.1, "cagrad.c": 0.5}, -2.0, 3.0, 7.0)

    # no single_task run: no Δm, and the report says why; MR still ranks the methods (one task each way: a tie)
    report = build_report(tracking_uri, "no-stl")
    assert report.references is None and "no finished single_task run for task(s) f1, f2" in report.reference_source
    assert report.summary["delta_m"].isna().all()
    assert report.summary.set_index("method")["mean_rank"].to_dict() == {"ew": 1.5, "cagrad": 1.5}

    stl = tmp_path / "stl.json"
    stl.write_text(json.dumps({"f1": {"value": 2.0}, "f2": {"value": 5.0}}))
    assert main(["report", "--experiment", "no-stl", "--stl", str(stl), "--out", str(tmp_path / "r"),
                 "--tracking-uri", tracking_uri]) == 0
    assert f"Single-task references: file {stl}" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "r" / "summary.csv").set_index("method")
    assert rows.loc["ew", "delta_m"] == pytest.approx(dm(4.0, 6.0, 2.0, 5.0)) == pytest.approx(-60.0)
    assert rows.loc["cagrad", "delta_m"] == pytest.approx(dm(3.0, 7.0, 2.0, 5.0))

    for content, message in [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected {task: {metric: value}}"),
        (json.dumps({"f1": {"value": 2.0}}), "no single-task reference for f2/value"),
        (json.dumps({"f1": {"value": 2.0}, "f2": {"value": 5.0}, "f3": {"value": 1.0}}), "unknown task 'f3'"),
        (json.dumps({"f1": {"value": 2.0, "mse": 1.0}, "f2": {"value": 5.0}}), "unknown metric f1/mse"),
        (json.dumps({"f1": {"value": 0}, "f2": {"value": 5.0}}), "must be a finite non-zero number"),
        (json.dumps({"f1": {"value": "2"}, "f2": {"value": 5.0}}), "must be a finite non-zero number"),
    ]:
        stl.write_text(content)
        one_line_error(capsys, ["report", "--experiment", "no-stl", "--stl", str(stl), "--tracking-uri", tracking_uri],
                       message)
    one_line_error(capsys, ["report", "--experiment", "no-stl", "--stl", str(tmp_path / "missing.json"),
                            "--tracking-uri", tracking_uri], "cannot read it")


#: `002` Table 4's avg column (Δm, %), every row.
TABLE_4_AVG = {"Unit. Scal.": -5.312, "Auto-Lambda": -4.582, "CAGrad": -3.124, "CDTT": -1.190, "EDM": 0.246,
               "FAMO": -0.054, "IMTL": 0.570, "Nash-MTL": -0.113, "RotoGrad": -1.908}
TABLE_4_METHODS = {"Unit. Scal.": "ew", "Auto-Lambda": "auto_lambda", "CAGrad": "cagrad", "CDTT": "cdtt", "EDM": "edm",
                   "FAMO": "famo", "IMTL": "imtl", "Nash-MTL": "nash_mtl", "RotoGrad": "rotograd"}


def test_report_recomputes_002_table_4(store, tmp_path):
    """Runs of the `002` Cityscapes 19C set-up whose test metrics differ from single-task runs by exactly Table 4's
    per-metric changes: the report's Δm is Table 4's avg column and its MR the ranks worked out in test_ranking.
    Three tasks and five metrics: the front is drawn as parallel coordinates."""
    from test_ranking import TABLE_4, TABLE_4_MR

    from trainables.problems import build_problem
    from spaces import SPACES

    space = SPACES.get("cityscapes_19c")
    directions = build_problem(space.problem, space.problem_options).higher_is_better()
    assert directions == {"segmentation": {"pixel_acc": True, "miou": True}, "disparity": {"abs_err": False, "rel_err": False},
                          "instance": {"l1": False}}
    reference = {"segmentation": {"pixel_acc": 0.75, "miou": 0.45}, "disparity": {"abs_err": 0.9, "rel_err": 30.0},
                 "instance": {"l1": 9.5}}
    client = MlflowClient(store)
    exp = client.create_experiment("city")

    def log(method: str, metrics: dict, tags: dict, name: str) -> None:
        run = client.create_run(exp, tags={"searcher.method": method, "searcher.space": "cityscapes_19c",
                                           "searcher.status": "completed", **tags}, run_name=name)
        client.log_batch(run.info.run_id, params=[Param("method", method), Param("lr", "0.001")],
                         metrics=[Metric("best/val_score", 0.0, 0, 1)]
                         + [Metric(f"best/test/{t}/{m}", v, 0, 1) for t, ms in metrics.items() for m, v in ms.items()])
        client.set_terminated(run.info.run_id)

    for task in directions:  # a single-task run per task: its own task at the reference, the others far off
        values = {t: {m: (reference[t][m] if t == task else 99.0) for m in ms} for t, ms in directions.items()}
        log("single_task", values, {"searcher.task": task}, f"single_task[{task}]")
    for paper, method in TABLE_4_METHODS.items():
        changes = iter(TABLE_4[paper])
        values = {t: {m: reference[t][m] * (1 + next(changes) / 100 * (1 if higher else -1)) for m, higher in ms.items()}
                  for t, ms in directions.items()}
        log(method, values, {}, method)

    report = build_report(store, "city")
    assert "best single_task configuration" in report.reference_source
    summary = report.summary.set_index("method")
    for paper, method in TABLE_4_METHODS.items():
        assert summary.loc[method, "delta_m"] == pytest.approx(TABLE_4_AVG[paper], abs=1e-3), paper
        assert summary.loc[method, "mean_rank"] == pytest.approx(TABLE_4_MR[paper]), paper
    assert summary.index[0] == "imtl"  # sorted by Δm: IMTL, the best SMTO of `002` Table 2 (City 19C, 0.570)

    from analysis.report_files import write_report

    written = write_report(report, tmp_path / "city")
    assert (tmp_path / "city" / "pareto.png").read_bytes()[:8] == PNG
    assert '"type":"parcoords"' in (tmp_path / "city" / "pareto.html").read_text()
    assert "| imtl |" in written.markdown


def one_line_error(capsys, args, message):
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("searcher: error: ") and message in err and "\n" not in err, err


def test_unknown_or_empty_experiment_is_one_line(store, tmp_path, capsys):
    tracking_uri = store
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("empty")
    one_line_error(capsys, ["report", "--experiment", "nope", "--tracking-uri", tracking_uri],
                   "no experiment 'nope' in the MLflow store")
    one_line_error(capsys, ["report", "--experiment", "empty", "--tracking-uri", tracking_uri], "has no runs to report")
    make_run(client, exp, "", {}, tags={"searcher.role": "search"})  # a search's parent run is not a trial
    one_line_error(capsys, ["report", "--experiment", "empty", "--tracking-uri", tracking_uri], "has no runs to report")
    one_line_error(capsys, ["report", "--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"],
                   "no MLflow store")
    assert not os.path.exists("report-empty")

    broken = client.create_experiment("broken")  # nothing finished: the report lists the runs, no table
    make_run(client, broken, "ew", {"lr": 1e300}, -1.0, 4.0, 6.0, status="diverged")
    make_run(client, broken, "cagrad", {"lr": 0.1}, status="failed")
    running = client.create_run(broken, tags={"searcher.method": "ew", "searcher.space": "toy"})
    report = build_report(tracking_uri, "broken")
    assert report.summary.empty and report.main.pareto_configs.empty
    assert sorted(report.excluded["status"]) == ["diverged", "failed", "running"]
    assert report.excluded.set_index("run_id").loc[running.info.run_id, "reason"] == "no searcher.status tag; MLflow status RUNNING"
    assert main(["report", "--experiment", "broken", "--out", str(tmp_path / "broken"), "--tracking-uri", tracking_uri]) == 0
    assert "No finished run." in (tmp_path / "broken" / "report.md").read_text()

    mixed = client.create_experiment("mixed")
    make_run(client, mixed, "ew", {"lr": 0.1}, -1.0, 4.0, 6.0)
    run = client.create_run(mixed, tags={"searcher.method": "ew", "searcher.space": "mnist_cl_rr", "searcher.status": "completed"})
    client.set_terminated(run.info.run_id)
    one_line_error(capsys, ["report", "--experiment", "mixed", "--tracking-uri", tracking_uri],
                   "the experiment mixes spaces with different tasks")


# ------------------------------------------------------------------ the whole chain, for real


def test_search_extract_rerun_report_end_to_end(ray_session, store, tmp_path, capsys):
    from searcher.search import SearchOptions, run_search
    from searcher.session import open_session

    tracking_uri = store
    experiment = "toy-report"
    session = open_session("toy", ["ew", "cagrad", "single_task"], ["steps_per_epoch=10"], None, max_epochs=3)
    # one trial per arm: ew, cagrad, single_task[f1], single_task[f2]
    run_search(session, SearchOptions(num_samples=1, seed=2, scheduler="fifo", storage=str(tmp_path / "ray"),
                                      name="toy-report"), tracking_uri, experiment)
    mlflow.set_tracking_uri(tracking_uri)
    trials = mlflow.search_runs(experiment_names=[experiment])
    trials = trials[trials["tags.searcher.role"] != "search"]
    assert {"ew", "cagrad"} <= set(trials["params.method"])
    trained = set(trials.loc[trials["params.method"] == "single_task", "tags.searcher.task"].dropna())
    common = ["--space", "toy", "--max-epochs", "3", "--param", "steps_per_epoch=10", "--experiment", experiment,
              "--tracking-uri", tracking_uri]
    for task in sorted({"f1", "f2"} - trained):  # a single-task reference for every task, whatever was drawn
        assert main(["train", "--method", "single_task", "--param", f"task={task}", *common]) == 0
    for lr in ("0.05", "0.1"):  # two more ew configurations, so that there is something to choose from
        assert main(["train", "--method", "ew", "--param", f"lr={lr}", "--param", "start=1", *common]) == 0
    assert main(["train", "--method", "ew", "--param", "lr=1e300", *common]) == 1  # diverges

    cagrad = trials[trials["params.method"] == "cagrad"].sort_values("metrics.best/val_score").iloc[-1].run_id
    assert main(["extract-weights", cagrad, "--tracking-uri", tracking_uri]) == 0
    assert main(["rerun", cagrad, "--weights", f"weights-{cagrad[:8]}.json", "--repeats", "2",
                 "--tracking-uri", tracking_uri]) == 0
    capsys.readouterr()
    assert main(["report", "--experiment", experiment, "--out", str(tmp_path / "rep"), "--tracking-uri", tracking_uri]) == 0
    assert "## Fixed weights from SMTOs" in capsys.readouterr().out

    client = MlflowClient(tracking_uri)
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])}
    (report,) = [r for r in runs.values() if r.data.tags.get("searcher.role") == "report"]
    assert report.info.run_name == "report"
    artifacts = {a.path: a.file_size for a in client.list_artifacts(report.info.run_id)}
    for name in ("report.md", "summary.csv", "fixed_weights.csv", "pareto.png", "pareto.html", "weights.png", "weights.html"):
        assert artifacts.get(name, 0) > 0, name
        assert (tmp_path / "rep" / name).stat().st_size == artifacts[name]
    assert (tmp_path / "rep" / "pareto.png").read_bytes()[:8] == PNG

    def test_metrics(run_id: str, task: str) -> float:
        return runs[run_id].data.metrics[f"best/test/{task}/value"]

    def mean_std(values):
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)

    def same(a: float, b: float) -> bool:
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)

    summary = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("method")
    reference = {}
    for task in ("f1", "f2"):
        row = summary.loc[f"single_task[{task}]"]
        ids = row["run_ids"].split()
        reference[task] = statistics.fmean(test_metrics(i, task) for i in ids)
        assert row[f"{task}/value"] == pytest.approx(reference[task])
        # the best validation run of that task's single-task runs belongs to the chosen configuration
        candidates = [r for r in runs.values() if r.data.tags.get("searcher.task") == task
                      and r.data.tags.get("searcher.status") in ("completed", "stopped_early")]
        best = max(candidates, key=lambda r: r.data.metrics["best/val_score"])
        assert best.info.run_id in ids or len(ids) > 1

    def by_hand(run_id: str) -> float:
        """`002` eq. 1 with both toy metrics lower-is-better."""
        return statistics.fmean(-(test_metrics(run_id, t) - reference[t]) / abs(reference[t]) * 100 for t in ("f1", "f2"))

    for method in ("ew", "cagrad"):
        row = summary.loc[method]
        ids = row["run_ids"].split()
        assert all(runs[i].data.params["method"] == method for i in ids)
        for task in ("f1", "f2"):
            mean, std = mean_std([test_metrics(i, task) for i in ids])
            assert row[f"{task}/value"] == pytest.approx(mean) and same(row[f"{task}/value std"], std)
        mean, std = mean_std([by_hand(i) for i in ids])
        assert row["delta_m"] == pytest.approx(mean) and same(row["delta_m_std"], std)
    assert sorted(summary.loc[["ew", "cagrad"], "mean_rank"]) in ([1.0, 2.0], [1.5, 1.5])

    fixed = pd.read_csv(tmp_path / "rep" / "fixed_weights.csv")
    assert len(fixed) == 1
    fixed = fixed.iloc[0]
    reruns = [r for r in runs.values() if r.data.tags.get("searcher.role") == "rerun"]
    assert sorted(fixed["run_ids"].split()) == sorted(r.info.run_id for r in reruns) and fixed["seeds"] == 2
    assert fixed["source_run_id"] == cagrad
    for task in ("f1", "f2"):
        mean, std = mean_std([test_metrics(r.info.run_id, task) for r in reruns])
        assert fixed[f"{task}/value"] == pytest.approx(mean) and fixed[f"{task}/value std"] == pytest.approx(std, abs=1e-12)
    assert fixed["fixed_delta_m"] == pytest.approx(statistics.fmean(by_hand(r.info.run_id) for r in reruns))
    assert fixed["ew_delta_m"] == pytest.approx(summary.loc["ew", "delta_m"])

    diverged = [i for i, r in runs.items() if r.data.tags.get("searcher.status") == "diverged"]
    excluded = pd.read_csv(tmp_path / "rep" / "excluded_runs.csv")
    assert diverged and set(diverged) <= set(excluded["run_id"])
    assert not set(diverged) & set(" ".join(summary["run_ids"]).split())

    # every Pareto-optimal configuration is dominated by no other multi-task configuration
    front = pd.read_csv(tmp_path / "rep" / "pareto_configurations.csv")
    assert set(front["label"]) <= {"ew", "cagrad", "fixed[cagrad]"} and front["pareto_optimal"].any()
    points = front[["f1/value", "f2/value"]].to_numpy()
    for i in front.index[front["pareto_optimal"]]:
        assert not any((q <= points[i]).all() and (q < points[i]).any() for q in points)
