"""The rules that keep ``searcher report`` from misleading (issue 13), each on hand-made runs with hand-worked numbers.

One experiment on the toy problem (tasks f1, f2; metric ``value``, lower is better) holds:

- group A (max_epochs 3, data toy, steps_per_epoch 10): single-task references f1 = 1, f2 = 4;
  EW with 3 seeds of one configuration and a second configuration the scheduler stopped early;
  CAGrad with 3 seeds; UW with 1 seed; PCGrad whose 2 runs diverged; a rerun of CAGrad's
  configuration with IMTL's weights; IMTL with 1 seed;
- group B (max_epochs 1): a single-task f1 run of 1 epoch, which group A must refuse;
- group C (data_source other): an EW run with no single-task run of its own;
- a search parent run that planned 3 trials each for ew, cagrad, uw, pcgrad and nash_mtl (none of
  nash_mtl's ever started).
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats

from analysis import uncertainty
from analysis.report import build_report
from searcher.cli import main
from searcher.run_record import Tag, budgets_tag

T_975_2 = 4.302652729911275  # Student t quantile 0.975 at 2 degrees of freedom (tables)


def dm(f1: float, f2: float, ref1: float = 1.0, ref2: float = 4.0) -> float:
    """`002` eq. 1 for two lower-is-better single-metric tasks."""
    return (-(f1 - ref1) / ref1 * 100 - (f2 - ref2) / ref2 * 100) / 2


def make_run(client, exp, method, params=None, val=None, f1=None, f2=None, status="completed", tags=None,
             epochs=3, seconds=None, name=None, max_epochs="3", data_source="toy"):
    all_tags = {"searcher.method": method, "searcher.space": "toy", "searcher.problem": "toy",
                "searcher.status": status, "searcher.mode": "tune", **(tags or {})}
    params = {"method": method, "optimizer": "adam", "seed": "0", "run_index": "0", "lr": "0.1",
              "steps_per_epoch": "10", "max_epochs": max_epochs, "data_source": data_source, **(params or {})}
    if method == "single_task":
        all_tags["searcher.task"] = params["single_task.task"]
    run = client.create_run(exp, tags=all_tags, run_name=name or method)
    metrics = [Metric(k, v, 0, epochs) for k, v in (("best/val_score", val), ("best/test/f1/value", f1),
                                                     ("best/test/f2/value", f2)) if v is not None]
    metrics += [Metric("epoch", epochs, 0, epochs), Metric("time/total_s", seconds if seconds is not None else 2.0 * epochs, 0, epochs)]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id, "FAILED" if status == "failed" else "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def store(module_store):
    return module_store


EW = [(2.0, 6.0, -1.0), (3.0, 7.0, -2.0), (4.0, 8.0, -3.0)]  # (f1, f2, val) per seed
CAGRAD = [(1.5, 4.5, -1.5), (1.5, 5.0, -1.6), (2.0, 4.5, -1.7)]


@pytest.fixture(scope="module")
def rules(store):
    client = MlflowClient(store)
    exp = client.create_experiment("rules")
    ids: dict[str, str] = {}
    search = client.create_run(exp, tags={"searcher.role": "search", "searcher.mode": "tune", "searcher.space": "toy"},
                               run_name="rules-search")
    client.set_tag(search.info.run_id, Tag.BUDGETS, budgets_tag({"ew": 3, "cagrad": 3, "uw": 3, "pcgrad": 3, "nash_mtl": 3}))
    client.set_terminated(search.info.run_id)
    # group A
    ids["S1"] = make_run(client, exp, "single_task", {"single_task.task": "f1"}, -1.0, 1.0, 50.0)
    ids["S2"] = make_run(client, exp, "single_task", {"single_task.task": "f2"}, -4.0, 60.0, 4.0)
    for k, (f1, f2, val) in enumerate(EW):
        ids[f"ew{k}"] = make_run(client, exp, "ew", {"seed": k, "run_index": k}, val, f1, f2, name=f"ew-{k}")
    # a better-looking configuration the scheduler stopped after 1 epoch: no Pareto point, but a trial spent
    ids["ew_pruned"] = make_run(client, exp, "ew", {"lr": "0.01", "run_index": 9}, -2.5, 0.5, 0.5, status="stopped_early",
                                epochs=1, name="ew-9")
    for k, (f1, f2, val) in enumerate(CAGRAD):
        ids[f"cagrad{k}"] = make_run(client, exp, "cagrad", {"seed": k, "run_index": 3 + k, "cagrad.c": "0.5"}, val, f1, f2,
                                     name=f"cagrad-{k}")
    ids["uw"] = make_run(client, exp, "uw", {"run_index": 6}, -2.5, 5.0, 9.0, name="uw-0")
    for k in range(2):
        ids[f"pcgrad{k}"] = make_run(client, exp, "pcgrad", {"run_index": 7 + k}, status="diverged", epochs=2,
                                     tags={"searcher.diverged_reason": "training diverged in epoch 2 (losses: f1=nan)"})
    ids["imtl"] = make_run(client, exp, "imtl", {"run_index": 10}, -2.0, 2.5, 5.5, name="imtl-0")
    rerun_tags = {"searcher.role": "rerun", "searcher.mode": "rerun", "searcher.source_run": ids["cagrad0"],
                  "searcher.source_method": "cagrad", "searcher.weights_run": ids["imtl"], "searcher.weights_method": "imtl",
                  "searcher.weights_beta": "0.9", "searcher.weights_epoch": "3"}
    for k in range(2):
        ids[f"rerun{k}"] = make_run(client, exp, "fixed", {"seed": 100000 * (k + 1), "fixed.weights": "f1=0.3,f2=0.7",
                                                           "repeat": k}, -1.8, 2.0 + k, 5.0, tags=rerun_tags, name=f"fixed-{k}")
    # group B: one epoch only
    ids["S1_short"] = make_run(client, exp, "single_task", {"single_task.task": "f1"}, -0.5, 0.5, 50.0, max_epochs="1",
                               epochs=1, name="single_task[f1]-short")
    # group C: other data
    ids["ew_other"] = make_run(client, exp, "ew", {}, -1.0, 2.0, 6.0, data_source="other", name="ew-other")
    return ids


@pytest.fixture(scope="module")
def report(store, rules):
    return build_report(store, "rules")


def test_runs_are_grouped_by_what_makes_them_comparable(report):
    described = [g.describe for g in report.groups]
    assert described[0] == "problem toy, data toy, max_epochs 3, steps_per_epoch=10"
    assert sorted(described[1:]) == ["problem toy, data other, max_epochs 3, steps_per_epoch=10",
                                     "problem toy, data toy, max_epochs 1, steps_per_epoch=10"]
    main_group = report.main
    assert main_group.references.values == {"f1": {"value": 1.0}, "f2": {"value": 4.0}}
    # the 1-epoch single-task run is refused for group A, with what differs
    refused = " ".join(main_group.references.refused)
    assert "single_task[f1]" in refused and "max_epochs 1 (not 3)" in refused
    # group C has no reference of its own: no Δm, and it says why and what it refused
    other = next(g for g in report.groups if g.key.data_source == "other")
    assert other.references.values is None and "no finished single_task run for task(s) f1, f2 in this group" in \
        other.references.source
    assert any("data_source toy (not other)" in line for line in other.references.refused)
    assert other.summary.set_index("method")["delta_m"].isna().all()


def test_every_number_has_seeds_an_interval_and_a_verdict(report):
    summary = report.summary.set_index("method")
    ew_dm = [dm(f1, f2) for f1, f2, _ in EW]
    assert ew_dm == [-75.0, -137.5, -200.0]
    ew = summary.loc["ew"]
    assert ew["seeds"] == 3 and not ew["few_seeds"] and ew["vs_ew"] == "baseline"
    assert ew["delta_m"] == pytest.approx(-137.5) and ew["delta_m_std"] == pytest.approx(62.5)
    half = T_975_2 * 62.5 / math.sqrt(3)
    assert (ew["delta_m_ci_low"], ew["delta_m_ci_high"]) == (pytest.approx(-137.5 - half), pytest.approx(-137.5 + half))
    assert ew["f1/value_ci_low"] == pytest.approx(3.0 - T_975_2 * 1.0 / math.sqrt(3))

    # CAGrad ranks above EW, but Welch's test at 3 seeds each cannot tell them apart (worked by hand below)
    ca_dm = [dm(f1, f2) for f1, f2, _ in CAGRAD]
    va, vb = statistics.variance(ca_dm) / 3, statistics.variance(ew_dm) / 3
    t = (statistics.fmean(ca_dm) - statistics.fmean(ew_dm)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)  # Welch-Satterthwaite
    p = 2 * stats.t.sf(abs(t), df)
    assert t == pytest.approx(2.60, abs=0.01) and df == pytest.approx(2.17, abs=0.01) and 0.05 < p < 0.2
    cagrad = summary.loc["cagrad"]
    assert cagrad["delta_m"] == pytest.approx(statistics.fmean(ca_dm)) and cagrad["delta_m"] > ew["delta_m"]
    assert cagrad["vs_ew"] == "not distinguishable" and cagrad["vs_ew_p"] == pytest.approx(p) and cagrad["vs_ew_on"] == "Δm"
    assert list(summary.index[:2]) == ["cagrad", "imtl"] or summary.index[0] == "cagrad"

    # one seed: flagged, no interval, no test
    uw = summary.loc["uw"]
    assert uw["seeds"] == 1 and uw["few_seeds"] and math.isnan(uw["delta_m_ci_low"]) and uw["vs_ew"] == "too few seeds"

    # MR and its spread over seed resamples: CAGrad is first on f2 in every resample and on f1 in (almost) all
    assert cagrad["mean_rank"] == 1.0 and (cagrad["mean_rank_ci_low"], cagrad["mean_rank_ci_high"]) == (1.0, 1.0)
    assert summary.loc["uw", "mean_rank"] == 4.0 and summary.loc["uw", "mean_rank_ci_high"] == 4.0


def test_uncertainty_by_hand():
    s = uncertainty.summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3) and s.high == pytest.approx(2.0 + T_975_2 / math.sqrt(3)) and s.few is False
    one = uncertainty.summarize([5.0, float("nan")])
    assert one.n == 1 and math.isnan(one.std) and math.isnan(one.low) and one.few
    assert uncertainty.compare([1.0, 2.0], [3.0]).outcome == "too few seeds"
    assert uncertainty.compare([1.0, 1.0], [1.0, 1.0]).outcome == "not distinguishable"
    assert uncertainty.compare([2.0, 2.0], [1.0, 1.0]).outcome == "better"
    assert uncertainty.compare([2.0, 2.0], [1.0, 1.0], higher_is_better=False).outcome == "worse"
    clear = uncertainty.compare([10.0, 10.1, 9.9, 10.0], [0.0, 0.1, -0.1, 0.0])
    assert clear.outcome == "better" and clear.p_value < 1e-6
    # one metric, lower is better: A's seeds {1, 3}, B's {2, 2}. A resampled has mean 1 (p 1/4: rank 1), 2 (p 1/2:
    # a tie, rank 1.5) or 3 (p 1/4: rank 2): MR of A averages 1.5 over resamples, from 1 to 2
    spread = uncertainty.bootstrap_mean_rank({"A": np.array([[1.0], [3.0]]), "B": np.array([[2.0], [2.0]])}, [False], [0],
                                             draws=4000, seed=1)
    assert spread["A"].mean == pytest.approx(1.5, abs=0.02) and (spread["A"].low, spread["A"].high) == (1.0, 2.0)
    assert spread["A"].mean + spread["B"].mean == pytest.approx(3.0)  # K methods average (K + 1) / 2


def test_every_requested_method_appears_with_its_trials_and_cost(report):
    methods = report.methods.set_index("method")
    ew = methods.loc["ew"]
    ew = ew[ew["group"] == 1].iloc[0] if isinstance(ew, pd.DataFrame) else ew
    assert (ew["planned"], ew["completed"], ew["stopped_early"]) == (3, 3, 1)
    # 3 runs of 3 epochs and 6 s each, 1 of 1 epoch and 2 s: 20 s over 10 epochs
    assert ew["compute_s"] == pytest.approx(20.0) and ew["s_per_epoch"] == pytest.approx(2.0)
    pcgrad = methods.loc["pcgrad"]
    assert pcgrad["diverged"] == 2 and pcgrad["planned"] == 3
    assert pcgrad["result"].startswith("no result: no finished run; 2 diverged (e.g. training diverged in epoch 2")
    nash = methods.loc["nash_mtl"]
    assert nash["planned"] == 3 and nash["group"] == "-" and nash["result"].startswith("no run logged")
    summary = report.summary.set_index("method")
    assert summary.loc["cagrad", "compute_s"] == pytest.approx(18.0) and summary.loc["cagrad", "s_per_epoch"] == 2.0


def test_pareto_front_is_over_configurations_without_pruned_runs(report):
    front = report.main.pareto_configs
    ew = front[front["label"] == "ew"]
    # the stopped configuration (0.5, 0.5) would dominate everything: left out, counted apart
    assert len(ew) == 2 and ew["comparable"].sum() == 1 and ew["pruned_runs"].sum() == 1
    point = ew[ew["comparable"]].iloc[0]
    assert (point["runs"], point["f1/value"], point["f2/value"]) == (3, 3.0, 7.0)  # three seeds, one point
    assert point["f1/value std"] == pytest.approx(1.0)
    by_method = report.main.pareto_methods.set_index("method")
    assert by_method.loc["ew", ["configurations", "pareto_optimal", "pruned_runs"]].tolist() == [1, 0, 1]
    # CAGrad's mean (5/3, 14/3) and IMTL (2.5, 5.5), the rerun (2.5, 5.0), UW (5, 9): CAGrad dominates all
    optimal = front[front["pareto_optimal"]]
    assert optimal["label"].tolist() == ["cagrad"]


def test_reruns_say_where_their_weights_and_configuration_come_from(report, rules):
    fixed = report.main.fixed.iloc[0]
    assert fixed["method"] == "fixed[imtl weights, cagrad config]"
    assert fixed["weights_from"] == f"imtl run {rules['imtl'][:8]}, β 0.9, epoch 3"
    assert fixed["source_run_id"] == rules["cagrad0"] and "cagrad.c=0.5" in fixed["source_configuration"]
    assert fixed["fixed_delta_m"] == pytest.approx(statistics.fmean([dm(2.0, 5.0), dm(3.0, 5.0)]))
    assert fixed["seeds"] == 2 and fixed["few_seeds"]


def test_budget_curves_from_the_trials_each_method_spent(report):
    curves = report.main.budget
    ew = curves[curves["method"] == "ew"].set_index("trials")
    # EW spent 4 trials: validation scores -3, -2.5 (the stopped one), -2 and -1. After n = 4 draws the maximum is
    # v_(i) with probability (i/4)^4 - ((i-1)/4)^4 = 1, 15, 65, 175 (/256)
    assert ew["trials_available"].iloc[0] == 4 and ew.loc[1, "expected_best_val"] == pytest.approx(-2.125)
    assert ew.loc[4, "expected_best_val"] == pytest.approx((-3 * 1 - 2.5 * 15 - 2 * 65 - 1 * 175) / 256)
    # the test Δm of the best-on-validation trial: with one draw, the mean of the four trials' Δm
    pruned_dm = dm(0.5, 0.5)
    assert ew.loc[1, "expected_test_delta_m"] == pytest.approx(statistics.fmean([-75.0, -137.5, -200.0, pruned_dm]))
    assert set(curves["method"]) == {"ew", "cagrad", "uw", "imtl"}  # no reruns, no single-task arms


def test_stl_file_must_match_the_group_it_is_used_for(store, rules, tmp_path, capsys):
    stl = tmp_path / "stl.json"
    stl.write_text(json.dumps({"f1": {"value": 2.0}, "f2": {"value": 5.0}, "measured_on": {"max_epochs": 1}}))
    report = build_report(store, "rules", stl)
    assert report.references is None and "does not match this group" in report.reference_source
    assert f"file {stl} was measured on max_epochs 1 (not 3)" in report.main.references.refused[0]
    short = next(g for g in report.groups if g.key.max_epochs == "1")
    assert short.references.values == {"f1": {"value": 2.0}, "f2": {"value": 5.0}}

    stl.write_text(json.dumps({"f1": {"value": 2.0}, "f2": {"value": 5.0},
                               "measured_on": {"max_epochs": 3, "data_source": "toy", "options": {"steps_per_epoch": 10}}}))
    report = build_report(store, "rules", stl)
    assert report.references == {"f1": {"value": 2.0}, "f2": {"value": 5.0}} and "measured on max_epochs 3" in report.reference_source

    stl.write_text(json.dumps({"f1": {"value": 2.0}, "f2": {"value": 5.0}}))
    assert "not checked against this group" in build_report(store, "rules", stl).reference_source

    stl.write_text(json.dumps({"f1": {"value": 2.0}, "f2": {"value": 5.0}, "measured_on": {"epochs": 3}}))
    assert main(["report", "--experiment", "rules", "--stl", str(stl), "--tracking-uri", store]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("searcher: error: ") and '"measured_on" must be a mapping' in err and "\n" not in err


def test_report_files_state_their_group(store, rules, tmp_path):
    out = tmp_path / "rules"
    assert main(["report", "--experiment", "rules", "--out", str(out), "--tracking-uri", store]) == 0
    markdown = (out / "report.md").read_text()
    assert "The runs fall into 3 groups" in markdown
    assert "## Group 1: problem toy, data toy, max_epochs 3, steps_per_epoch=10" in markdown
    assert "| uw |" in markdown and "1 ⚠" in markdown and "not distinguishable (p=" in markdown
    assert "| nash_mtl | - | 3 |" in markdown
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[:2]) == ["group", "group_key"] and set(summary["group"]) == {1, 2, 3}
    for name in ("budget.png", "budget.html", "budget_curves.csv", "methods.csv", "pareto_configurations.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_values_are_printed_in_the_unit_the_papers_print(store, tmp_path):
    """NYUv2 as `000` Table 2: mIoU and pixel accuracy in percent, angles in degrees; CSVs keep the logged values."""
    from trainables.problems import build_problem

    units = build_problem("nyuv2").units()
    assert units["segmentation"]["miou"] == (100.0, "%") and units["normal"]["mean_angle"] == (1.0, "deg")
    assert units["depth"]["abs_err"] == (1.0, "m") and units["normal"]["within_11.25"] == (100.0, "%")
    assert build_problem("qm9").units()["U0"]["mae"] == (1.0, "meV")

    client = MlflowClient(store)
    exp = client.create_experiment("units")
    run = client.create_run(exp, tags={"searcher.method": "ew", "searcher.space": "nyuv2", "searcher.status": "completed"},
                            run_name="ew-0")
    client.log_batch(run.info.run_id, params=[Param("method", "ew")],
                     metrics=[Metric("best/val_score", -1.0, 0, 1), Metric("best/test/segmentation/miou", 0.4089, 0, 1),
                              Metric("best/test/normal/mean_angle", 27.27, 0, 1)])
    client.set_terminated(run.info.run_id)
    out = tmp_path / "units"
    assert main(["report", "--experiment", "units", "--out", str(out), "--tracking-uri", store]) == 0
    markdown = (out / "report.md").read_text()
    assert "segmentation/miou ↑ (%)" in markdown and "normal/mean_angle ↓ (deg)" in markdown
    assert "| 40.89 |" in markdown and "| 27.27 |" in markdown
    assert pd.read_csv(out / "summary.csv").iloc[0]["segmentation/miou"] == pytest.approx(0.4089)
