"""The trial core: one training of one configuration, epoch by epoch, whoever drives it.

``searcher train`` (no Ray) and every Ray Tune trial (``tune``, ``confirm``, ``rerun``) run this
one loop, so a configuration trains, diverges and is scored the same way on both paths: each
epoch's metrics go to a ``report`` callback (MLflow directly, or Ray's ``tune.report`` with a
checkpoint), and a divergence ends the run with one final record marked ``diverged``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from trainables.errors import DivergedError
from trainables.problems import build_problem
from trainables.problems.base import Problem
from trainables.trainer import Trainer

SEARCH_METRIC = "best/val_score"
#: Score of a run that diverged before any valid epoch (finite: Optuna and ASHA rank it last).
DIVERGED_SCORE = -1e12

#: ``report(metrics, trainer_or_None)``: the trainer is passed on the epochs to checkpoint.
Report = Callable[[dict[str, Any], "Trainer | None"], None]


@dataclass(frozen=True)
class RunSettings:
    """What every run of a launch shares and that is not a hyperparameter."""

    problem: str
    problem_options: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    max_epochs: int = 10
    checkpoint_every: int = 1

    def problem_for(self, config: Mapping[str, Any]) -> Problem:
        """The problem one run of ``config`` trains on: built from the launch's options and
        resolved against its prepared ``data`` (``Problem.resolved``), as the driver's own."""
        return build_problem(self.problem, self.problem_options).resolved(self.data, config)


def diverged_record(trainer: Trainer, problem: Problem, err: DivergedError) -> dict[str, Any]:
    """The last record of a run that diverged: its best valid epoch so far, or, with none, the
    worst value of every objective a search may rank by (finite, so Optuna, NSGA-II and ASHA
    accept it), marked ``diverged`` with the reason."""
    best = dict(trainer.best)
    if best.get("best/epoch", 0) == 0:
        best[SEARCH_METRIC] = DIVERGED_SCORE
        for task in problem.tasks:
            for metric in task.metrics:
                best[f"best/val/{task.name}/{metric.name}"] = DIVERGED_SCORE if metric.higher_is_better else -DIVERGED_SCORE
    return {**best, "epoch": err.epoch, "diverged": 1.0, "diverged_reason": str(err)}


def run_trial(
    config: Mapping[str, Any],
    settings: RunSettings,
    report: Report,
    state: Mapping[str, Any] | None = None,
    trainer: Trainer | None = None,
) -> dict[str, Any]:
    """Train ``config`` up to ``settings.max_epochs`` (from ``state``, a trainer checkpoint, when
    resuming); hand every epoch's metrics to ``report`` (with the trainer on the epochs to
    checkpoint: every ``checkpoint_every``-th and the last); return the last record.
    ``trainer``: one already built for ``config`` (``searcher train`` builds it before it
    creates the run, so that a configuration that cannot be built leaves no run behind)."""
    if trainer is None:
        trainer = Trainer(settings.problem_for(config), config, settings.data)
    problem = trainer.problem
    if state is not None:
        trainer.load_state_dict(state)
    last: dict[str, Any] = dict(trainer.best)
    try:
        for metrics in trainer.fit(settings.max_epochs):
            metrics["diverged"] = 0.0
            checkpoint = trainer.epoch % settings.checkpoint_every == 0 or trainer.epoch == settings.max_epochs
            report(metrics, trainer if checkpoint else None)
            last = metrics
    except DivergedError as err:
        last = diverged_record(trainer, problem, err)
        report(last, None)
    return last
