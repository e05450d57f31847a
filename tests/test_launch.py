"""One launcher, one trial core, one seed scheme (issue 12): what `train`, `tune`, `confirm` and
`rerun` share, checked on what they log."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from searcher.confirm import plan_confirm
from searcher.launch import SearchOptions, planned
from searcher.rerun import plan_rerun, rerun_configs
from searcher.search import run_search
from searcher.session import open_session
from searcher.train import train_once
from trainables.config import REPEAT_SEED_OFFSET, repeat_seed, run_params, run_seed
from trainables.trial import DIVERGED_SCORE, RunSettings, run_trial

FIXED = ["steps_per_epoch=5", "lr=0.01", "optimizer=adam", "start=1", "cagrad.c=0.5"]


def params_of(client: MlflowClient, experiment: str, role_not: str = "search") -> list[dict[str, str]]:
    exp = client.get_experiment_by_name(experiment)
    return [r.data.params for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("searcher.role") != role_not]


def test_train_and_a_tune_trial_of_one_configuration_log_the_same_params(ray_session, tracking_uri, tmp_path):
    """Trials log the resolved, typed config (every common value, the problem's options and the
    method's own parameters, defaults included), as `train` does."""
    session = open_session("toy", ["cagrad"], FIXED, None, max_epochs=1)
    train_once(session, tracking_uri, "by-train", seed=0)
    run_search(session, SearchOptions(num_samples=1, seed=0, scheduler="fifo", storage=str(tmp_path / "ray"), name="t"),
               tracking_uri, "by-tune")
    client = MlflowClient(tracking_uri)
    (trained,), (tuned,) = params_of(client, "by-train"), params_of(client, "by-tune")
    assert trained == tuned
    # typed and complete: a default nobody gave (momentum, cagrad's own), a problem option
    assert tuned["momentum"] == "0.9" and tuned["steps_per_epoch"] == "5" and tuned["cagrad.c"] == "0.5"
    assert {"space", "data_source", "max_epochs", "seed", "run_index", "device"} <= set(tuned)


def test_run_params_resolve_types_and_drop_other_methods_keys():
    params = run_params({"method": "cagrad", "lr": "0.01", "cagrad.c": "0.2", "ew.x": 1, "grid_point": 3},
                        {"steps_per_epoch": 100})
    assert params["lr"] == 0.01 and params["cagrad.c"] == 0.2 and params["steps_per_epoch"] == 100
    assert "ew.x" not in params and "grid_point" not in params
    assert run_params({"method": "ew", "steps_per_epoch": "7"}, {"steps_per_epoch": 100})["steps_per_epoch"] == 7


def test_one_way_of_handling_divergence_on_both_paths(ray_session, tracking_uri, tmp_path):
    """`train` and a Ray trial end a diverged run with the same record: worst score, marked."""
    reports = []
    last = run_trial({"method": "ew", "lr": 1e300, "steps_per_epoch": 5}, RunSettings(problem="toy", max_epochs=3),
                     lambda metrics, trainer: reports.append(dict(metrics)))
    assert reports[-1] is not None and last["diverged"] == 1.0 and last["best/val_score"] == DIVERGED_SCORE
    assert "diverged in epoch 1" in last["diverged_reason"]

    session = open_session("toy", ["ew"], ["steps_per_epoch=5", "lr=1e300"], None, max_epochs=2)
    run_id, last = train_once(session, tracking_uri, "diverge", seed=0)
    run_search(session, SearchOptions(num_samples=1, scheduler="fifo", storage=str(tmp_path / "ray"), name="d"),
               tracking_uri, "diverge")
    client = MlflowClient(tracking_uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("diverge").experiment_id])
            if r.data.tags.get("searcher.role") != "search"]
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["searcher.status"] == "diverged"
        assert run.data.metrics["diverged"] == 1.0 and run.data.metrics["best/val_score"] == DIVERGED_SCORE


def test_one_seed_scheme():
    config = {"seed": 7, "run_index": 3}
    assert run_seed(config) == 10
    seeds = [run_seed({"seed": repeat_seed(7, k), "run_index": 3}) for k in range(3)]
    assert seeds == [7 + 3 + REPEAT_SEED_OFFSET * (k + 1) for k in range(3)]
    assert len(set(seeds)) == 3 and all(s >= REPEAT_SEED_OFFSET for s in seeds)  # never a search trial's seed


def test_reruns_are_paired_with_the_confirm_repeats_of_their_source(ray_session, tracking_uri, tmp_path):
    """Rerun k of a run and confirm repeat k of that run train with the same seed: the fixed
    weights and the method they came from see the same initializations and data orders."""
    session = open_session("toy", ["cagrad"], ["steps_per_epoch=5"], None, max_epochs=2)
    run_search(session, SearchOptions(num_samples=2, seed=4, scheduler="fifo", storage=str(tmp_path / "ray"), name="p"),
               tracking_uri, "paired")
    confirm = plan_confirm(tracking_uri, "paired", top=1, repeats=2, data_dir=None)
    (source,) = [s.run_id for s in confirm.sources]
    rerun = plan_rerun(tracking_uri, source)
    reruns = rerun_configs(rerun, 2)
    assert [run_seed(c) for c in reruns] == [run_seed(c) for c in confirm.configs]
    assert [c["repeat"] for c in reruns] == [0, 1]
    with pytest.raises(Exception, match="--repeats must be at least 1"):
        rerun_configs(rerun, 0)


def test_a_planned_list_counts_its_arms():
    _, budgets = planned([{"method": "ew"}, {"method": "ew"}, {"method": "single_task", "single_task.task": "f1"}])
    assert budgets == {"ew": 2, "single_task[f1]": 1}
    with pytest.raises(Exception, match="no configuration"):
        planned([])


def test_a_rerun_goes_through_ray_with_its_weights_and_tags(ray_session, tracking_uri, tmp_path, monkeypatch, train_toy):
    from searcher.cli import main

    monkeypatch.chdir(tmp_path)
    source = train_toy("cagrad", 2, "steps_per_epoch=5")
    assert main(["rerun", source, "--repeats", "2", "--name", "r", "--storage", str(tmp_path / "ray"),
                 "--tracking-uri", tracking_uri]) == 0
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("toy").experiment_id], "tags.`searcher.search` = 'r'")
    roles = sorted(r.data.tags["searcher.role"] for r in runs)
    assert roles == ["rerun", "rerun", "search"]  # one parent run, one run per repeat
    for run in runs:
        if run.data.tags["searcher.role"] == "rerun":
            assert run.data.tags["searcher.source_run"] == source and run.data.params["method"] == "fixed"
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["fixed_weights.json", "model"]  # model/best.pt: keep_model
            assert run.info.run_name.startswith("fixed-0000-seed")
