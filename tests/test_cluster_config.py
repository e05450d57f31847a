"""ray_cluster.yaml: valid for Ray's cluster launcher and holding what a search needs.

No cloud is reached: the file is checked against the JSON schema Ray ships
(ray/autoscaler/ray-schema.json) and through Ray's own preparation (AWS defaults merged, setup
commands merged, node-type checks), then for the pieces of the set-up: a CPU head, GPU workers
that scale from 0, this project installed with the pinned torch, the data copied to every node,
and an MLflow server on the head that every node points at.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

import ray

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "ray_cluster.yaml"
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (installed with ray[default]/ray[tune]) is needed to validate the cluster YAML")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def words(command: str) -> list[str]:
    return shlex.split(command.replace(";", " ; "), comments=False)


def test_the_yaml_is_valid_for_rays_cluster_launcher(config, schema):
    jsonschema.validate(config, schema)
    # What `ray up` does before launching anything: merge the provider's defaults and the
    # setup commands, check node types and worker counts.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_the_schema_check_is_not_vacuous(config, schema):
    broken = copy.deepcopy(config)
    gpu_type = next(k for k in broken["available_node_types"] if k != broken["head_node_type"])
    broken["available_node_types"][gpu_type]["resources"] = {"GPU": "one"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(config)
    broken["available_node_types"][gpu_type]["min_worker"] = 0  # misspelt key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_a_cpu_head_and_gpu_workers_that_scale_from_zero(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["resources"].get("GPU")
    assert head["node_config"]["InstanceType"].startswith("m5.")
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, "a GPU worker type"
    for t in gpu.values():
        assert t["min_workers"] == 0
        assert 1 <= t["max_workers"] <= config["max_workers"]
        assert t["node_config"]["InstanceType"].startswith("g5.")
        assert t["resources"]["CPU"] >= 1
    # the GPU image on workers, the CPU image on the head, both for the Ray this project pins
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray"))
    version = ray_pin.split("==")[1]
    assert config["docker"]["worker_image"] == f"rayproject/ray:{version}-py311-gpu"
    assert config["docker"]["head_image"] == f"rayproject/ray:{version}-py311-cpu"
    assert ray.__version__ == version


def test_every_node_installs_this_project_with_the_pinned_torch(config):
    mounts = {remote: local for remote, local in config["file_mounts"].items()}
    project = [remote for remote, local in mounts.items() if (ROOT / local).resolve() == ROOT]
    assert project, "the repository is copied to the nodes"
    setup = config["setup_commands"]  # run on the head and on every worker
    installs = [c for c in setup if "pip install" in c and re.search(rf"-e\s+{re.escape(project[0])}\b", c)]
    assert installs, f"pip install -e {project[0]} in setup_commands"
    # with the lock, so every node runs the versions the suite passed with
    assert all(f"-c {project[0]}/constraints.txt" in c for c in setup if "pip install" in c)
    pins = " ".join(c for c in setup if "pip install" in c)
    assert '"torch==2.14.1"' in pins and '"torchvision==0.29.1"' in pins
    # the same pins as the package itself
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in dependencies and "torchvision==0.29.1" in dependencies


def test_the_data_is_copied_to_every_node_and_found_there(config):
    mounts = config["file_mounts"]
    data = [remote for remote, local in mounts.items() if Path(local) == Path("./data")]
    assert data == ["~/data"]
    # every node's Ray processes (trials, the driver) look for data there
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "SEARCHER_DATA=$HOME/data" in start and start.index("SEARCHER_DATA") < start.index("ray start")
    # and the repository copy does not carry the data (or local MLflow stores) a second time
    assert "/data" in config["rsync_exclude"] and "/mlruns" in config["rsync_exclude"]


def test_the_head_runs_an_mlflow_server_that_every_node_uses(config):
    head = config["head_start_ray_commands"]
    server_at = next(i for i, c in enumerate(head) if "mlflow server" in c)
    ray_at = next(i for i, c in enumerate(head) if "ray start --head" in c)
    assert server_at < ray_at
    server = words(head[server_at])
    option = lambda name: server[server.index(name) + 1]  # noqa: E731
    backend = option("--backend-store-uri")
    assert backend.startswith(("sqlite:////", "postgresql://"))
    assert option("--artifacts-destination").startswith("s3://")
    assert option("--host") == "0.0.0.0"
    port = option("--port")
    # the database is on the head's disk (a volume of the head's container), not in the container
    database_dir = str(Path(backend[len("sqlite:///"):]).parent)
    volumes = [o.split("=", 1)[1].split(":") for o in config["docker"]["head_run_options"] if o.startswith("--volume=")]
    assert any(inside == database_dir for _, inside in volumes)
    # the driver (on the head) and the trials (on the workers) get the server's address
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in head[ray_at]
    worker_start = next(c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert f"MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:{port}" in worker_start
    assert worker_start.index("MLFLOW_TRACKING_URI") < worker_start.index("ray start")
    assert "--address=$RAY_HEAD_IP:6379" in worker_start and "--port=6379" in head[ray_at]
