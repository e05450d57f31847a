"""A real two-node Ray cluster on this machine: trials spread over nodes, a node lost mid-search,
a driver killed and resumed with ``--resume``, a diverging configuration.

Each node is a ``ray start --block`` process in a session of its own with its own
``--temp-dir``, so these tests
- never write /tmp/ray/ray_current_cluster (which would make a later plain ``ray.init()``, e.g.
  the session Ray of tests/conftest.py, join this cluster instead of starting its own),
- can stop one node (SIGKILL of that node's process tree) without touching any other Ray on the
  machine (``ray stop`` would kill them all).
The second node listens on a loopback address of its own (127.0.0.x), so the ``node_ip`` that
Ray records in every trial result says which node ran that epoch.

Each search is ``searcher tune`` in a subprocess (``python -m searcher``), as a user runs it;
the tests read what it leaves behind: Ray's experiment folder under ``--storage`` (the
``experiment_state-*.json`` with each trial's status and failures, and each trial's
``result.json``, one row per reported epoch) and the MLflow store.

Slow (each search starts a Python with torch, Ray and MLflow): deselect with ``-m "not cluster"``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
#: The toy search every test runs (CAGrad's 2-D toy needs no data). 100 steps are about a
#: second per epoch on a loaded 2-core machine; the kill tests use 150 so that a trial stays
#: part-way long enough to be caught there.
TOY = ["--space", "toy", "--scheduler", "fifo", "--cpus-per-trial", "1"]
START_TIMEOUT_S = 180.0  # `ray start` on a loaded 2-core machine can take a minute
SEARCH_TIMEOUT_S = 420.0


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_executable() -> list[str]:
    """The ``ray`` CLI of this interpreter's environment."""
    script = Path(sys.executable).parent / "ray"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def subprocess_env(marker: str, **extra: str) -> dict[str, str]:
    """The environment of every process these tests start: no inherited cluster address,
    no auth token, no usage stats, offline, and ``marker`` so that cleanup finds every
    process started from it (Ray's workers inherit their raylet's environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
        SEARCHER_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        SEARCHER_TEST_CLUSTER=marker,
        # The GCS declares a silent node dead after ~3 s instead of ~15 s.
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    env.update(extra)
    return env


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries ``marker`` (ours only)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SEARCHER_TEST_CLUSTER") == marker:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL ``procs``; wait for those that are not our children (our children are reaped by
    their Popen, which then keeps their real exit status)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    others = []
    for proc in procs:
        try:
            if proc.ppid() != os.getpid():
                others.append(proc)
        except psutil.Error:
            continue
    psutil.wait_procs(others, timeout=10)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, diagnose: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Node:
    """One ``ray start --block`` process (the leader of its own session) and its processes."""

    name: str
    ip: str | None
    temp_dir: Path
    log: Path
    process: subprocess.Popen
    marker: str

    def kill(self) -> None:
        """SIGKILL this node's whole process tree (raylet, agents, workers): a lost machine."""
        kill_all(process_tree(self.process.pid) + marked_processes(self.marker))
        self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LocalCluster:
    """A head and extra nodes started with ``ray start`` on this machine, all under ``root``."""

    root: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    drivers: list[subprocess.Popen] = field(default_factory=list)
    head_ip: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """RAY_TMPDIR: where `--address auto` looks for <RAY_TMPDIR>/ray/ray_current_cluster,
        which the head writes into its --temp-dir <root>/ray."""
        return {"RAY_TMPDIR": str(self.root)}

    def _start(self, name: str, args: list[str], ip: str | None, temp_dir: Path) -> Node:
        temp_dir.mkdir()
        log = self.root / f"{name}.log"
        node_marker = f"{self.marker}-{name}"
        process = subprocess.Popen(
            [*ray_executable(), "start", *args, "--num-cpus", "1", "--temp-dir", str(temp_dir),
             "--dashboard-agent-listen-port", "0", "--block"],
            env=subprocess_env(node_marker, **self.env),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,
        )
        node = Node(name, ip, temp_dir, log, process, node_marker)
        self.nodes.append(node)

        def started() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"`ray start` of {name} exited with {process.returncode}:\n{tail(log)}")
            return "Ray runtime started" in tail(log, 100_000)

        wait_for(started, START_TIMEOUT_S, f"`ray start` of {name}", lambda: tail(log))
        return node

    def start_head(self) -> Node:
        head = self._start(
            "head",
            ["--head", "--port", str(self.port), "--dashboard-port", str(free_port()),
             "--include-dashboard", "false", "--disable-usage-stats"],
            None,
            self.root / "ray",  # <RAY_TMPDIR>/ray: where `--address auto` looks
        )
        # `ray start --head` records the cluster's address in <temp-dir>/ray_current_cluster
        # (here: our temp dir, not /tmp/ray); its host is the head's node IP.
        recorded = (head.temp_dir / "ray_current_cluster").read_text().strip()
        self.head_ip = recorded.rsplit(":", 1)[0]
        head.ip = self.head_ip
        return head

    def add_node(self) -> Node:
        """A worker node on a loopback address of its own, registered with the head."""
        ip = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        name = f"node{len(self.nodes)}"
        node = self._start(name, ["--address", self.address, "--node-ip-address", ip], ip, self.root / name)
        wait_for(lambda: ip in self.alive_node_ips(), START_TIMEOUT_S, f"node {ip} to register", lambda: tail(node.log))
        return node

    def second_node(self) -> Node:
        """The live worker node (a new one if the last was stopped)."""
        live = [n for n in self.nodes if n.name != "head" and n.alive]
        return live[-1] if live else self.add_node()

    def alive_node_ips(self) -> set[str]:
        # Ray's GCS client reads the node table without joining the cluster (this pytest
        # process may already hold the session Ray of conftest.py).
        from ray._raylet import GcsClient

        nodes = GcsClient(address=self.address).get_all_node_info(timeout=10)
        return {info.node_manager_address for info in nodes.values() if info.state == 0}  # 0 = ALIVE

    def driver(self, args: list[str], log: Path, **env: str) -> subprocess.Popen:
        """``python -m searcher <args>`` in its own session, output to ``log``."""
        process = subprocess.Popen(
            [sys.executable, "-m", "searcher", *args],
            env=subprocess_env(f"{self.marker}-driver", **self.env, **env),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
        self.drivers.append(process)
        return process

    def shutdown(self) -> None:
        procs: list[psutil.Process] = []
        for process in [*self.drivers, *(n.process for n in self.nodes)]:
            procs += process_tree(process.pid)
        procs += marked_processes(f"{self.marker}-driver")
        for node in self.nodes:
            procs += marked_processes(node.marker)
        kill_all(procs)
        for process in [*self.drivers, *(n.process for n in self.nodes)]:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture(scope="module")
def cluster():
    """A head node (1 CPU) for the whole module; tests add a 1-CPU worker node."""
    # Not tmp_path: Ray's Unix socket paths (<temp-dir>/session_<date>_<pid>/sockets/plasma_store)
    # must stay under 108 characters.
    root = Path(tempfile.mkdtemp(prefix="srch-ray-"))
    default_address_file = Path("/tmp/ray/ray_current_cluster")
    local = LocalCluster(root)
    try:
        local.start_head()
        yield local
    finally:
        local.shutdown()
        leftovers = marked_processes(f"{local.marker}-driver")
        for node in local.nodes:
            leftovers += marked_processes(node.marker)
        shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes left running: {[p.pid for p in leftovers]}"
    # The session Ray of conftest.py (a plain ray.init()) must not find this cluster.
    if default_address_file.exists():
        assert str(local.port) not in default_address_file.read_text()


# ----------------------------------------------------------------------------- what a search leaves
def trial_states(experiment: Path) -> dict[str, dict[str, Any]] | None:
    """Ray's record of each trial from the newest experiment_state-*.json: status, failures,
    last result. None while no (complete) file exists."""
    # The newest by the date in its name, as Ray picks it (a resumed search re-uploads the
    # older files, so modification times do not tell).
    files = sorted(experiment.glob("experiment_state-*.json"))
    if not files:
        return None
    try:
        state = json.loads(files[-1].read_text())
        trials = {}
        for trial_json, metadata_json in state["trial_data"]:
            trial, metadata = json.loads(trial_json), json.loads(metadata_json)
            trials[trial["trial_id"]] = {
                "status": trial["status"],
                "num_failures": metadata["num_failures"],
                "last_result": metadata.get("last_result") or {},
            }
        return trials
    except (json.JSONDecodeError, KeyError, OSError):
        return None  # caught mid-write


def trial_results(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial's result.json rows (one per reported epoch), by trial id."""
    results: dict[str, list[dict[str, Any]]] = {}
    for path in experiment.glob("*/result.json"):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line still being written
        if rows:
            results[rows[0]["trial_id"]] = rows
    return results


def trial_runs(uri: str, experiment: str) -> list[Any]:
    """The MLflow runs of the search's trials (not the parent run of the search)."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("searcher.role") != "search"]


def epoch_steps(uri: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "epoch"))


def tune_args(name: str, storage: Path, uri: str, address: str, *extra: str) -> list[str]:
    return ["tune", *TOY, "--name", name, "--storage", str(storage), "--tracking-uri", uri,
            "--experiment", name, "--address", address, *extra]


def finish(process: subprocess.Popen, log: Path, timeout: float = SEARCH_TIMEOUT_S) -> None:
    try:
        rc = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(process_tree(process.pid))
        raise AssertionError(f"search still running after {timeout:.0f} s:\n{tail(log)}")
    assert rc == 0, f"searcher tune exited with {rc}:\n{tail(log)}"


def check_one_complete_run_per_trial(uri: str, name: str, states: dict[str, dict[str, Any]], max_epochs: int) -> None:
    """Every Ray trial has exactly one MLflow run (tagged with its trial id), finished, with
    epochs 1..max_epochs logged."""
    runs = trial_runs(uri, name)
    by_trial = [r.data.tags["searcher.trial_id"] for r in runs]
    assert sorted(by_trial) == sorted(states), "one MLflow run per Ray trial, none duplicated"
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["searcher.status"] == "completed"
        assert set(epoch_steps(uri, run.info.run_id)) == set(range(1, max_epochs + 1))


# ----------------------------------------------------------------------------- the tests
def test_trials_run_on_both_nodes(cluster, tmp_path):
    """With 1 CPU per node and 1 CPU per trial, two trials run at once, one on each node;
    every trial ends with all its epochs in Ray and one MLflow run."""
    node = cluster.second_node()
    storage, uri, log = tmp_path / "ray", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "driver.log"
    # trials of several seconds: workers are reused, so a worker that finished a short trial
    # before the other node's worker had started would take the next one too
    args = tune_args("spread", storage, uri, cluster.address,
                     "--param", "steps_per_epoch=3000", "--max-epochs", "3", "--num-samples", "2")  # x 2 methods
    finish(cluster.driver(args, log), log)

    experiment = storage / "spread"
    states, results = trial_states(experiment), trial_results(experiment)
    assert states is not None and len(states) == 4
    assert {s["status"] for s in states.values()} == {"TERMINATED"}
    assert set(results) == set(states)
    for rows in results.values():
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert len({r["node_ip"] for r in rows}) == 1  # a trial never moves while its node lives
    ips = {rows[0]["node_ip"] for rows in results.values()}
    assert ips == {cluster.head_ip, node.ip}, f"trials ran on {ips}"
    check_one_complete_run_per_trial(uri, "spread", states, 3)


def test_a_diverging_configuration_is_marked_and_the_search_continues(cluster, tmp_path):
    """lr=1e300 makes the toy's point non-finite in epoch 1: each trial reports diverged (Ray's
    result and the MLflow status), and the search still ends normally with every trial.
    The driver joins with ``--address auto`` (the cluster that `ray start` recorded on this
    machine), as docs/cluster.md does on a hand-made cluster."""
    cluster.second_node()
    storage, uri, log = tmp_path / "ray", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "driver.log"
    args = tune_args("nan", storage, uri, "auto", "--methods", "ew",
                     "--param", "steps_per_epoch=5", "--param", "lr=1e300", "--max-epochs", "2", "--num-samples", "2")
    finish(cluster.driver(args, log), log)
    assert re.search(rf"Connecting to existing Ray cluster at address: [\d.]+:{cluster.port}\b", tail(log, 10**6))

    experiment = storage / "nan"
    states, results = trial_states(experiment), trial_results(experiment)
    assert states is not None and len(states) == 2
    assert {s["status"] for s in states.values()} == {"TERMINATED"}  # diverged is a result, not a crash
    for rows in results.values():
        assert rows[-1]["diverged"] == 1.0 and rows[-1]["epoch"] == 1
        assert "diverged in epoch 1" in rows[-1]["diverged_reason"]
    runs = trial_runs(uri, "nan")
    assert sorted(r.data.tags["searcher.trial_id"] for r in runs) == sorted(states)
    for run in runs:
        assert run.data.tags["searcher.status"] == "diverged"
        assert "diverged in epoch 1" in run.data.tags["searcher.diverged_reason"]


def test_a_killed_driver_resumes_without_rerunning_or_duplicating(cluster, tmp_path):
    """SIGKILL the driver once a trial has finished and another is part-way; ``--resume``
    then completes the search: num_samples trials in all (the same trial ids), finished
    trials not run again, the part-way trial continued from its checkpoint, and one MLflow
    run per trial (the part-way trial's run is reattached, not duplicated)."""
    cluster.second_node()
    storage, uri = tmp_path / "ray", f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment, max_epochs, samples = storage / "resume", 4, 4
    args = tune_args("resume", storage, uri, cluster.address, "--param", "steps_per_epoch=150",
                     "--max-epochs", str(max_epochs), "--num-samples", str(samples // 2))  # per method: ew, cagrad
    first_log = tmp_path / "first.log"
    first = cluster.driver(args, first_log)

    def finished_and_part_way() -> tuple[dict, dict] | None:
        if first.poll() is not None:
            raise AssertionError(f"the search ended (rc {first.returncode}) before it could be killed:\n{tail(first_log)}")
        states = trial_states(experiment)
        if not states:
            return None
        done = {t for t, s in states.items() if s["status"] == "TERMINATED"}
        part_way = {t for t, s in states.items()
                    if s["status"] == "RUNNING" and 1 <= s["last_result"].get("epoch", 0) < max_epochs}
        return (states, trial_results(experiment)) if done and part_way else None

    before_states, before_results = wait_for(finished_and_part_way, SEARCH_TIMEOUT_S, "a finished and a part-way trial",
                                             lambda: tail(first_log))
    kill_all(process_tree(first.pid))
    assert first.wait(timeout=10) == -signal.SIGKILL
    # What Ray had recorded when the driver died (read again: nothing may be written after).
    before_states, before_results = trial_states(experiment), trial_results(experiment)
    finished = {t for t, s in before_states.items() if s["status"] == "TERMINATED"}
    part_way = {t: s["last_result"]["epoch"] for t, s in before_states.items()
                if s["status"] != "TERMINATED" and s["last_result"].get("epoch")}
    assert finished and part_way

    second_log = tmp_path / "resumed.log"
    finish(cluster.driver([*args, "--resume"], second_log), second_log)

    states, results = trial_states(experiment), trial_results(experiment)
    assert len(states) == samples and set(states) >= set(before_states)
    assert {s["status"] for s in states.values()} == {"TERMINATED"}
    for trial_id, rows in results.items():
        assert set(r["epoch"] for r in rows) == set(range(1, max_epochs + 1))
    for trial_id in finished:  # not run twice: no new result after the kill
        assert results[trial_id] == before_results[trial_id]
        assert [r["epoch"] for r in results[trial_id]] == list(range(1, max_epochs + 1))
    for trial_id, epoch in part_way.items():
        # continued from the checkpoint of its last recorded epoch, not restarted from epoch 1
        restarts = [r["epoch"] for r in results[trial_id] if r["iterations_since_restore"] == 1]
        assert restarts[0] == 1 and restarts[1:] == [epoch + 1], (trial_id, epoch, restarts)
    check_one_complete_run_per_trial(uri, "resume", states, max_epochs)
    assert "resuming resume" in tail(second_log, 1_000_000)


def test_the_search_survives_losing_a_node(cluster, tmp_path):
    """SIGKILL the second node's processes while a trial runs there: Ray retries that trial
    (FailureConfig(max_failures=1)) on the head from its last checkpoint, and the search
    ends with every trial complete, each in one MLflow run."""
    node = cluster.second_node()
    storage, uri, log = tmp_path / "ray", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "driver.log"
    experiment, max_epochs, samples = storage / "lost", 4, 4
    # epochs of seconds: workers are reused, and a warm worker on the head would otherwise run
    # every short trial before the second node's worker is up (then no trial is lost with it)
    args = tune_args("lost", storage, uri, cluster.address, "--param", "steps_per_epoch=3000",
                     "--max-epochs", str(max_epochs), "--num-samples", str(samples // 2))  # per method: ew, cagrad
    driver = cluster.driver(args, log)

    def part_way_on_the_node() -> tuple[str, int] | None:
        if driver.poll() is not None:
            raise AssertionError(f"the search ended (rc {driver.returncode}) before the node was lost:\n{tail(log)}")
        states = trial_states(experiment) or {}
        for trial_id, rows in trial_results(experiment).items():
            if (states.get(trial_id, {}).get("status") == "RUNNING" and rows[-1]["node_ip"] == node.ip
                    and 1 <= rows[-1]["epoch"] < max_epochs):
                return trial_id, rows[-1]["epoch"]
        return None

    victim, epoch = wait_for(part_way_on_the_node, SEARCH_TIMEOUT_S, "a part-way trial on the second node", lambda: tail(log))
    node.kill()
    assert not node.alive and not marked_processes(node.marker), "every process of the node is gone"
    finish(driver, log)

    states, results = trial_states(experiment), trial_results(experiment)
    assert len(states) == samples
    assert {s["status"] for s in states.values()} == {"TERMINATED"}
    assert states[victim]["num_failures"] == 1
    rows = results[victim]
    assert set(r["epoch"] for r in rows) == set(range(1, max_epochs + 1))
    lost = [r for r in rows if r["node_ip"] == node.ip]
    after = [r for r in rows if r["node_ip"] != node.ip]
    assert lost and after and rows.index(after[0]) == len(lost)  # lost node first, then elsewhere
    assert {r["node_ip"] for r in after} == {cluster.head_ip}
    # retried from a checkpoint it made on the lost node, not from scratch: from its last one, or
    # (seen once in 5 runs, 2026-12-05) the one before, when the node died between the driver
    # writing the last epoch's result row and registering that epoch's checkpoint
    assert after[0]["iterations_since_restore"] == 1 and after[0]["epoch"] >= max(epoch, 1) + 1
    assert after[0]["epoch"] in (lost[-1]["epoch"] + 1, lost[-1]["epoch"])
    check_one_complete_run_per_trial(uri, "lost", states, max_epochs)
