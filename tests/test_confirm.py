"""`searcher confirm`: each method's best configuration retrained with new seeds (`002`'s protocol)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from searcher.cli import main
from searcher.confirm import plan_confirm, run_confirm, select_best
from searcher.search import SearchOptions, run_search
from searcher.session import open_session
from trainables.config import REPEAT_SEED_OFFSET


def _runs(rows):
    return pd.DataFrame(rows)


def test_select_best_takes_the_top_finished_runs_per_method_and_task():
    runs = _runs([
        {"run_id": "a", "params.method": "ew", "tags.searcher.status": "completed", "metrics.best/val_score": 1.0},
        {"run_id": "b", "params.method": "ew", "tags.searcher.status": "stopped_early", "metrics.best/val_score": 3.0},
        {"run_id": "c", "params.method": "ew", "tags.searcher.status": "diverged", "metrics.best/val_score": 9.0},
        {"run_id": "d", "params.method": "single_task", "tags.searcher.task": "f1", "tags.searcher.status": "completed", "metrics.best/val_score": 0.5},
        {"run_id": "e", "params.method": "single_task", "tags.searcher.task": "f2", "tags.searcher.status": "completed", "metrics.best/val_score": 0.1},
        {"run_id": "f", "params.method": "ew", "tags.searcher.status": "completed", "metrics.best/val_score": 2.0},
        {"run_id": "g", "params.method": "ew", "tags.searcher.status": "completed", "tags.searcher.role": "rerun", "metrics.best/val_score": 8.0},
        {"run_id": "h", "params.method": "ew", "tags.searcher.status": "completed", "tags.searcher.mode": "confirm", "metrics.best/val_score": 7.0},
    ])
    best = select_best(runs, top=1)
    assert dict(zip(best["method_key"], best["run_id"])) == {"ew": "b", "single_task[f1]": "d", "single_task[f2]": "e"}
    best2 = select_best(runs, top=2)
    assert list(best2[best2["method_key"] == "ew"]["run_id"]) == ["b", "f"]


def test_confirm_retrains_the_best_configuration_of_each_method_with_new_seeds(ray_session, tracking_uri, tmp_path):
    session = open_session("toy", ["ew", "cagrad"], ["steps_per_epoch=10", "optimizer=adam"], None, max_epochs=2)
    run_search(session, SearchOptions(num_samples=3, seed=2, storage=str(tmp_path / "ray"), name="s", scheduler="fifo"),
               tracking_uri, "confirm-test")
    plan = plan_confirm(tracking_uri, "confirm-test", top=1, repeats=2, data_dir=None)
    assert set(plan.sources["method_key"]) <= {"ew", "cagrad"} and len(plan.configs) == 2 * len(plan.sources)
    table = run_confirm(plan, tracking_uri, SearchOptions(storage=str(tmp_path / "ray")))

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["confirm-test"])
    confirms = runs[runs["tags.searcher.confirm_of"].notna()] if "tags.searcher.confirm_of" in runs else runs.iloc[0:0]
    assert len(confirms) == len(plan.configs)
    for _, src in plan.sources.iterrows():
        reps = confirms[confirms["tags.searcher.confirm_of"] == src["run_id"]]
        assert len(reps) == 2
        # the same configuration ...
        for key in ("method", "lr", "optimizer", "start", "run_index"):
            assert (reps[f"params.{key}"] == src[f"params.{key}"]).all()
        if src["params.method"] == "cagrad":
            assert (reps["params.cagrad.c"] == src["params.cagrad.c"]).all()
        # ... with new seeds, different from each other and from the source's
        seeds = sorted(int(s) for s in reps["params.seed"])
        assert seeds == [int(src["params.seed"]) + REPEAT_SEED_OFFSET, int(src["params.seed"]) + 2 * REPEAT_SEED_OFFSET]
        assert (reps["tags.searcher.status"] == "completed").all() and (reps["tags.searcher.mode"] == "confirm").all()
        # the summary is the mean over the repeats' MLflow metrics
        row = table[table["source_run"] == src["run_id"][:8]].iloc[0]
        for task in ("f1", "f2"):
            assert row[f"{task}/value mean"] == pytest.approx(reps[f"metrics.best/test/{task}/value"].mean(), abs=1e-4)
    # a second confirm does not pick confirmation runs as sources
    assert set(plan_confirm(tracking_uri, "confirm-test", 1, 1, None).sources["run_id"]) == set(plan.sources["run_id"])


def test_confirm_errors_are_one_line(tracking_uri, capsys):
    assert main(["confirm", "--experiment", "nothing-here", "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("searcher: error: no MLflow experiment named 'nothing-here'")
    assert not any("Traceback" in line for line in err)
