"""The MLflow store's first use: two commands starting together on a new SQLite file."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from mlflow.tracking import MlflowClient

from searcher import tracking


def _open_store(uri: str, experiment: str, barrier: mp.Barrier, out: mp.Queue) -> None:
    barrier.wait()  # every process connects to the new file at the same moment
    try:
        out.put(("ok", tracking.init_store(uri, experiment)))
    except Exception as err:  # the test reports what broke, not only an exit code
        out.put(("error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))


def test_commands_starting_together_on_a_new_sqlite_store_all_succeed(tmp_path):
    """Without the lock, 3 processes creating a new mlflow.db together all died in MLflow's
    schema migration (alembic: "Online migration expected to match one row"; "table
    _alembic_tmp_metrics already exists"). With it every one gets the same experiment."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    n = 3
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(uri, "shared", barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert [status for status, _ in results] == ["ok"] * n, results
    assert len({experiment_id for _, experiment_id in results}) == 1
    # and the store is whole: the experiment is there, once
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments() if e.name == "shared"] == ["shared"]


def test_the_store_lock_sits_beside_a_sqlite_file_and_is_a_no_op_for_servers(tmp_path):
    db = tmp_path / "sub" / "mlflow.db"
    assert tracking.sqlite_path(f"sqlite:///{db}") == db
    assert tracking.sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert tracking.sqlite_path("sqlite:///:memory:") is None
    assert tracking.sqlite_path("http://head:5000") is None
    with tracking.store_lock(f"sqlite:///{db}") as lock:
        assert Path(lock.lock_file) == Path(str(db) + ".lock") and lock.is_locked
    with tracking.store_lock("http://head:5000") as nothing:
        assert nothing is None


def test_init_store_is_get_or_create(tracking_uri):
    first = tracking.init_store(tracking_uri, "e")
    assert tracking.init_store(tracking_uri, "e") == first
    assert tracking.init_store(tracking_uri, "f") != first


