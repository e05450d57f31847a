"""Shared set-up of ``train`` and ``tune``: space -> problem -> checked config -> data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from spaces import SearchSpace, get_space
from searcher.params import parse_pairs, to_config
from searcher.run_record import Tag
from trainables.config import method_params, resolve
from trainables.methods import METHODS, build_method
from trainables.problems import Problem, build_problem
from trainables.trial import RunSettings


@dataclass
class Session:
    space: SearchSpace
    problem: Problem
    methods: list[str]
    fixed: dict[str, Any]
    settings: RunSettings
    #: The file the space was read from (``--space path.yaml``), recorded on every run.
    space_file: str | None = None


def open_session(
    space_name: str,
    methods: Sequence[str] | None,
    params: Sequence[str],
    data_dir: str | None,
    max_epochs: int | None,
) -> Session:
    """Resolve the space, methods and ``--param`` values; prepare the data on the driver and
    resolve the problem against it (its tasks and references are then fixed)."""
    space = get_space(space_name)
    space_file = None if space_name == space.name else os.path.abspath(os.path.expanduser(space_name))
    methods = list(methods or space.default_methods)
    for method in methods:
        METHODS.get(method)  # an unknown name raises the registry's one-line error
    problem = build_problem(space.problem, space.problem_options)
    fixed = to_config(parse_pairs(params), methods, {**problem.defaults, **space.constants})
    for method in methods:
        check_config(problem, space, method, fixed)
    prepared = {**problem.defaults, **space.constants, **fixed}
    data = problem.prepare(data_dir, prepared)
    problem = problem.resolved(data, prepared)  # what every trial builds too (RunSettings.problem_for)
    settings = RunSettings(
        problem=space.problem,
        problem_options=dict(space.problem_options),
        data=data,
        max_epochs=int(max_epochs or space.max_epochs),
    )
    return Session(space, problem, methods, fixed, settings, space_file)


def check_config(problem: Problem, space: SearchSpace, method: str, fixed: Mapping[str, Any]) -> None:
    """Resolve one method's configuration as a trial would, on the driver, so that a value no
    trial could run with (``lr=-1``, ``optimizer=foo``, ``cagrad.c=-2``, ``grad_chunk=-1``, a
    range reaching below a bound) is a ``ConfigError`` before Ray starts. Every grid point and
    both ends of every searched range are checked (``spaces.base.check_ranges``); the method is
    then built with one point of each range; a ``fixed`` whose weights are searched gets equal
    weights (any point of the simplex)."""
    from spaces.base import check_ranges

    tasks = problem.task_names
    check_ranges(space, [method], tasks, problem.defaults, skip=list(fixed))
    searched: dict[str, Any] = {k: r.first() for k, r in space.common.items()}
    searched.update({f"{method}.{k}": r.first() for k, r in space.method_ranges(method, tasks).items()})
    if method == "fixed" and "fixed.weights" not in fixed:
        searched["fixed.weights"] = ",".join(["1"] * len(tasks))
    config = resolve({**searched, **space.constants, **fixed, "method": method}, problem.defaults)
    build_method(method, problem.tasks, method_params(config, method))


def run_config(session: Session, method: str, seed: int) -> dict[str, Any]:
    """The configuration one training of ``method`` starts from, as ``searcher train`` runs it:
    the space's constants, then the fixed ``--param`` values."""
    return {**session.space.constants, **session.fixed, "method": method, "seed": seed}


def resolved_source(problem: Any, data: Mapping[str, Any]) -> str:
    """Which data ``problem.prepare`` resolved (its returned ``data``): the one reading of it."""
    return str(data.get("digit_source") or data.get("source") or problem.name)


def data_source(session: Session) -> str:
    """Which data the runs train on (logged with every run): what ``prepare`` resolved."""
    return resolved_source(session.problem, session.settings.data)


def session_tags(session: Session, mode: str) -> dict[str, str]:
    """The MLflow tags every run of a ``train`` or ``tune`` on this session carries."""
    return {
        Tag.SPACE: session.space.name,
        Tag.PROBLEM: session.problem.name,
        Tag.DATA_SOURCE: data_source(session),
        Tag.MODE: mode,
        **({Tag.SPACE_FILE: session.space_file} if session.space_file else {}),
    }
