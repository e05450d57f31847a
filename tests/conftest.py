"""Shared fixtures: no network, one Ray instance per session, a throwaway MLflow store."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

os.environ["SEARCHER_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


def make_tasks(n: int) -> list:
    """``n`` plain tasks t0, t1, ... without metrics: what a method needs to be built in a unit test.
    Test files import it (``from conftest import make_tasks``)."""
    from trainables.problems.base import TaskSpec

    return [TaskSpec(f"t{i}", ()) for i in range(n)]


def f64(*values: float) -> torch.Tensor:
    """A float64 vector of ``values``: losses, KPIs or weights written out in a test."""
    import torch

    return torch.tensor(values, dtype=torch.float64)


def combine_with_grad(method, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(total, weights, ∂total/∂L) of one ``combine`` call of a loss weighting on ``losses``."""
    import torch

    leaf = losses.clone().requires_grad_(True)
    total, weights = method.combine(leaf)
    (grad,) = torch.autograd.grad(total, leaf)
    return total.detach(), weights, grad


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once for the whole session (ray.init costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path):
    """A fresh SQLite MLflow store per test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def module_store(tmp_path_factory):
    """One MLflow store for a test module (creating a store's schema takes seconds), in its own
    folder, which is the working directory while the module runs (MLflow's default artifact root
    is ./mlruns)."""
    from mlflow.tracking import MlflowClient

    directory = tmp_path_factory.mktemp("module-store")
    before = os.getcwd()
    os.chdir(directory)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    yield uri
    os.chdir(before)


@pytest.fixture
def train_toy(tracking_uri):
    """Train one run on the toy through `searcher train` (experiment ``toy``); its MLflow run id."""

    def train(method: str, max_epochs: int, *params: str) -> str:
        import mlflow

        from searcher.cli import main

        flags = [flag for param in params for flag in ("--param", param)]
        assert main(["train", "--space", "toy", "--method", method, "--max-epochs", str(max_epochs), *flags,
                     "--tracking-uri", tracking_uri]) == 0
        mlflow.set_tracking_uri(tracking_uri)
        return str(mlflow.search_runs(experiment_names=["toy"], order_by=["start_time DESC"]).iloc[0].run_id)

    return train


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster: starts real multi-node Ray clusters with `ray start` (slow; deselect with -m 'not cluster')"
    )
