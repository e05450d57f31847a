"""Search ranges: continuous (log) intervals for tpe/random/nsga2, the papers' grids for
``--search grid``, declared by each method, checked on the driver (issue 12, "A fair search")."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from searcher.cli import main
from searcher.session import check_config
from spaces import SPACES, get_space, grid_points, suggest
from spaces.base import check_ranges
from trainables.config import COMMON
from trainables.errors import ConfigError
from trainables.methods import METHODS
from trainables.problems import build_problem
from trainables.search_range import SearchRange

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def draws(space, method, tasks, n=20, fixed=None):
    """``n`` trials of a real Optuna study (random sampler) through ``suggest``."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = []
    for _ in range(n):
        trial = study.ask()
        suggest(trial, space, [method], tasks, fixed or {})
        study.tell(trial, 0.0)
        trials.append(trial)
    return trials


# ----------------------------------------------------------------------------- suggest
def test_tpe_random_nsga2_draw_the_lr_log_uniformly_and_cagrad_c_linearly():
    space = SPACES.get("mnist_cl_rr")
    trials = draws(space, "cagrad", ["CL", "RR"])
    lr = trials[0].distributions["lr"]
    assert isinstance(lr, FloatDistribution) and lr.log and (lr.low, lr.high) == (0.0005, 0.01)
    c = trials[0].distributions["cagrad.c"]
    declared = METHODS.get("cagrad").hyperparameters["c"].search
    assert isinstance(c, FloatDistribution) and not c.log and (c.low, c.high) == (declared.low, declared.high)
    dropout = trials[0].distributions["dropout"]
    assert isinstance(dropout, FloatDistribution) and not dropout.log and (dropout.low, dropout.high) == (0.0, 0.5)
    assert isinstance(trials[0].distributions["optimizer"], CategoricalDistribution)
    lrs = [t.params["lr"] for t in trials]
    assert all(0.0005 <= v <= 0.01 for v in lrs)
    assert all(declared.low <= t.params["cagrad.c"] <= declared.high for t in trials)
    assert set(lrs) - set(space.common["lr"].grid)  # off the grid: a continuous draw
    # log-uniform: about as many draws below the geometric midpoint as above it
    below = sum(v < math.sqrt(0.0005 * 0.01) for v in lrs)
    assert 0 < below < len(lrs)


def test_method_ranges_are_declared_by_the_methods_and_keep_their_names():
    space = SPACES.get("mnist_cl_rr")
    trials = draws(space, "famo", ["CL", "RR"], n=5)
    gamma = trials[0].distributions["famo.gamma"]
    assert isinstance(gamma, FloatDistribution) and gamma.log and (gamma.low, gamma.high) == (0.0001, 0.01)
    assert space.method_ranges("famo")["gamma"] is METHODS.get("famo").hyperparameters["gamma"].search
    # a fixed value is not searched
    trials = draws(space, "famo", ["CL", "RR"], n=2, fixed={"famo.gamma": 0.005, "lr": 0.001})
    assert "famo.gamma" not in trials[0].params and "lr" not in trials[0].params


def test_a_users_list_stays_categorical(tmp_path):
    space = get_space(write(tmp_path, "extends: mnist_cl_rr\ncommon: {lr: [0.01, 0.001], optimizer: [adam]}\n"
                                      "method_overrides: {cagrad: {c: [0.2, 0.5]}}\n"))
    trial = draws(space, "cagrad", ["CL", "RR"], n=1)[0]
    assert trial.distributions["lr"] == CategoricalDistribution((0.01, 0.001))
    assert trial.distributions["cagrad.c"] == CategoricalDistribution((0.2, 0.5))
    assert "dropout" not in trial.params  # the file's common replaces the base's


def test_a_yaml_continuous_range_is_drawn_and_needs_a_grid_for_grid_search(tmp_path):
    # 1e-4 without a dot is text to YAML: the range reads it as a number
    space = get_space(write(tmp_path, "extends: toy\ncommon: {lr: {low: 1e-4, high: 1e-1, log: true}, "
                                      "start: {low: 0, high: 2, integer: true}}\n"))
    trial = draws(space, "ew", ["f1", "f2"], n=1)[0]
    assert trial.distributions["lr"] == FloatDistribution(1e-4, 0.1, log=True)
    assert trial.distributions["start"] == IntDistribution(0, 2)
    with pytest.raises(ConfigError, match=r"^lr has a continuous range log-uniform \[0.0001, 0.1\] and no grid"):
        grid_points(space, ["ew"], ["f1", "f2"], {})
    # fixed, it is not searched, so the grid does not need it (start has no grid either)
    points = grid_points(space, ["ew"], ["f1", "f2"], {"lr": 0.01, "start": 0})
    assert len(points) == 1 and points[0] == {"method": "ew"}
    # with a grid, --search grid trains the grid and the others draw from the interval
    space = get_space(write(tmp_path, "extends: toy\ncommon: {lr: {low: 1.0e-4, high: 0.1, log: true, grid: [0.1, 0.01]}}\n"))
    assert [p["lr"] for p in grid_points(space, ["ew"], ["f1", "f2"], {})] == [0.1, 0.01]
    assert isinstance(draws(space, "ew", ["f1", "f2"], n=1)[0].distributions["lr"], FloatDistribution)


def test_grid_search_refuses_a_range_without_grid_on_the_driver(tmp_path, capsys, monkeypatch):
    import searcher.launch
    import searcher.tracking

    def must_not_run(*args, **kwargs):
        raise AssertionError("reached past the driver's checks")

    monkeypatch.setattr(searcher.launch, "start_ray", must_not_run)
    monkeypatch.setattr(searcher.tracking, "init_store", must_not_run)
    path = write(tmp_path, "extends: toy\nmethod_overrides: {cagrad: {c: {low: 0.0, high: 1.0}}}\n")
    db = tmp_path / "mlflow.db"
    assert main(["tune", "--space", path, "--methods", "cagrad", "--search", "grid",
                 "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("searcher: error: cagrad.c has a continuous range") and "\n" not in err
    assert not db.exists()


# ----------------------------------------------------------------------------- the grids
def test_grid_counts_are_the_papers():
    """``--search grid`` trains the papers' grids, unchanged by the continuous ranges."""
    mnist = SPACES.get("mnist_cl_rr")
    # `002` §3.1: 7 learning rates x 6 dropouts, x 3 optimizers (`003`), x CAGrad's 3 values of c
    assert len(grid_points(mnist, ["cagrad"], ["CL", "RR"], {})) == 7 * 6 * 3 * 3
    assert len(grid_points(mnist, ["auto_lambda"], ["CL", "RR"], {})) == 7 * 6 * 3 * 7  # A.6 Table 7
    assert len(grid_points(mnist, ["single_task"], ["CL", "RR"], {})) == 7 * 6 * 3 * 2
    # `002` Table 10 (QM9): 4 learning rates x 3 optimizers x Auto-Lambda's {100, 10, 1}
    assert len(grid_points(SPACES.get("qm9"), ["auto_lambda"], [], {})) == 4 * 3 * 3
    # `002` §3.3 (Cityscapes): 4 learning rates x 3 weight decays x 3 optimizers x 7 scales
    city = SPACES.get("cityscapes_r18")
    assert len(grid_points(city, ["auto_lambda"], [], {})) == 4 * 3 * 3 * 7
    assert len(grid_points(city, ["rotograd"], [], {})) == 4 * 3 * 3 * 4  # feature size fixed at 512
    nyuv2 = SPACES.get("nyuv2")
    assert len(grid_points(nyuv2, ["cdtt"], [], {})) == 10 * 3 * 3 * 5


@pytest.mark.parametrize("name", SPACES.names())
def test_every_builtin_grid_is_the_product_of_its_ranges_grids(name):
    space = SPACES.get(name)
    tasks = build_problem(space.problem, space.problem_options).task_names
    n_common = math.prod(len(r.grid) for r in space.common.values())
    for method in METHODS.names():
        if method == "fixed":  # its weights' simplex lattice: spaces.simplex
            continue
        own = math.prod(len(r.grid) for r in space.method_ranges(method, tasks).values())
        assert len(grid_points(space, [method], tasks, {})) == n_common * own


# ----------------------------------------------------------------------------- the registry
@pytest.mark.parametrize("name", SPACES.names())
def test_every_builtin_range_lies_within_its_hyperparameters_bounds(name):
    space = SPACES.get(name)
    problem = build_problem(space.problem, space.problem_options)
    check_ranges(space, METHODS.names(), problem.task_names, problem.defaults)  # raises on any
    for key, rng in space.common.items():
        assert rng.grid, f"{name}: {key} has no grid for --search grid"
        if key in COMMON:
            assert all(COMMON[key].violation(v) is None for v in rng.values_to_check()), key
        if rng.continuous:  # a continuous range spans the paper's grid
            assert rng.low <= min(rng.grid) and max(rng.grid) <= rng.high
    for method in METHODS.names():
        declared = METHODS.get(method).hyperparameters
        for param, rng in space.method_ranges(method, problem.task_names).items():
            assert rng.grid, f"{name}: {method}.{param} has no grid for --search grid"
            hp = declared[param]
            assert all(hp.violation(v) is None for v in rng.values_to_check()), f"{method}.{param}"


def test_every_declared_method_range_has_a_grid_within_its_interval_and_bounds():
    found = 0
    for name in METHODS.names():
        for param, hp in METHODS.get(name).hyperparameters.items():
            if hp.search is None:
                continue
            found += 1
            rng = hp.search
            assert rng.grid and rng.continuous, f"{name}.{param}"
            assert rng.low <= min(rng.grid) and max(rng.grid) <= rng.high, f"{name}.{param}"
            assert all(hp.violation(v) is None for v in rng.values_to_check()), f"{name}.{param}"
            # a log scale where the grid spans orders of magnitude
            assert rng.log == (max(rng.grid) / min(rng.grid) >= 10), f"{name}.{param}"
    assert found >= 5  # cagrad c, cdtt alpha, rotograd / auto_lambda aux_lr_scale, famo gamma


def test_the_driver_refuses_a_range_reaching_past_a_bound():
    toy = SPACES.get("toy")
    problem = build_problem(toy.problem, toy.problem_options)
    space = dataclasses.replace(toy, method_overrides={"cagrad": {"c": {"low": -1.0, "high": 1.0}}})
    with pytest.raises(ConfigError, match=r"^cagrad.c must be >= 0, got -1.0"):
        check_config(problem, space, "cagrad", {})
    check_config(problem, space, "cagrad", {"cagrad.c": 0.5})  # fixed: not searched
    space = dataclasses.replace(toy, common={"lr": {"low": 0.0, "high": 0.1}})
    with pytest.raises(ConfigError, match=r"^lr must be > 0, got 0.0"):
        check_config(problem, space, "ew", {})


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("text, message", [
    ("common: {lr: {low: 0.1, high: 0.01}}", "lr: low must be below high, got low=0.1, high=0.01"),
    ("common: {lr: {low: 0, high: 0.1, log: true}}", "lr: a log range needs low > 0"),
    ("common: {lr: []}", "lr: a search range needs at least one value"),
    ("common: {lr: {low: 0.001}}", "lr: a continuous range needs both low and high"),
    ("common: {lr: {low: 0.001, high: 0.1, lg: true}}", "lr: unknown key(s) lg in a search range"),
    ("common: {lr: {grid: [0.1], log: true}}", "lr: log and integer apply to a continuous range"),
    ("common: {lr: {low: abc, high: 1}}", "lr: low of a range must be a number, got 'abc'"),
    ("common: {lr: {low: 0.1, high: 1, log: yes please}}", "lr: log of a range must be true or false"),
    ("common: {lr: {}}", "lr: a search range needs a grid of values or low and high"),
    ("common: {lr: {low: -0.1, high: 0.1}}", "lr must be > 0, got -0.1"),
    ("common: {lr: [0.1, -1]}", "lr must be > 0, got -1"),
    ("common: {dropout: {low: 0.0, high: 1.0}}", "dropout must be in [0, 1), got 1.0"),
    ("common: {optimizer: {low: 0, high: 1}}", "optimizer is a str: its range must be a list of values"),
    ("common: {batch_size: {low: 8, high: 64}}", "batch_size is an int: its range uniform [8, 64] needs integer: true"),
    ("common: {start: {low: 0.5, high: 2}}", "start is an int: its range uniform [0.5, 2] needs integer: true"),
    ("common: {start: {low: 0.5, high: 2, integer: true}}", "an integer range needs integer ends"),
    ("method_overrides: {cagrad: {c: {low: -1, high: 1}}}", "cagrad.c must be >= 0, got -1"),
    ("method_overrides: {cagrad: {c: {low: 0.1, high: 0.1}}}", "cagrad.c: low must be below high"),
    ("method_overrides: {cagrad: 0.5}", "method_overrides of cagrad must map its parameters to ranges"),
])
def test_bad_yaml_ranges_get_one_line_errors(tmp_path, text, message):
    path = write(tmp_path, f"extends: toy\n{text}\n")
    with pytest.raises(ConfigError) as err:
        get_space(path)
    assert str(err.value).startswith(f"space file {path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the schema
def test_search_range_of_and_describe():
    assert SearchRange.of([0.1, 0.01]) == SearchRange(grid=(0.1, 0.01))
    rng = SearchRange.of({"low": "5e-4", "high": 0.01, "log": True, "grid": [0.01, 0.005]})
    assert (rng.low, rng.high, rng.log, rng.grid) == (0.0005, 0.01, True, (0.01, 0.005))
    assert SearchRange.of(rng) is rng and SearchRange.of(rng.to_json()) == rng
    assert rng.describe() == "log-uniform [0.0005, 0.01]; grid 0.01, 0.005"
    assert SearchRange(grid=("adam", "sgd")).describe() == "one of adam, sgd"
    assert list(rng) == [0.01, 0.005]  # iterating a range gives its grid
    with pytest.raises(ConfigError, match="^x: a search range is a list of values or a mapping"):
        SearchRange.of("0.1", "x")


def test_interval_gives_both_ends_of_a_continuous_range_only():
    assert SearchRange(low=1, high=3, integer=True).interval() == (1, 3)
    assert SearchRange(low=1, high=3, integer=True).first() == 1
    assert SearchRange(grid=(0.1,), low=0.05, high=0.2).first() == 0.1  # the grid comes first
    with pytest.raises(ConfigError, match="no interval"):
        SearchRange(grid=("adam", "sgd")).interval()


def test_categorical_is_the_plain_tuple_a_space_file_gives():
    from spaces.base import categorical

    assert categorical(("adam", "sgd")) == SearchRange.of(("adam", "sgd")) == SearchRange(grid=("adam", "sgd"))
    assert not categorical((0, 1, 2)).continuous
    with pytest.raises(ConfigError, match="needs a grid"):
        categorical(())
