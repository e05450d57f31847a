"""`searcher confirm`: each method's best configuration retrained with new seeds (`002`'s protocol)."""

from __future__ import annotations

import mlflow
import pytest

from searcher.cli import main
from searcher.confirm import plan_confirm, run_confirm, select_best
from searcher.run_record import RunRecord
from searcher.search import SearchOptions, run_search
from searcher.session import open_session
from trainables.config import REPEAT_SEED_OFFSET


def record(run_id: str, method: str, status: str, val: float, task: str | None = None, role: str = "",
           mode: str = "tune", rerun_of: str | None = None, confirm_of: str | None = None) -> RunRecord:
    label = f"single_task[{task}]" if task else method
    return RunRecord(run_id=run_id, run_name=run_id, experiment_id="0", method=method, task=task, label=label, role=role,
                     mode=mode, search="s", status=status, reason="", params={"method": method}, space="toy", problem="toy",
                     data_source="toy", optimizer="adam", val_score=val, epochs=2, seconds=1.0, rerun_of=rerun_of,
                     confirm_of=confirm_of)


def test_select_best_takes_the_top_finished_runs_per_method_and_task():
    runs = [
        record("a", "ew", "completed", 1.0),
        record("b", "ew", "stopped_early", 3.0),
        record("c", "ew", "diverged", 9.0),
        record("d", "single_task", "completed", 0.5, task="f1"),
        record("e", "single_task", "completed", 0.1, task="f2"),
        record("f", "ew", "completed", 2.0),
        record("g", "ew", "completed", 8.0, role="rerun", rerun_of="a"),
        record("h", "ew", "completed", 7.0, mode="confirm", confirm_of="a"),
        record("i", "ew", "completed", 9.5, role="search"),
    ]
    best = select_best(runs, top=1)
    assert {r.label: r.run_id for r in best} == {"ew": "b", "single_task[f1]": "d", "single_task[f2]": "e"}
    best2 = select_best(runs, top=2)
    assert [r.run_id for r in best2 if r.label == "ew"] == ["b", "f"]


def test_confirm_retrains_the_best_configuration_of_each_method_with_new_seeds(ray_session, tracking_uri, tmp_path):
    session = open_session("toy", ["ew", "cagrad"], ["steps_per_epoch=10", "optimizer=adam"], None, max_epochs=2)
    run_search(session, SearchOptions(num_samples=3, seed=2, storage=str(tmp_path / "ray"), name="s", scheduler="fifo"),
               tracking_uri, "confirm-test")
    plan = plan_confirm(tracking_uri, "confirm-test", top=1, repeats=2, data_dir=None)
    assert {r.label for r in plan.sources} <= {"ew", "cagrad"} and len(plan.configs) == 2 * len(plan.sources)
    table = run_confirm(plan, tracking_uri, SearchOptions(storage=str(tmp_path / "ray")))

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["confirm-test"])
    confirms = runs[runs["tags.searcher.confirm_of"].notna()] if "tags.searcher.confirm_of" in runs else runs.iloc[0:0]
    assert len(confirms) == len(plan.configs)
    for source in plan.sources:
        src = runs[runs["run_id"] == source.run_id].iloc[0]
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
    again = plan_confirm(tracking_uri, "confirm-test", 1, 1, None).sources
    assert {r.run_id for r in again} == {r.run_id for r in plan.sources}


def test_confirm_errors_are_one_line(tracking_uri, capsys):
    assert main(["confirm", "--experiment", "nothing-here", "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("searcher: error: no MLflow experiment named 'nothing-here'")
    assert not any("Traceback" in line for line in err)
