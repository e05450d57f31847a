"""The report's views (issue 14): gradient diagnostics over epochs, their Ranking Similarity (`004` eq. 9) and
Adam vs SGD (`003` §4.1), on experiments made by hand in a throwaway MLflow store so that every number can be
worked out on paper (the runs and their metrics as the trainer logs them, ``diag/...`` with step = epoch)."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.diagnostic_curves import tail_length
from analysis.optimizer_view import better_optimizer
from analysis.ranking_similarity import performance_from_summary, ranking_similarity, similarity_table
from analysis.report import build_report
from analysis.report_plots import diagnostic_panels
from searcher.cli import main
from searcher.run_record import DiagName, diag_name
from test_report import PNG, dm, make_run


@pytest.fixture(scope="module")
def store(module_store):
    return module_store


def diag_run(client: MlflowClient, exp: str, method: str, params: dict, val: float, f1: float, f2: float,
             diag: dict[str, list[float]] | None = None, **kwargs) -> str:
    """A finished run (``test_report.make_run``) with per-epoch ``diag/...`` histories (epoch 1, 2, ...)."""
    run_id = make_run(client, exp, method, params, val, f1, f2, **kwargs)
    metrics = [Metric(name, value, 1000 + epoch, epoch) for name, values in (diag or {}).items()
               for epoch, value in enumerate(values, start=1)]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    return run_id


# ------------------------------------------------------------------ `004` eq. 9 by hand


def test_ranking_similarity_on_a_hand_worked_ranking():
    # four methods A, B, C, D: measure 0.1, 0.4, 0.3, 0.2 (order A < D < C < B); Δm -2, 1, 3, 0.5 (order A < D < B < C).
    # Of the 6 pairs only B-C is ordered differently (B > C by the measure, B < C by Δm): 10 of the 12 ordered pairs agree
    measure, delta = [0.1, 0.4, 0.3, 0.2], [-2.0, 1.0, 3.0, 0.5]
    assert ranking_similarity(measure, delta) == pytest.approx(10 / 12)
    # `004` §5.3: reversing one ranking gives 1 - S
    assert ranking_similarity(measure, [-d for d in delta]) == pytest.approx(2 / 12)
    assert ranking_similarity(delta, delta) == 1.0
    # ties, as eq. 9 is written (truth values of ">" over ordered pairs): tied under one ranking only -> half the pair
    assert ranking_similarity([1.0, 1.0], [1.0, 2.0]) == 0.5
    assert ranking_similarity([1.0, 1.0], [3.0, 3.0]) == 1.0
    assert math.isnan(ranking_similarity([1.0], [2.0]))
    with pytest.raises(ValueError, match="rank the same items"):
        ranking_similarity([1.0, 2.0], [1.0])

    # the table: per measure x level against each criterion; a method without the measure is not ranked
    end = pd.DataFrame({"label": ["A", "B", "C", "D", "A", "B", "C"], "level": ["param"] * 4 + ["feature"] * 3,
                        "between": "tasks", "measure": "gds", "value": measure + [0.3, 0.2, 0.1]})
    summary = pd.DataFrame({"method": ["A", "B", "C", "D", "single_task[f1]"],
                            "kind": ["multi-task"] * 4 + ["single-task"], "delta_m": delta + [math.nan],
                            "f1/value": [4.0, 3.0, 2.0, 1.0, 0.5]})
    performance = performance_from_summary(summary, {"f1": {"value": False}})
    assert performance["f1/value"] == {"A": -4.0, "B": -3.0, "C": -2.0, "D": -1.0}  # lower is better: negated
    table = similarity_table(end, performance).set_index(["level", "against"])
    row = table.loc[("param", "Δm")]
    assert row["S"] == pytest.approx(10 / 12) and row["abs_S_minus_half"] == pytest.approx(1 / 3) and row["methods"] == 4
    # param gds against f1 (performance A < B < C < D): agree on A-B, A-C, A-D only -> 6 / 12
    assert table.loc[("param", "f1/value"), "S"] == pytest.approx(0.5)
    assert table.loc[("param", "f1/value"), "abs_S_minus_half"] == 0.0
    # feature level: A 0.3 > B 0.2 > C 0.1 while Δm A < B < C: every pair reversed
    assert table.loc[("feature", "Δm"), "S"] == 0.0 and table.loc[("feature", "Δm"), "methods"] == 3
    assert table.loc[("feature", "Δm"), "method_names"] == "A B C"


def test_diagnostic_names_and_tail():
    assert diag_name("diag/param/gds") == DiagName("param", "gds")
    assert diag_name("diag/feature/cos/f1-f2") == DiagName("feature", "cos", pair="f1-f2")
    assert diag_name("diag/param/sample/gms") == DiagName("param", "gms", "samples")
    assert diag_name("diag/param/sample/f1/conflict_params") == DiagName("param", "conflict_params", "samples", task="f1")
    assert not diag_name("diag/param/cos/f1-f2").aggregate and not diag_name("diag/param/sample/f1/gds").aggregate
    for name in ("diag/param/sample/f1/gds", "diag/feature/mag/a-b", "diag/param/fd"):
        assert diag_name(name).key == name
    assert diag_name("weight/f1") is None and diag_name("diag/other/gds") is None and diag_name("diag/param/x/y/z") is None
    # `004` §5.5: the last 50 of about 300 points; per epoch, the last sixth (at least one)
    assert [tail_length(n) for n in (0, 1, 3, 6, 7, 12, 300)] == [0, 1, 1, 1, 2, 2, 50]


# ------------------------------------------------------------------ diagnostic curves and their ranking, in a report


@pytest.fixture(scope="module")
def diag_experiment(store):
    """Toy tasks f1, f2 (lower is better; references f1 1.0, f2 4.0, as test_report's hand experiment).

    ew: configuration lr=0.1 (two seeds, chosen: mean validation -1.0) and lr=0.01 (-3.0, other curves that must not
    show); cagrad, imtl: one run each; pcgrad: no diagnostics; single_task runs: between-sample measures only."""
    client = MlflowClient(store)
    exp = client.create_experiment("diag")
    ids = {}
    ids["ew0"] = diag_run(client, exp, "ew", {"lr": 0.1, "run_index": 0}, -1.0, 2.0, 6.0, {
        "diag/param/gds": [0.5, 0.3, 0.1], "diag/param/gms": [0.9, 0.8, 0.7], "diag/param/sample/gds": [0.2, 0.2, 0.2],
        "diag/param/cos/f1-f2": [0.5, 0.3, 0.1], "diag/param/sample/f1/gds": [0.1, 0.1, 0.1],
        "diag/feature/gds": [0.6, 0.6, 0.6]})
    ids["ew1"] = diag_run(client, exp, "ew", {"lr": 0.1, "run_index": 1}, -1.0, 4.0, 8.0, {
        "diag/param/gds": [0.3, 0.1, 0.1], "diag/param/gms": [0.7, 0.6, 0.5], "diag/param/sample/gds": [0.4, 0.2, 0.0],
        "diag/feature/gds": [0.4, 0.4, 0.4]})
    ids["ew_other"] = diag_run(client, exp, "ew", {"lr": 0.01, "run_index": 2}, -3.0, 1.0, 4.0, {
        "diag/param/gds": [-0.9, -0.9, -0.9]})
    # Δm: ew (2, 6), (4, 8) -> mean -175; cagrad (3, 4.5) -> -106.25; imtl (1.5, 5) -> -37.5
    ids["cagrad"] = diag_run(client, exp, "cagrad", {"lr": 0.01, "cagrad.c": 0.5, "run_index": 3}, -1.2, 3.0, 4.5, {
        "diag/param/gds": [0.2, 0.2, 0.2], "diag/param/gms": [0.5, 0.5, 0.5], "diag/param/sample/gds": [0.3, 0.3, 0.3]})
    ids["imtl"] = diag_run(client, exp, "imtl", {"lr": 0.01, "run_index": 4}, -1.1, 1.5, 5.0, {
        "diag/param/gds": [0.4, 0.3, 0.0], "diag/param/gms": [0.9, 0.9, 0.9]})
    ids["pcgrad"] = diag_run(client, exp, "pcgrad", {"lr": 0.01, "run_index": 5}, -1.3, 3.0, 6.0)
    ids["S1"] = diag_run(client, exp, "single_task", {"single_task.task": "f1", "run_index": 6}, -1.0, 1.0, 50.0,
                         {"diag/param/sample/gds": [0.1, 0.15, 0.2], "diag/param/sample/f1/gds": [0.1, 0.15, 0.2]})
    ids["S2"] = diag_run(client, exp, "single_task", {"single_task.task": "f2", "run_index": 7}, -4.0, 60.0, 4.0,
                         {"diag/param/sample/gds": [0.5, 0.5, 0.5]})
    return ids


def test_diagnostic_curves_of_each_best_configuration(store, diag_experiment, tmp_path):
    report = build_report(store, "diag")
    curves = report.main.diagnostics
    assert curves.without == ["pcgrad"]
    assert curves.levels == ["param", "feature"] and curves.measures("param") == ["gds", "gms"]

    # ew: the mean over the two seeds of its chosen configuration (lr=0.1), never lr=0.01's -0.9
    ew = curves.find("ew", "param", "gds")
    assert ew.epochs == [1, 2, 3] and ew.mean == pytest.approx([0.4, 0.2, 0.1]) and ew.runs == [2, 2, 2]
    assert ew.std == pytest.approx([statistics.stdev([0.5, 0.3]), statistics.stdev([0.3, 0.1]), 0.0])
    assert curves.find("ew", "param", "gds", "samples").mean == pytest.approx([0.3, 0.2, 0.1])
    cagrad = curves.find("cagrad", "param", "gds")
    assert cagrad.mean == pytest.approx([0.2, 0.2, 0.2]) and cagrad.runs == [1, 1, 1] and math.isnan(cagrad.std[0])
    # per-pair and per-task measures are not curves
    assert {(s.measure, s.between) for s in curves.series} == {("gds", "tasks"), ("gms", "tasks"), ("gds", "samples")}
    # single-task rows: between samples only
    stl = curves.find("single_task[f1]", "param", "gds", "samples")
    assert stl.single_task and stl.mean == pytest.approx([0.1, 0.15, 0.2])
    assert curves.find("single_task[f1]", "param", "gds") is None

    # the figure's panels (`003` Figure 3): left, between tasks of the MTL methods; right, between samples of all rows
    panels = {measure: (left, right) for measure, left, right in diagnostic_panels(curves, "param")}
    assert [s.label for s in panels["gds"][0]] == ["ew", "cagrad", "imtl"]
    assert sorted(s.label for s in panels["gds"][1]) == ["cagrad", "ew", "single_task[f1]", "single_task[f2]"]
    assert panels["gms"][1] == []

    # end of training (3 epochs: the last one), per run, then over the seeds
    end = curves.end_values().set_index(["label", "level", "between", "measure"])
    assert end.loc[("ew", "param", "tasks", "gds"), "value"] == pytest.approx(0.1)
    assert end.loc[("ew", "param", "tasks", "gms"), "value"] == pytest.approx(0.6)
    assert end.loc[("ew", "param", "tasks", "gds"), "runs"] == 2 and end.loc[("imtl", "param", "tasks", "gds"), "value"] == 0.0

    # ranking similarity (`004` eq. 9) over ew, cagrad, imtl against Δm -175, -106.25, -37.5 (ew < cagrad < imtl):
    # GDS 0.1, 0.2, 0.0 orders ew-cagrad alike only -> 2 of 6 ordered pairs; GMS 0.6, 0.5, 0.9 orders ew-imtl and
    # cagrad-imtl alike -> 4 of 6
    assert report.summary.set_index("method").loc["imtl", "delta_m"] == pytest.approx(dm(1.5, 5.0)) == -37.5
    sim = report.main.similarity.set_index(["measure", "level", "against"])
    assert sim.loc[("gds", "param", "Δm"), "S"] == pytest.approx(1 / 3) and sim.loc[("gds", "param", "Δm"), "methods"] == 3
    assert sim.loc[("gms", "param", "Δm"), "S"] == pytest.approx(2 / 3)
    # feature GDS only for ew (one method): nothing to order
    assert math.isnan(sim.loc[("gds", "feature", "Δm"), "S"]) and sim.loc[("gds", "feature", "Δm"), "methods"] == 1
    # against f1 (lower is better; ew 3 (mean of 2 and 4), cagrad 3, imtl 1.5): ew and cagrad tie on f1, so of their two
    # ordered pairs only (ew, cagrad) agrees (both ">" false); imtl is best on f1 with the lowest GDS: both pairs
    # disagree both ways -> 1 of 6
    assert sim.loc[("gds", "param", "f1/value"), "S"] == pytest.approx(1 / 6)

    # the files: figures per level (PNG and interactive HTML) and the tables
    out = tmp_path / "rep"
    assert main(["report", "--experiment", "diag", "--out", str(out), "--tracking-uri", store]) == 0
    for level in ("param", "feature"):
        assert (out / f"diagnostics-{level}.png").read_bytes()[:8] == PNG
    html = (out / "diagnostics-param.html").read_text()
    assert '"name":"single_task[f1]"' in html and '"name":"ew"' in html and "between samples" in html
    frame = pd.read_csv(out / "diagnostic_curves.csv")
    ew_rows = frame[(frame["label"] == "ew") & (frame["level"] == "param") & (frame["measure"] == "gds")
                    & (frame["between"] == "tasks")]
    assert ew_rows["mean"].tolist() == pytest.approx([0.4, 0.2, 0.1]) and set(frame["group"]) == {1}
    markdown = (out / "report.md").read_text()
    assert "### Gradient diagnostics over epochs" in markdown and "No diagnostics logged by: pcgrad." in markdown
    assert "![gradient diagnostics, param level](diagnostics-param.png)" in markdown
    assert "| gds | param | 0.3333 | 0.1667 | 3 |" in markdown
    assert "One optimizer only (adam) among the multi-task runs" in markdown
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("diag").experiment_id], "tags.`searcher.role` = 'report'")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"diagnostics-param.png", "diagnostics-param.html", "diagnostic_curves.csv", "ranking_similarity.csv"} <= artifacts
    assert run.data.metrics["ranking_similarity/param/gds"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------ Adam vs SGD, and an experiment without diagnostics


def test_adam_vs_sgd_best_per_optimizer_and_no_diagnostics(store, tmp_path):
    client = MlflowClient(store)
    exp = client.create_experiment("optimizers")
    ids = {}
    # ew with adam: lr 0.1 (validation -1.0, chosen overall and for adam) beats lr 0.01 (-2.0, the better test numbers)
    ids["ew_adam"] = make_run(client, exp, "ew", {"lr": 0.1, "optimizer": "adam", "run_index": 0}, -1.0, 2.0, 6.0)
    ids["ew_adam_b"] = make_run(client, exp, "ew", {"lr": 0.01, "optimizer": "adam", "run_index": 1}, -2.0, 1.0, 4.0)
    # ew with sgd: lr 0.5 (-2.5, two seeds with the confirmation) beats lr 0.1 (-3.0); both lose to adam overall
    ids["ew_sgd"] = make_run(client, exp, "ew", {"lr": 0.5, "optimizer": "sgd", "run_index": 2}, -2.5, 3.0, 5.0)
    ids["ew_sgd_c"] = make_run(client, exp, "ew", {"lr": 0.5, "optimizer": "sgd", "seed": 9}, -9.0, 5.0, 7.0,
                               tags={"searcher.confirm_of": ids["ew_sgd"]})
    ids["ew_sgd_b"] = make_run(client, exp, "ew", {"lr": 0.1, "optimizer": "sgd", "run_index": 3}, -3.0, 1.0, 4.0)
    ids["cagrad"] = make_run(client, exp, "cagrad", {"lr": 0.01, "optimizer": "sgd", "run_index": 4}, -1.5, 1.5, 5.0)
    make_run(client, exp, "single_task", {"single_task.task": "f1", "run_index": 5}, -1.0, 1.0, 50.0)
    make_run(client, exp, "single_task", {"single_task.task": "f2", "optimizer": "sgd", "run_index": 6}, -1.0, 60.0, 4.0)

    report = build_report(store, "optimizers")
    assert report.summary.set_index("method").loc["ew", "best_run_id"] == ids["ew_adam"]
    table = report.main.optimizers.set_index(["method", "optimizer"])
    assert list(table.index) == [("ew", "adam"), ("ew", "sgd"), ("cagrad", "sgd")]  # single-task rows left out
    assert table.loc[("ew", "adam"), "best_run_id"] == ids["ew_adam"] and table.loc[("ew", "adam"), "seeds"] == 1
    assert table.loc[("ew", "adam"), "delta_m"] == pytest.approx(dm(2.0, 6.0)) == -75.0
    sgd = table.loc[("ew", "sgd")]
    assert sgd["best_run_id"] == ids["ew_sgd"] and sgd["seeds"] == 2 and sgd["trials"] == 2  # the confirmation is no trial
    assert sgd["run_ids"].split() == [ids["ew_sgd"], ids["ew_sgd_c"]]
    assert sgd["delta_m"] == pytest.approx((dm(3.0, 5.0) + dm(5.0, 7.0)) / 2) == pytest.approx(-175.0)
    assert sgd["val_score"] == -2.5 and "lr=0.5" in sgd["configuration"]
    # MR over the three rows' mean metrics: f1 (2, 4, 1.5), f2 (6, 6, 5) -> ranks f1 (2, 3, 1), f2 (2.5, 2.5, 1)
    assert table["mean_rank"].tolist() == [2.25, 2.75, 1.0]
    assert better_optimizer(report.main.optimizers) == {"ew": "adam"}
    assert report.main.optimizers_note == ""

    out = tmp_path / "opt"
    assert main(["report", "--experiment", "optimizers", "--out", str(out), "--tracking-uri", store]) == 0
    markdown = (out / "report.md").read_text()
    assert "### Adam vs SGD" in markdown and "Higher Δm: adam for 1 method(s) (ew: adam)." in markdown
    assert pd.read_csv(out / "optimizers.csv")["optimizer"].tolist() == ["adam", "sgd", "sgd"]
    # no run logged diagnostics: one line, no curve, no ranking similarity, and the report succeeded
    assert report.main.diagnostics.empty and report.main.similarity.empty
    notes = [line for line in markdown.splitlines() if "No gradient diagnostics" in line]
    assert len(notes) == 1 and "diagnostics_every=K" in notes[0]
    assert "### Ranking similarity" not in markdown
    assert not list(out.glob("diagnostics-*")) and not (out / "ranking_similarity.csv").exists()
