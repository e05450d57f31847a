"""Spaces from the user's own files: ``--space path/to/space.yaml`` or ``path/to/space.py``.

A YAML file holds the fields of ``SearchSpace`` (all optional but ``name`` and ``problem``,
unless it ``extends`` a named space, whose fields it then overrides)::

    name: mnist_small
    extends: mnist_cl_rr            # optional: start from a registered space
    common:
      lr: {low: 1.0e-4, high: 1.0e-2, log: true, grid: [0.01, 0.001]}   # continuous, log scale
      dropout: {low: 0.0, high: 0.3}  # continuous only: --search grid needs --param dropout=...
      optimizer: [adam]               # a list: exactly these values (categorical)
    method_overrides: {cagrad: {c: [0.2, 0.5]}}
    default_methods: [ew, cagrad]
    max_epochs: 5

A range is a list (categorical: every search picks from exactly those values) or a mapping
``{low, high, log, integer, grid}``: tpe, random and nsga2 draw from [low, high] (log-uniform
with ``log: true``; integers with ``integer: true``), ``--search grid`` trains ``grid``. A
method's parameters not named here keep the range the method declares (``searcher methods``).

A Python file defines ``SPACE = SearchSpace(...)`` (``from spaces.base import SearchSpace``;
a range is a tuple, a ``trainables.search_range.SearchRange`` or ``spaces.base.log_uniform(grid)``).
Either way the package is not edited; runs record the file's path (tag ``searcher.space_file``)
so that ``rerun``, ``confirm`` and ``report`` find the space again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any, Mapping

from spaces.base import SearchSpace, check_ranges
from trainables.errors import ConfigError

SUFFIXES = (".yaml", ".yml", ".py")
FIELDS = {f.name for f in dataclasses.fields(SearchSpace)}


def is_space_file(name: str) -> bool:
    return name.endswith(SUFFIXES)


def load_space_file(path: str, registered: Mapping[str, SearchSpace]) -> SearchSpace:
    """Read a space from a YAML or Python file (checked: fields, grids, problem name)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"space file {path} does not exist")
    space = _from_python(file) if file.suffix == ".py" else _from_yaml(file, registered)
    _check(space, file)
    return space


def _from_yaml(file: Path, registered: Mapping[str, SearchSpace]) -> SearchSpace:
    import yaml

    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"space file {file} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"space file {file} must hold a mapping of SearchSpace fields")
    base_name = data.pop("extends", None)
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ConfigError(f"space file {file}: unknown field(s) {', '.join(unknown)} (fields: {', '.join(sorted(FIELDS))}, extends)")
    try:
        if base_name is not None:
            if base_name not in registered:
                raise ConfigError(f"extends unknown space {base_name!r} (known: {', '.join(sorted(registered))})")
            return dataclasses.replace(registered[base_name], **_as_tuples(data))
        missing = [f for f in ("name", "problem") if f not in data]
        if missing:
            raise ConfigError(f"needs {' and '.join(missing)} (or 'extends: <space>')")
        data.setdefault("description", f"from {file.name}")
        return SearchSpace(**_as_tuples(data))
    except ConfigError as err:  # a bad field or range: one line that names the file
        raise ConfigError(f"space file {file}: {err}") from None


def _as_tuples(data: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML's lists as tuples; ranges (lists or mappings) are read by ``SearchSpace``
    (``SearchRange.of``: a list stays exactly that list of values)."""
    out = dict(data)
    for key in ("common", "method_overrides", "constants", "problem_options"):
        if key in out and not isinstance(out[key], Mapping):
            raise ConfigError(f"space field {key!r} must be a mapping, got {out[key]!r}")
    if "default_methods" in out:
        out["default_methods"] = tuple(out["default_methods"])
    return out


def _from_python(file: Path) -> SearchSpace:
    spec = importlib.util.spec_from_file_location(f"searcher_space_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import space file {file}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: report it on one line
        raise ConfigError(f"space file {file} failed to import: {type(err).__name__}: {err}") from None
    space = getattr(module, "SPACE", None)
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"space file {file} must define SPACE = SearchSpace(...)")
    return space


def _check(space: SearchSpace, file: Path) -> None:
    from trainables.methods import METHODS
    from trainables.problems import PROBLEMS, build_problem

    if space.problem not in PROBLEMS:
        raise ConfigError(f"space file {file}: unknown problem {space.problem!r} (known: {', '.join(PROBLEMS.names())})")
    problem = build_problem(space.problem, space.problem_options)
    methods = list(dict.fromkeys((*space.default_methods, *space.method_overrides)))
    for method in methods:
        METHODS.get(method)  # an unknown name: the registry's one-line error
    try:  # every grid point and both ends of every range, as a trial would read them
        check_ranges(space, methods, problem.task_names, problem.defaults)
    except ConfigError as err:
        raise ConfigError(f"space file {file}: {err}") from None
    if int(space.max_epochs) < 1:
        raise ConfigError(f"space file {file}: max_epochs must be at least 1")
