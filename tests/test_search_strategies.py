"""Search strategies: the grid (every point once), random, NSGA-II over task metrics, and the
weight simplex that ``fixed`` searches."""

from __future__ import annotations

import math
import os

import mlflow
import numpy as np
import optuna
import pytest

from searcher.samplers import PicklableNSGAIISampler, grid_sampler
from searcher.launch import experiment_path, storage_path
from searcher.search import SEARCHES, SearchOptions, make_scheduler, objectives, plan_search, run_search
from searcher.session import open_session
from spaces import SPACES, grid_points, suggest, suggest_grid_point
from spaces.simplex import simplex_grid, simplex_lattice, weights_from_u
from trainables.errors import ConfigError
from trainables.methods.fixed import parse_weights


# ----------------------------------------------------------------------------- the simplex
def test_weights_from_u_lie_on_the_simplex_and_equal_u_give_equal_weights():
    rng = np.random.default_rng(0)
    for _ in range(200):
        u = rng.uniform(1e-6, 1.0, size=int(rng.integers(2, 12)))
        w = weights_from_u(u)
        assert min(w) >= 0 and math.isclose(sum(w), 1.0, rel_tol=1e-12)
    assert weights_from_u([0.3, 0.3, 0.3]) == pytest.approx([1 / 3] * 3)
    assert weights_from_u([1.0, 1.0]) == [0.5, 0.5]  # the degenerate corner maps to the centre
    # a smaller u is a larger weight: -log is decreasing
    w = weights_from_u([0.1, 0.5, 0.9])
    assert w[0] > w[1] > w[2]


def test_uniform_u_gives_the_flat_dirichlet():
    """Dirichlet(1, 1, 1): each weight has mean 1/3 and variance (1/3)(2/3)/4 = 1/18."""
    rng = np.random.default_rng(1)
    w = np.array([weights_from_u(u) for u in rng.uniform(0, 1, size=(20000, 3))])
    assert w.mean(axis=0) == pytest.approx([1 / 3] * 3, abs=0.01)
    assert w.var(axis=0) == pytest.approx([1 / 18] * 3, abs=0.003)
    # and the first weight of Dirichlet(1,1,1) is Beta(1, 2): P(w1 < 1/2) = 1 - (1/2)^2 = 3/4
    assert (w[:, 0] < 0.5).mean() == pytest.approx(0.75, abs=0.01)


def test_simplex_lattice_is_every_interior_point_once():
    points = simplex_lattice(3, 10)
    assert len(points) == math.comb(9, 2) == 36
    assert len({tuple(p) for p in points}) == 36
    for p in points:
        assert min(p) >= 0.1 - 1e-12 and math.isclose(sum(p), 1.0)
    assert simplex_lattice(2, 4) == [[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]]
    assert simplex_grid(["a", "b"], 4) == ["0.25,0.75", "0.5,0.5", "0.75,0.25"]
    with pytest.raises(ConfigError, match="11 tasks"):
        simplex_grid([f"t{i}" for i in range(11)])


def test_fixed_with_no_weights_searches_the_simplex_and_parses():
    space = SPACES.get("toy")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(20):
        trial = study.ask()
        constants = suggest(trial, space, ["fixed"], ["f1", "f2"], fixed={})
        assert set(trial.params) >= {"simplex.f1", "simplex.f2"}
        weights = parse_weights(constants["fixed.weights"], ["f1", "f2"])
        expected = weights_from_u([trial.params["simplex.f1"], trial.params["simplex.f2"]])
        assert weights == pytest.approx(expected, rel=1e-5)
        seen.append(weights[0])
        study.tell(trial, 0.0)
    assert max(seen) - min(seen) > 0.3  # it does move over the simplex
    # given weights are not searched
    trial = study.ask()
    constants = suggest(trial, space, ["fixed"], ["f1", "f2"], fixed={"fixed.weights": "0.2,0.8"})
    assert constants["fixed.weights"] == "0.2,0.8" and not any(k.startswith("simplex.") for k in trial.params)


# ----------------------------------------------------------------------------- the grid
def test_grid_points_are_the_union_of_each_methods_product():
    space = SPACES.get("mnist_cl_rr")
    fixed = {"optimizer": "adam"}
    points = grid_points(space, ["ew", "cagrad", "single_task"], ["CL", "RR"], fixed)
    n_common = 7 * 6  # 002 §3.1: 7 learning rates x 6 dropouts, Adam only
    by_method = {m: [p for p in points if p["method"] == m] for m in ("ew", "cagrad", "single_task")}
    assert len(by_method["ew"]) == n_common
    assert len(by_method["cagrad"]) == n_common * 3  # c in {0.2, 0.5, 0.8}
    assert len(by_method["single_task"]) == n_common * 2  # one per task
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert all("optimizer" not in p for p in points)
    assert {p["cagrad.c"] for p in by_method["cagrad"]} == {0.2, 0.5, 0.8}
    assert {p["lr"] for p in points} == set(space.common["lr"])


def test_grid_sampler_visits_every_point_exactly_once():
    space = SPACES.get("toy")
    points = grid_points(space, ["ew", "cagrad"], ["f1", "f2"], {"optimizer": "adam", "start": 0})
    assert len(points) == 5 + 5 * 3
    sampler = grid_sampler(len(points), seed=3)
    study = optuna.create_study(sampler=sampler)
    configs = []
    for _ in range(len(points)):
        trial = study.ask()
        configs.append(suggest_grid_point(trial, space, points, {"optimizer": "adam", "start": 0}))
        study.tell(trial, 0.0)
    keys = [tuple(sorted((k, v) for k, v in c.items() if k != "run_index")) for c in configs]
    assert len(set(keys)) == len(points)
    assert all(c["optimizer"] == "adam" and c["start"] == 0 for c in configs)
    assert sampler.is_exhausted(study)


def test_plan_rejects_more_samples_than_grid_points_and_unknown_searches():
    session = open_session("toy", ["ew"], ["optimizer=adam", "start=0"], None, max_epochs=1)
    assert plan_search(session, SearchOptions(search="grid"), None).num_samples == 5
    with pytest.raises(ConfigError, match=r"more than the points of every arm's grid \(ew: 5\)"):
        plan_search(session, SearchOptions(search="grid"), 6)
    with pytest.raises(ConfigError, match="--num-samples must be at least 1"):
        plan_search(session, SearchOptions(search="tpe"), 0)
    with pytest.raises(ConfigError, match="unknown search"):
        plan_search(session, SearchOptions(search="bayes"), 3)


@pytest.mark.parametrize("search", list(SEARCHES))
def test_every_planned_search_algorithm_pickles_and_still_samples_after(search):
    """Ray pickles the search algorithm (sampler included) when the Tuner starts and at every
    experiment checkpoint; Optuna 5.1's NSGA-II holds a thread lock that failed that at once.
    Each sampler must survive the round trip and go on suggesting, with its state intact."""
    import pickle

    session = open_session("toy", ["ew", "cagrad"], ["optimizer=adam", "start=0"], None, max_epochs=1)
    plan = plan_search(session, SearchOptions(search=search, seed=3), None)
    twin = pickle.loads(pickle.dumps(plan.search_alg))
    for arm, searcher in plan.search_alg._searchers.items():  # one sampler per arm
        assert type(twin._searchers[arm]._sampler) is type(searcher._sampler)
    # the unpickled sampler draws what the original draws: the RNG state travelled with it
    for name in ("t1", "t2", "t3"):
        assert twin.suggest(name) == plan.search_alg.suggest(name)
    # and it pickles again once it has a study to cache (the NSGA-II generation cache)
    pickle.loads(pickle.dumps(twin))


def test_nsga2_sampler_pickles_with_its_lock_rebuilt_and_keeps_optunas_behaviour():
    import pickle
    import threading

    sampler = PicklableNSGAIISampler(seed=0, population_size=4)
    twin = pickle.loads(pickle.dumps(sampler))
    assert isinstance(twin._thread_lock, type(threading.Lock())) and twin._thread_lock is not sampler._thread_lock
    assert not twin._thread_lock.locked()
    # the same study, driven by both, proposes the same points (a drop-in for Optuna's class)
    def run(s):
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=s)
        for _ in range(10):
            t = study.ask()
            x = t.suggest_float("x", 0.0, 1.0)
            study.tell(t, [x, (1 - x) ** 2])
        return [t.params["x"] for t in study.trials]

    assert run(PicklableNSGAIISampler(seed=0, population_size=4)) == run(optuna.samplers.NSGAIISampler(seed=0, population_size=4))
    assert run(twin) == run(PicklableNSGAIISampler(seed=0, population_size=4))


def test_asha_rungs_sit_at_grace_times_powers_of_the_reduction_factor():
    """ASHA (Li et al. 2020, Alg. 1): rung k at grace * eta^k epochs, below max_t; FIFO has none.
    (Read from Ray's scheduler: its milestones are what decides when trials can be stopped.)"""
    def rungs(scheduler):  # (every arm's ASHA has the same rungs)
        return sorted(milestone for milestone, _ in scheduler.scheduler_for("ew")._brackets[0]._rungs)

    assert rungs(make_scheduler("asha", 30, 3, reduction_factor=3)) == [3, 9, 27]
    assert rungs(make_scheduler("asha", 10, 2, reduction_factor=4)) == [2, 8]
    assert rungs(make_scheduler("asha", 10, None)) == [2, 6]  # default grace: max_epochs // 5, eta 3
    assert not hasattr(make_scheduler("fifo", 10, None), "_brackets")


def test_nsga2_objectives_follow_each_tasks_metric_direction():
    session = open_session("mnist_cl_rr", ["ew"], [], None, max_epochs=1)
    assert objectives(session) == (["best/val/CL/accuracy", "best/val/RR/mse"], ["max", "min"])


# ----------------------------------------------------------------------------- real searches
def test_grid_search_runs_every_point_once_through_ray(ray_session, tracking_uri, tmp_path):
    session = open_session("toy", ["ew", "cagrad"], ["steps_per_epoch=5", "optimizer=adam", "start=1", "lr=0.01"], None, max_epochs=1)
    options = SearchOptions(search="grid", scheduler="fifo", storage=str(tmp_path / "ray"), name="grid")
    run_search(session, options, tracking_uri, "grid")
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["grid"])
    trials = runs[runs["tags.searcher.role"] != "search"]
    # ew has no own parameter (1 point), cagrad has 3 values of c
    assert len(trials) == 4
    points = sorted((m, c if isinstance(c, str) else "") for m, c in zip(trials["params.method"], trials["params.cagrad.c"].fillna("")))
    assert points == [("cagrad", "0.2"), ("cagrad", "0.5"), ("cagrad", "0.8"), ("ew", "")]
    parent = runs[runs["tags.searcher.role"] == "search"].iloc[0]
    assert parent["params.search"] == "grid" and parent["params.grid_size"] == "4"


def test_nsga2_searches_fixed_weights_over_two_objectives(ray_session, tracking_uri, tmp_path):
    session = open_session("toy", ["fixed"], ["steps_per_epoch=20", "optimizer=adam", "start=0"], None, max_epochs=2)
    options = SearchOptions(search="nsga2", num_samples=6, seed=0, storage=str(tmp_path / "ray"), name="front", grace_period=1)
    run_search(session, options, tracking_uri, "front")
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["front"])
    trials = runs[runs["tags.searcher.role"] != "search"]
    assert len(trials) == 6
    weights = [parse_weights(w, ["f1", "f2"]) for w in trials["params.fixed.weights"]]
    assert all(math.isclose(sum(w), 1.0, rel_tol=1e-4) for w in weights)
    assert len({round(w[0], 4) for w in weights}) == 6  # six different points of the simplex
    # every trial reports both objectives
    assert trials["metrics.best/val/f1/value"].notna().all() and trials["metrics.best/val/f2/value"].notna().all()
    parent = runs[runs["tags.searcher.role"] == "search"].iloc[0]
    assert parent["params.objectives"] == "best/val/f1/value,best/val/f2/value"


def test_a_named_search_is_not_silently_overwritten(ray_session, tracking_uri, tmp_path):
    session = open_session("toy", ["ew"], ["steps_per_epoch=5"], None, max_epochs=1)
    options = SearchOptions(num_samples=1, storage=str(tmp_path / "ray"), name="once", scheduler="fifo")
    run_search(session, options, tracking_uri, "once")
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        run_search(session, options, tracking_uri, "once")
    with pytest.raises(ConfigError, match="no search named 'other'"):
        run_search(session, SearchOptions(storage=str(tmp_path / "ray"), name="other", resume=True), tracking_uri, "once")


def test_ray_state_defaults_to_a_folder_beside_a_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = SearchOptions()
    assert storage_path(options, "sqlite:///mlflow.db") == str(tmp_path / "ray_results")
    assert storage_path(options, f"sqlite:///{tmp_path}/proj/mlflow.db") == str(tmp_path / "proj" / "ray_results")
    assert experiment_path(options, "s1", "sqlite:///mlflow.db") == str(tmp_path / "ray_results" / "s1")
    # a tracking server has no folder: Ray's own default, and an explicit --storage always wins
    assert storage_path(options, "http://head:5000") == os.path.expanduser("~/ray_results")
    assert storage_path(SearchOptions(storage="runs"), "sqlite:///mlflow.db") == str(tmp_path / "runs")
    assert experiment_path(SearchOptions(storage="s3://bucket/x/"), "s1", "http://head:5000") == "s3://bucket/x/s1"


def test_a_search_without_storage_keeps_its_state_beside_mlflow_db_and_resumes_from_there(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///mlflow.db"
    session = open_session("toy", ["ew"], ["steps_per_epoch=5"], None, max_epochs=1)
    run_search(session, SearchOptions(num_samples=1, name="here", scheduler="fifo"), uri, "here")
    assert (tmp_path / "ray_results" / "here").is_dir()
    with pytest.raises(ConfigError, match=f"already exists at {tmp_path / 'ray_results' / 'here'}"):
        run_search(session, SearchOptions(num_samples=1, name="here", scheduler="fifo"), uri, "here")
