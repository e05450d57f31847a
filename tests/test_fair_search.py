"""The fairness rule of a search: every arm (method, or single_task per task) gets its own
budget, its own sampler state and its own pruning, and single-task references are not pruned.

The search algorithm and the scheduler are driven here as Ray Tune drives them (suggest /
complete; add / result), without Ray, so that every sampler and both schedulers can be checked
trial by trial; `tests/test_tune.py` and `tests/test_search_strategies.py` run real searches.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from searcher.arms import Arm, PerArmScheduler, arm_of_config, arms_of
from searcher.search import SEARCHES, SearchOptions, make_scheduler, plan_search
from searcher.session import open_session


def drive(search_alg: Any, score: Any, limit: int = 500) -> list[tuple[str, dict]]:
    """Ask for trials until the search says FINISHED, completing each at once with ``score(config)``."""
    out = []
    for i in range(limit):
        config = search_alg.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            return out
        assert config is not None
        search_alg.on_trial_complete(f"t{i}", result=score(config))
        out.append((f"t{i}", config))
    raise AssertionError("the search never finished")


def toy_score(config: dict) -> dict:
    """A deterministic result of a configuration (both objectives, for NSGA-II too)."""
    value = float(config.get("lr", 0.01)) * 100 + float(config.get("cagrad.c", 0.0))
    return {"best/val_score": value, "best/val/f1/value": -value, "best/val/f2/value": value / 2}


@pytest.mark.parametrize("search", SEARCHES)
def test_every_arm_gets_its_own_budget_whatever_the_sampler(search):
    """`--num-samples 3`: 3 trials of each method and of each single-task reference; before, one
    study sampled the method too and TPE gave cagrad 4, single_task 2 and EW none of 6."""
    session = open_session("toy", ["ew", "cagrad", "single_task"], ["optimizer=adam", "start=0"], None, max_epochs=1)
    plan = plan_search(session, SearchOptions(search=search, seed=0), 3)
    assert plan.budgets == {"ew": 3, "cagrad": 3, "single_task[f1]": 3, "single_task[f2]": 3}
    assert plan.num_samples == 12
    trials = drive(plan.search_alg, toy_score)
    arms = [arm_of_config(config) for _, config in trials]
    assert {arm: arms.count(arm) for arm in set(arms)} == plan.budgets
    # round-robin: the arms advance together (a search cut short has spent alike on each)
    assert arms[:4] == ["ew", "cagrad", "single_task[f1]", "single_task[f2]"] and arms[4:8] == arms[:4]
    # every trial told to the study of its own arm, and only there
    for arm, searcher in plan.search_alg._searchers.items():
        study = searcher._ot_study
        assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    # each trial is the arm's: its method, and a reference's task fixed, not searched
    for _, config in trials:
        if config["method"] == "single_task":
            assert config["single_task.task"] in ("f1", "f2")
        assert config["seed"] == 0


def test_a_grid_runs_every_point_of_each_arms_grid_once():
    session = open_session("toy", ["ew", "cagrad"], ["optimizer=adam", "start=0"], None, max_epochs=1)
    plan = plan_search(session, SearchOptions(search="grid"), None)
    assert plan.grid_sizes == {"ew": 5, "cagrad": 15} and plan.budgets == plan.grid_sizes  # 5 lr x 3 c
    trials = drive(plan.search_alg, toy_score)
    points = {(c["method"], c["lr"], c.get("cagrad.c")) for _, c in trials}
    assert len(trials) == len(points) == 20
    # --num-samples N with a grid: the first N points of each grid, every one if it has fewer
    plan = plan_search(session, SearchOptions(search="grid"), 8)
    assert plan.budgets == {"ew": 5, "cagrad": 8}


def test_what_one_method_scores_never_steers_another_methods_sampler():
    """The same search twice, EW's trials scored best in one and worst in the other: CAGrad's
    TPE proposes the same configurations in both (14 trials: past TPE's 10 random start-up
    ones). With one study for all methods its proposals depended on EW's scores."""
    session = open_session("toy", ["ew", "cagrad"], ["optimizer=adam"], None, max_epochs=1)

    def run(ew_sign: float) -> list[tuple]:
        plan = plan_search(session, SearchOptions(search="tpe", seed=5), 14)

        def score(config: dict) -> dict:
            result = toy_score(config)
            if config["method"] == "ew":
                result["best/val_score"] = ew_sign * 1000.0
            return result

        trials = drive(plan.search_alg, score)
        return [(c["lr"], c["start"], c["cagrad.c"]) for _, c in trials if c["method"] == "cagrad"]

    best, worst = run(+1.0), run(-1.0)
    assert len(best) == 14 and best == worst


@dataclass
class FakeTrial:
    """What a scheduler reads of a Ray trial."""

    trial_id: str
    config: dict = field(default_factory=dict)


def report(scheduler: Any, trial: FakeTrial, epoch: int, score: float) -> str:
    return scheduler.on_trial_result(None, trial, {"training_iteration": epoch, "best/val_score": score})


ASHA = {"time_attr": "training_iteration", "max_t": 9, "grace_period": 1, "reduction_factor": 3}


def test_asha_ranks_a_trial_only_against_trials_of_its_own_method():
    """Three EW trials learn fast (scores 10-12 at epoch 1); the first CAGrad trial starts slowly
    (1.0). One ASHA over all trials stops it at the first rung; one ASHA per arm lets it go on,
    and still stops a CAGrad trial that is the worst of CAGrad's own."""
    ew = [FakeTrial(f"ew{i}", {"method": "ew"}) for i in range(3)]
    cagrad = [FakeTrial(f"ca{i}", {"method": "cagrad", "cagrad.c": 0.5}) for i in range(3)]

    shared = ASHAScheduler(**ASHA)
    shared.set_search_properties("best/val_score", "max")
    per_arm = make_scheduler("asha", 9, 1, reduction_factor=3)
    assert isinstance(per_arm, PerArmScheduler)
    per_arm.set_search_properties("best/val_score", "max")
    for scheduler in (shared, per_arm):
        for trial in ew + cagrad:
            scheduler.on_trial_add(None, trial)
        for trial, score in zip(ew, (10.0, 11.0, 12.0)):
            assert report(scheduler, trial, 1, score) == TrialScheduler.CONTINUE

    assert report(shared, cagrad[0], 1, 1.0) == TrialScheduler.STOP  # the old, unfair rule
    assert report(per_arm, cagrad[0], 1, 1.0) == TrialScheduler.CONTINUE
    assert report(per_arm, cagrad[1], 1, 2.0) == TrialScheduler.CONTINUE
    assert report(per_arm, cagrad[2], 1, 0.5) == TrialScheduler.STOP  # worst of its own arm
    assert per_arm.scheduler_for("ew") is not per_arm.scheduler_for("cagrad")


def test_single_task_references_run_to_the_end_unless_asked():
    ew = [FakeTrial(f"ew{i}", {"method": "ew"}) for i in range(3)]
    refs = [FakeTrial(f"st{i}", {"method": "single_task", "single_task.task": "f1"}) for i in range(3)]
    for unpruned, last in ((["single_task[f1]"], TrialScheduler.CONTINUE), ((), TrialScheduler.STOP)):
        scheduler = make_scheduler("asha", 9, 1, reduction_factor=3, unpruned=unpruned)
        scheduler.set_search_properties("best/val_score", "max")
        for trial in ew + refs:
            scheduler.on_trial_add(None, trial)
        for trial, score in zip(refs, (10.0, 11.0, -5.0)):
            action = report(scheduler, trial, 1, score)
        assert action == last
        # and the scheduler travels with the experiment's state
        twin = pickle.loads(pickle.dumps(scheduler))
        assert twin.unpruned == frozenset(unpruned)


def test_arms_are_methods_and_one_reference_per_task():
    assert [a.key for a in arms_of(["ew", "single_task", "cagrad"], ["CL", "RR"], {})] == [
        "ew", "single_task[CL]", "single_task[RR]", "cagrad"]
    # a task fixed with --param task=RR: only that reference
    assert arms_of(["single_task"], ["CL", "RR"], {"single_task.task": "RR"}) == [Arm("single_task", "RR")]
    assert arm_of_config({"method": "single_task", "single_task.task": "CL"}) == "single_task[CL]"
    assert arm_of_config({"method": "cagrad", "cagrad.c": 0.5}) == "cagrad"
    assert Arm("single_task", "CL").is_reference and not Arm("ew").is_reference


def test_the_progress_line_counts_each_arm_against_its_budget():
    import io

    from searcher.progress import ProgressLine

    @dataclass
    class Ended:
        trial_id: str
        config: dict
        last_result: dict

    out = io.StringIO()
    progress = ProgressLine({"ew": 2, "single_task[f1]": 1}, max_epochs=4, stream=out)
    progress.on_trial_start(0, [], Ended("a", {"method": "ew"}, {}))
    progress.on_trial_start(0, [], Ended("b", {"method": "ew"}, {}))
    progress.on_trial_complete(0, [], Ended("a", {"method": "ew"}, {"epoch": 2, "best/val_score": -3.5}))
    line = out.getvalue().strip()
    assert line.startswith("searcher: [1/3] ew 1/2 (1 pruned, best -3.50) | single_task[f1] 0/1 | 1 running | 0:00")
    progress.on_trial_error(0, [], Ended("b", {"method": "ew"}, {}))
    progress.on_trial_complete(0, [], Ended("c", {"method": "single_task", "single_task.task": "f1"},
                                            {"epoch": 4, "best/val_score": 1.0}))
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("searcher: [3/3] ew 2/2 (1 pruned, 1 failed, best -3.50) | single_task[f1] 1/1 (best 1.00) | 0 running")
    assert "left" not in last  # nothing left to estimate
    assert pickle.loads(pickle.dumps(progress)).done == progress.done  # Ray pickles callbacks


def test_a_random_search_draws_the_same_common_values_in_every_arms_kth_trial():
    """Common random numbers: CAGrad's own c does not shift the lr, dropout and optimizer its
    trials draw (with Optuna's plain sampler it did from the second trial on)."""
    import optuna

    from searcher.search import make_sampler
    from spaces import SPACES, suggest

    space = SPACES.get("mnist_cl_rr")

    def draws(method: str, seed: int) -> list[dict]:
        study = optuna.create_study(sampler=make_sampler("random", seed))
        out = []
        for _ in range(5):
            trial = study.ask()
            suggest(trial, space, [method], ["CL", "RR"], {})
            out.append({k: trial.params[k] for k in ("lr", "dropout", "optimizer")})
            study.tell(trial, 0.0)
        return out

    ew, cagrad, single = draws("ew", 3), draws("cagrad", 3), draws("single_task", 3)
    assert ew == cagrad == single
    assert len({d["lr"] for d in ew}) == 5  # still a random search: new values every trial
    assert draws("ew", 4) != ew  # and the seed matters
