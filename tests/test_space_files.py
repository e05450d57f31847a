"""Spaces from the user's files (``--space path.yaml`` / ``.py``), without editing the package."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from searcher.cli import main
from searcher.run_record import from_run
from spaces import SPACES, get_space
from trainables.errors import ConfigError
from trainables.search_range import SearchRange


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_yaml_space_extends_a_named_one_and_overrides_its_fields(tmp_path):
    path = write(tmp_path, "small.yaml", """
name: mnist_small
extends: mnist_cl_rr
common: {lr: [0.01, 0.001], dropout: [0.0], optimizer: [adam]}
method_overrides: {cagrad: {c: [0.5]}}
default_methods: [ew, cagrad]
max_epochs: 2
""")
    space = get_space(path)
    base = SPACES.get("mnist_cl_rr")
    assert space.name == "mnist_small" and space.problem == "multi_mnist"
    assert dict(space.problem_options) == dict(base.problem_options) and dict(space.constants) == dict(base.constants)
    # a user's list is exactly that categorical grid (no interval added)
    assert dict(space.common) == {"lr": SearchRange(grid=(0.01, 0.001)), "dropout": SearchRange(grid=(0.0,)),
                                  "optimizer": SearchRange(grid=("adam",))}
    assert space.method_ranges("cagrad") == {"c": SearchRange(grid=(0.5,))}
    assert space.max_epochs == 2 and tuple(space.default_methods) == ("ew", "cagrad")
    assert "mnist_small" not in SPACES  # nothing is registered behind the user's back


def test_a_python_space_file(tmp_path):
    path = write(tmp_path, "myspace.py", """
from spaces.base import SearchSpace
SPACE = SearchSpace(name="toy_lr", problem="toy", description="toy, lr only",
                    common={"lr": (0.1, 0.01)}, constants={"steps_per_epoch": 5}, default_methods=("ew",), max_epochs=1)
""")
    space = get_space(path)
    assert space.name == "toy_lr" and dict(space.common) == {"lr": SearchRange(grid=(0.1, 0.01))}


@pytest.mark.parametrize("text, message", [
    ("name: x\nproblem: nope\n", "unknown problem 'nope'"),
    ("name: x\n", "needs problem"),
    ("extends: mnist_cl_rr\nlearning_rate: [0.1]\n", "unknown field(s) learning_rate"),
    ("extends: nowhere\n", "extends unknown space 'nowhere'"),
    ("extends: toy\ncommon: {lrr: [0.1]}\n", "'lrr' is not a hyperparameter"),
    ("extends: toy\ncommon: {lr: 0.1}\n", "lr: a search range is a list of values or a mapping"),
    ("extends: toy\nmethod_overrides: {cagrad: {cc: [1]}}\n", "method cagrad has no parameter 'cc'"),
    ("extends: toy\ndefault_methods: [nope]\n", "unknown method 'nope'"),
    ("name: [x\n", "not valid YAML at line"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_bad_space_files_get_one_line_errors(tmp_path, text, message):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        get_space(path)


def test_python_file_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="must define SPACE"):
        get_space(write(tmp_path, "none.py", "x = 1\n"))
    with pytest.raises(ConfigError, match="failed to import: ZeroDivisionError"):
        get_space(write(tmp_path, "boom.py", "1 / 0\n"))
    assert main(["spaces", "--show", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"searcher: error: space file {tmp_path / 'missing.yaml'} does not exist"


def test_runs_record_the_space_file_and_later_commands_find_it(tmp_path, tracking_uri):
    path = write(tmp_path, "toy_small.yaml", "name: toy_small\nextends: toy\nconstants: {steps_per_epoch: 5, lr_decay: 1.0}\n")
    assert main(["train", "--space", path, "--method", "cagrad", "--max-epochs", "2",
                 "--tracking-uri", tracking_uri]) == 0
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.search_runs(experiment_names=["toy_small"]).iloc[0]
    assert run["tags.searcher.space"] == "toy_small" and run["tags.searcher.space_file"] == path
    # the run record finds the space through the file (tag searcher.space_file) before the name
    record = from_run(MlflowClient(tracking_uri).get_run(run["run_id"]))
    assert record.space == path and get_space(record.space).name == "toy_small"
    # extract-weights reads the run's space from the file to order the tasks
    out = tmp_path / "w.json"
    assert main(["extract-weights", run["run_id"], "--out", str(out), "--tracking-uri", tracking_uri]) == 0
    assert out.is_file()
