"""Population-based fixed weights (``--scheduler pbt``, issue 16): the explore step, the restore of
a parent's state under new weights and lr, the per-arm scheduler, the CLI's refusals, and a real
PBT search on the toy logged to MLflow."""

from __future__ import annotations

import math
import os
import random
import signal

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler

from searcher.arms import PerArmScheduler
from searcher.cli import main
from searcher.progress import ProgressLine
from searcher.pbt import (
    LINEAGE_ARTIFACT,
    BanditWeights,
    SimplexToWeights,
    PopulationBasedWeights,
    WeightExplorer,
    lineage_record,
    make_pb2,
    make_pbt,
    perturb_weights,
)
from searcher.search import SearchOptions, make_scheduler, run_search
from searcher.session import open_session
from trainables.methods.fixed import parse_weights
from trainables.problems import build_problem
from trainables.trainer import Trainer
from trainables.tune_trainable import rescale_lr, restored_event


class Draws:
    """A stand-in for ``random.Random`` that returns given normal draws."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def gauss(self, mu: float, sigma: float) -> float:
        return self.values.pop(0)


def test_a_log_space_step_worked_by_hand():
    # [0.25, 0.75] times [e^{ln 3}, e^0] = [0.75, 0.75]; back to the total 1: [0.5, 0.5]
    assert perturb_weights([0.25, 0.75], Draws(math.log(3), 0.0)) == pytest.approx([0.5, 0.5])
    # the parent's total is kept (weights given as 1,1 stay on the simplex of sum 2)
    assert perturb_weights([1.0, 1.0], Draws(math.log(4), 0.0)) == pytest.approx([1.6, 0.4])
    # a zero weight is floored (1e-6 of the total) so that it stays positive and can move
    moved = perturb_weights([0.0, 1.0], Draws(0.0, 0.0))
    assert moved[0] > 0 and sum(moved) == pytest.approx(1.0)


@pytest.mark.parametrize("tasks", [("f1", "f2"), ("a", "b", "c"), ("a", "b", "c", "d", "e")])
def test_explore_keeps_weights_positive_on_the_simplex_and_moves_them(tasks):
    """Over many seeds and starting points: parseable, positive, same total, and changed."""
    for seed in range(200):
        start = random.Random(1000 + seed).choices([0.0, 0.01, 0.3, 1.0, 5.0], k=len(tasks))
        if sum(start) == 0:
            continue
        raw = ",".join(f"{w:g}" for w in start)
        explorer = WeightExplorer(tasks, seed=seed)
        config = {"method": "fixed", "fixed.weights": raw, "lr": 0.01, "seed": 3}
        new = explorer(config)
        weights = parse_weights(new["fixed.weights"], tasks)  # the one weights schema, read back
        assert all(w > 0 for w in weights)
        assert sum(weights) == pytest.approx(sum(start), rel=1e-5)
        assert weights != pytest.approx([max(w, 1e-6 * sum(start)) for w in start], rel=1e-9)
        assert {k: v for k, v in new.items() if k != "fixed.weights"} == {k: v for k, v in config.items() if k != "fixed.weights"}
        assert config["fixed.weights"] == raw  # the parent's config is not touched


def test_lr_is_mutated_only_with_pbt_lr_and_by_rays_factors():
    config = {"fixed.weights": "0.5,0.5", "lr": 0.01}
    assert WeightExplorer(("f1", "f2"), seed=0)(config)["lr"] == 0.01
    lrs = {WeightExplorer(("f1", "f2"), seed=s, mutate_lr=True)(config)["lr"] for s in range(20)}
    assert sorted(lrs) == pytest.approx([0.008, 0.012])


def test_explore_is_repeatable_from_the_seed():
    config = {"fixed.weights": "0.3,0.7"}
    assert WeightExplorer(("f1", "f2"), seed=5)(config) == WeightExplorer(("f1", "f2"), seed=5)(config)
    assert WeightExplorer(("f1", "f2"), seed=5)(config) != WeightExplorer(("f1", "f2"), seed=6)(config)


def toy_trainer(weights: str, **config) -> Trainer:
    return Trainer(build_problem("toy", {}), {"method": "fixed", "fixed.weights": weights, "lr": 0.05,
                                              "steps_per_epoch": 5, **config})


def test_a_restored_parent_state_trains_with_the_new_weights():
    """PBT's exploit: the parent's model, optimizer and epoch, the child's (mutated) weights."""
    parent = toy_trainer("0.2,0.8")
    list(parent.fit(2))
    child = toy_trainer("0.6,0.4")
    child.load_state_dict(parent.state_dict())
    assert child.epoch == 2
    for name, value in parent.model.state_dict().items():
        assert torch.equal(child.model.state_dict()[name], value)
    assert child.method.weights.tolist() == pytest.approx([0.6, 0.4])  # not the parent's 0.2, 0.8
    metrics = child.run_epoch()
    assert (metrics["weight/f1"], metrics["weight/f2"]) == pytest.approx((0.6, 0.4))
    assert metrics["epoch"] == 3


def test_a_new_lr_rescales_the_restored_schedule():
    """lr 0.1 halved each epoch: after 2 epochs 0.025. A child with lr 0.2 takes that state:
    rescaled by 0.2 / 0.1 its lr is 0.05 (= 0.2 * 0.5^2) and its schedule's base 0.2."""
    parent = toy_trainer("0.5,0.5", lr=0.1, lr_decay=0.5)
    list(parent.fit(2))
    assert parent.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    child = toy_trainer("0.5,0.5", lr=0.2, lr_decay=0.5)
    child.load_state_dict(parent.state_dict())
    assert child.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)  # the parent's, until rescaled
    rescale_lr(child, 0.2 / 0.1)
    assert child.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert child.scheduler.base_lrs == pytest.approx([0.2])
    assert child.run_epoch()["train/lr"] == pytest.approx(0.05)
    assert child.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_a_restore_names_its_parent_only_when_the_checkpoint_is_another_trials():
    trainer = toy_trainer("0.3,0.7")
    assert restored_event({"trial_id": "a", "lr": 0.05}, "a", trainer) is None  # its own checkpoint (a resume)
    assert restored_event({}, "a", trainer) is None  # a checkpoint from before lineage was written
    event = restored_event({"trial_id": "b", "lr": 0.04}, "a", trainer)
    assert event == {"epoch": 0, "parent_trial_id": "b", "weights": "0.3,0.7", "lr": 0.05, "parent_lr": 0.04}


def test_lineage_record_keeps_the_trials_own_exploits_and_the_models_history():
    first = [{"epoch": 1, "parent_trial_id": "b", "weights": "0.4,0.6"}]
    record = lineage_record("a", first, {"b": "run-b"})
    assert record["exploits"] == record["lineage"] == [{**first[0], "parent_run_id": "run-b"}]
    # a second exploit, of c, whose model had itself exploited d at epoch 1
    second = [{"epoch": 1, "parent_trial_id": "d", "weights": "0.1,0.9"},
              {"epoch": 3, "parent_trial_id": "c", "weights": "0.2,0.8"}]
    record = lineage_record("a", second, {"b": "run-b", "c": "run-c"}, previous=record)
    assert [e["parent_trial_id"] for e in record["exploits"]] == ["b", "c"]
    assert [e["parent_trial_id"] for e in record["lineage"]] == ["d", "c"]
    assert record["lineage"][0]["parent_run_id"] is None and record["exploits"][1]["parent_run_id"] == "run-c"


def test_pbt_acts_in_the_fixed_arm_only():
    scheduler = make_scheduler("pbt", 6, None, pbt=make_pbt(["f1", "f2"], 2, seed=0))
    assert isinstance(scheduler, PerArmScheduler)
    fixed = scheduler.scheduler_for("fixed")
    assert isinstance(fixed, PopulationBasedWeights) and fixed._perturbation_interval == 2
    assert fixed._metric == "val/score" and fixed._mode == "max"
    assert isinstance(scheduler.scheduler_for("ew"), ASHAScheduler)
    assert scheduler.set_search_properties("best/val_score", "max")  # Tune's own call: the PBT keeps its metric
    assert fixed._metric == "val/score"
    # no exploit at the last epoch: the trial would restart with nothing left to train
    last = make_pbt(["f1", "f2"], 1, seed=0, max_epochs=4)
    assert last.on_trial_result(None, None, {"epoch": 4, "training_iteration": 4, "val/score": 1.0}) == "CONTINUE"


@pytest.mark.parametrize("argv, message", [
    (["--methods", "ew"], "add it to --methods"),
    (["--methods", "fixed", "--search", "grid"], "--search tpe or random"),
    (["--methods", "fixed", "--search", "nsga2"], "--search tpe or random"),
    (["--methods", "fixed", "--pbt-interval", "4"], "leaves no perturbation in 4 epochs"),
    (["--methods", "fixed", "--pbt-interval", "0"], "at least 1"),
    (["--methods", "fixed", "--num-samples", "1"], "population of at least 2"),
])
def test_bad_pbt_searches_are_one_line_errors_before_ray_starts(argv, message, capsys, tmp_path):
    code = main(["tune", "--space", "toy", "--max-epochs", "4", "--scheduler", "pbt", *argv,
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.db").exists()


def test_pbt_flags_without_pbt_are_refused(capsys):
    assert main(["tune", "--space", "toy", "--methods", "fixed", "--pbt-lr"]) == 2
    assert "go with --scheduler pbt" in capsys.readouterr().err


def population_search(scheduler: str, tracking_uri: str, tmp_path, resume: bool = False):
    """4 fixed trials of 4 epochs on the toy under ``scheduler`` (perturbation every epoch, seed
    3), in the experiment named after it; returns that experiment's runs (parent and trials)."""
    session = open_session("toy", ["fixed"], ["steps_per_epoch=10", "optimizer=adam"], None, max_epochs=4)
    options = SearchOptions(num_samples=4, seed=3, storage=str(tmp_path / "ray"), name=scheduler, scheduler=scheduler,
                            pbt_interval=1, search="random", resume=resume)
    run_search(session, options, tracking_uri, scheduler)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[scheduler])


def test_a_pbt_search_exploits_and_logs_one_run_per_trial_with_the_applied_weights(ray_session, tracking_uri, tmp_path):
    from analysis.extract import extract_from_run, population_best

    runs = population_search("pbt", tracking_uri, tmp_path)
    parent = runs[runs["tags.searcher.role"] == "search"]
    trials = runs[runs["tags.searcher.role"] != "search"]
    # one MLflow run per trial across every pause, exploit and restore
    assert len(parent) == 1 and len(trials) == 4 and trials["tags.searcher.trial_id"].nunique() == 4
    assert parent["params.scheduler"].iloc[0] == "pbt" and parent["params.pbt_interval"].iloc[0] == "1"
    assert set(trials["tags.searcher.status"]) == {"completed"}

    client = MlflowClient(tracking_uri)
    run_ids = set(trials.run_id)
    exploited = 0
    for _, run in trials.iterrows():
        if LINEAGE_ARTIFACT not in {a.path for a in client.list_artifacts(run.run_id)}:
            # never exploited: it trained its initial weights every epoch
            initial = parse_weights(run["params.fixed.weights"], ["f1", "f2"])
            for task, w in zip(("f1", "f2"), initial):
                values = [m.value for m in client.get_metric_history(run.run_id, f"weight/{task}")]
                assert len(values) == 4 and values == pytest.approx([w] * 4, rel=1e-6)
            continue
        exploited += 1
        record = mlflow.artifacts.load_dict(f"runs:/{run.run_id}/{LINEAGE_ARTIFACT}")
        last = record["exploits"][-1]
        assert last["parent_run_id"] in run_ids - {run.run_id}
        assert record["lineage"][-1] == last
        # the weights the trainer applied after its last exploit are the mutated config's
        applied = parse_weights(last["weights"], ["f1", "f2"])
        for task, w in zip(("f1", "f2"), applied):
            history = client.get_metric_history(run.run_id, f"weight/{task}")
            after = [m for m in history if m.step > last["epoch"]]
            latest = {m.step: m for m in sorted(after, key=lambda m: m.timestamp)}  # a rewound step: the later value
            assert latest and all(m.value == pytest.approx(w, rel=1e-6) for m in latest.values())
        # extract-weights on a PBT trial: its last applied weights, not an EMA over its schedule
        extracted = extract_from_run(client, run.run_id)
        assert extracted["weights_rule"] == "last"
        assert [extracted["weights"][t] for t in ("f1", "f2")] == pytest.approx(applied, rel=1e-5)
    assert exploited >= 1
    best = population_best(client, trials.run_id.iloc[0])
    assert trials.set_index("run_id").loc[best, "metrics.val/score"] == trials["metrics.val/score"].max()


class Interrupting(ProgressLine):
    """The search's progress line, which interrupts the run (SIGUSR1: Ray Tune's own graceful
    stop, as Ctrl+C) at its ``after``-th epoch result, once per test (``fired`` is a class
    attribute: Ray pickles the callback with the run config and restores it on ``--resume``)."""

    after = 6
    fired = False
    seen = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        type(self).seen += 1
        if not type(self).fired and type(self).seen >= self.after:
            type(self).fired = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_a_resumed_pbt_search_loses_and_duplicates_nothing(ray_session, tracking_uri, tmp_path, monkeypatch):
    """Interrupt a PBT search part-way (trials done, running and not yet started), resume it:
    every trial has one MLflow run, completed, with each of its epochs logged, and the
    population keeps its size (no trial added or lost by the restore)."""
    import searcher.launch

    monkeypatch.setattr(searcher.launch, "ProgressLine", Interrupting)
    monkeypatch.setattr(Interrupting, "fired", False)
    monkeypatch.setattr(Interrupting, "seen", 0)
    before = population_search("pbt", tracking_uri, tmp_path)
    assert Interrupting.fired
    done = (before["tags.searcher.role"] != "search") & (before["tags.searcher.status"] == "completed")
    assert done.sum() < 4, "the interrupt came too late: nothing left to resume"

    runs = population_search("pbt", tracking_uri, tmp_path, resume=True)
    parent = runs[runs["tags.searcher.role"] == "search"]
    trials = runs[runs["tags.searcher.role"] != "search"]
    assert len(parent) == 1  # the resumed search wrote to its first parent run
    assert len(trials) == 4 and trials["tags.searcher.trial_id"].nunique() == 4
    assert set(trials["tags.searcher.status"]) == {"completed"} and set(trials["status"]) == {"FINISHED"}
    client = MlflowClient(tracking_uri)
    exploited = 0
    for run_id in trials.run_id:
        # The epochs as logged, in order: runs of consecutive epochs. A new run starts only
        # where the trial took another's checkpoint (an exploit: at its restored epoch + 1), or
        # once, at the resume, one epoch back (the interrupt came between an epoch's result and
        # Ray's save of its checkpoint: that epoch is trained again, its later value is the
        # run's). A resume that lost epochs would leave a gap no exploit explains; one that
        # retrained the trial from its start, more than one epoch back.
        history = sorted(client.get_metric_history(run_id, "epoch"), key=lambda m: m.timestamp)
        steps = [m.step for m in history]
        exploits = []
        if LINEAGE_ARTIFACT in {a.path for a in client.list_artifacts(run_id)}:
            exploits = mlflow.artifacts.load_dict(f"runs:/{run_id}/{LINEAGE_ARTIFACT}")["exploits"]
        exploited += bool(exploits)
        restored = {e["epoch"] + 1 for e in exploits}
        unexplained = [(prev, s) for prev, s in zip(steps, steps[1:]) if s != prev + 1 and s not in restored]
        assert steps[0] == 1 and steps[-1] == 4, steps
        assert unexplained in ([], [(s, s) for s, _ in unexplained[:1]]), (steps, exploits)
        if not exploits:
            assert sorted(set(steps)) == [1, 2, 3, 4]
    assert exploited >= 1


# ----------------------------------------------------------------------------- --scheduler pb2


def test_pb2_rebuilds_the_weights_from_the_simplex_point_it_chose():
    # u = (e^-1, e^-3): -log u = (1, 3), so w = (1/4, 3/4) (spaces.simplex's Dirichlet map)
    config = {"simplex.f1": math.exp(-1), "simplex.f2": math.exp(-3), "fixed.weights": "0.9,0.1", "lr": 0.01}
    new = SimplexToWeights(("f1", "f2"))(config)
    assert parse_weights(new["fixed.weights"], ["f1", "f2"]) == pytest.approx([0.25, 0.75], rel=1e-5)
    assert {k: v for k, v in new.items() if k != "fixed.weights"} == {k: v for k, v in config.items() if k != "fixed.weights"}
    # equal coordinates: the centre of the simplex
    assert SimplexToWeights(("a", "b", "c"))({"simplex.a": 0.3, "simplex.b": 0.3, "simplex.c": 0.3})["fixed.weights"] \
        == "0.333333,0.333333,0.333333"


def test_pb2_acts_in_the_fixed_arm_over_the_simplex_coordinates():
    scheduler = make_scheduler("pb2", 6, None, pbt=make_pb2(["f1", "f2"], 2, max_epochs=6))
    fixed = scheduler.scheduler_for("fixed")
    assert isinstance(fixed, BanditWeights) and fixed._perturbation_interval == 2 and fixed._metric == "val/score"
    assert fixed._hyperparam_bounds == {"simplex.f1": [1e-6, 1.0], "simplex.f2": [1e-6, 1.0]}
    assert isinstance(scheduler.scheduler_for("ew"), ASHAScheduler)
    assert fixed.on_trial_result(None, None, {"epoch": 6, "training_iteration": 6, "val/score": 1.0}) == "CONTINUE"


@pytest.mark.parametrize("argv, message", [
    (["--methods", "fixed", "--param", "weights=1,1"], "leave the weights unset"),
    (["--methods", "fixed", "--pbt-lr"], "--pbt-lr goes with --scheduler pbt"),
    (["--methods", "ew"], "--scheduler pb2 mutates the task weights"),
    (["--methods", "fixed", "--search", "grid"], "--search tpe or random"),
])
def test_bad_pb2_searches_are_one_line_errors(argv, message, capsys, tmp_path):
    code = main(["tune", "--space", "toy", "--max-epochs", "4", "--scheduler", "pb2", *argv,
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_pb2_search_moves_the_simplex_point_and_trains_the_weights_rebuilt_from_it(ray_session, tracking_uri, tmp_path):
    from ray.tune import ExperimentAnalysis

    runs = population_search("pb2", tracking_uri, tmp_path)
    trials = runs[runs["tags.searcher.role"] != "search"].set_index("tags.searcher.trial_id")
    assert len(trials) == 4 and set(trials["tags.searcher.status"]) == {"completed"}
    assert (runs["tags.searcher.role"] == "search").sum() == 1
    client = MlflowClient(tracking_uri)
    moved = 0
    for trial in ExperimentAnalysis(str(tmp_path / "ray" / "pb2")).trials:
        config = trial.config  # the final config: PB2's last simplex point, and the weights rebuilt from it
        u = [config["simplex.f1"], config["simplex.f2"]]
        assert all(1e-6 <= x <= 1.0 for x in u)
        weights = parse_weights(config["fixed.weights"], ["f1", "f2"])
        e = [-math.log(x) for x in u]
        assert weights == pytest.approx([e[0] / sum(e), e[1] / sum(e)], rel=1e-4)
        run = trials.loc[trial.trial_id]
        moved += parse_weights(run["params.fixed.weights"], ["f1", "f2"]) != pytest.approx(weights, rel=1e-4)
        # what the trainer applied at its last epoch is the final config's weights
        for task, w in zip(("f1", "f2"), weights):
            history = client.get_metric_history(run.run_id, f"weight/{task}")
            last = max(history, key=lambda m: (m.step, m.timestamp))
            assert last.step == 4 and last.value == pytest.approx(w, rel=1e-5)
    assert moved >= 1


class NoSearch:
    search_alg = None


@pytest.mark.parametrize("make", [lambda: make_pbt(["f1", "f2"], 3, seed=0), lambda: make_pb2(["f1", "f2"], 3)])
def test_a_resumed_trial_keeps_its_score_and_perturbation_cadence(make):
    """Ray adds every restored trial to a fresh scheduler: a trial that reached epoch 7 with
    interval 3 was last due at 6 (next at 9, not at once), and ranks by its last score."""
    from ray.tune.experiment import Trial

    scheduler = make()
    restored = Trial("train_trial", config={"method": "fixed", "fixed.weights": "0.5,0.5", "simplex.f1": 0.5,
                                            "simplex.f2": 0.5}, stub=True)
    restored.run_metadata.last_result = {"training_iteration": 7, "val/score": -3.5}
    new = Trial("train_trial", config=dict(restored.config), stub=True)
    scheduler.on_trial_add(NoSearch(), restored)
    scheduler.on_trial_add(NoSearch(), new)
    assert scheduler._trial_state[restored].last_perturbation_time == 6
    assert scheduler._trial_state[restored].last_score == -3.5  # mode max: the score itself
    assert scheduler._trial_state[new].last_perturbation_time == 0 and scheduler._trial_state[new].last_score is None
