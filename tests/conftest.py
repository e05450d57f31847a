"""Shared fixtures: no network, one Ray instance per session, a throwaway MLflow store."""

from __future__ import annotations

import os

import pytest

os.environ["SEARCHER_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster: starts real multi-node Ray clusters with `ray start` (slow; deselect with -m 'not cluster')"
    )
