"""Corruption robustness (`003` §4.3): δ by hand, the corruptions, the kept best model, `searcher robustness`."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.robustness import CLEAN, by_corruption, delta_table, summary
from trainables.corruptions import CORRUPTIONS, check_names, corrupt
from trainables.errors import ConfigError
from trainables.problems import build_problem
from trainables.trainer import Trainer

DIRECTIONS = {"CL": {"accuracy": True}, "RR": {"mse": False}}


def table(clean: tuple[float, float], *noisy: tuple[float, float]) -> dict:
    """An evaluation: CL accuracy and RR mse, clean and under gaussian_noise at severities 1, 2, ..."""
    out = {CLEAN: {"CL": {"accuracy": clean[0]}, "RR": {"mse": clean[1]}}}
    for s, (acc, mse) in enumerate(noisy, 1):
        out[("gaussian_noise", s)] = {"CL": {"accuracy": acc}, "RR": {"mse": mse}}
    return out


# --------------------------------------------------------------------------- δ, `003` eq. 6
def test_delta_hand_worked_and_sign_convention():
    """MTL keeps 0.75 then 0.5 of its accuracy, STL 0.9 then 0.5: δ = -0.15, 0 (eq. 6), signed
    (accuracy: higher is better, p=1) +0.15, 0, δ_t = 0.075 > 0: STL more robust. MSE (p=0):
    MTL's error x1.5, x2, STL's x1.25, x2.5: δ = 0.25, -0.5, δ_t = -0.125 < 0: MTL more robust."""
    mtl = {"m": table((0.8, 0.5), (0.6, 0.75), (0.4, 1.0))}
    stl_cl = table((0.9, 9.9), (0.81, 9.9), (0.45, 9.9))
    stl_rr = table((0.1, 0.4), (0.1, 0.5), (0.1, 1.0))
    deltas = delta_table(mtl, {"CL": [stl_cl], "RR": [stl_rr]}, DIRECTIONS).set_index(["task", "severity"])
    assert deltas.loc[("CL", 1), "delta"] == pytest.approx(-0.15)
    assert deltas.loc[("CL", 1), "signed_delta"] == pytest.approx(0.15)
    assert deltas.loc[("CL", 2), "delta"] == pytest.approx(0.0)
    assert deltas.loc[("RR", 1), "delta"] == pytest.approx(0.25)
    assert deltas.loc[("RR", 1), "signed_delta"] == pytest.approx(0.25)
    assert deltas.loc[("RR", 2), "signed_delta"] == pytest.approx(-0.5)
    assert deltas.loc[("RR", 2), "stl_relative"] == pytest.approx(2.5)
    result = summary(deltas.reset_index()).set_index("task")
    assert result.loc["CL", "delta_t"] == pytest.approx(0.075)
    assert result.loc["RR", "delta_t"] == pytest.approx(-0.125)
    per = by_corruption(deltas.reset_index()).set_index("task")
    assert per.loc["RR", "delta"] == pytest.approx(-0.125) and per.loc["CL", "delta"] == pytest.approx(0.075)


def test_delta_averages_stl_seeds_and_mtl_runs():
    """Two STL seeds keep 0.9 and 0.7 of their accuracy (mean 0.8); two MTL runs keep 0.5 and 0.7:
    δ = -0.3 and -0.1, signed 0.3 and 0.1, δ_t over both runs = 0.2; a zero clean metric gives NaN."""
    mtl = {"a": table((1.0, 1.0), (0.5, 1.0)), "b": table((0.5, 1.0), (0.35, 1.0))}
    stl = {"CL": [table((1.0, 1.0), (0.9, 1.0)), table((0.5, 1.0), (0.35, 1.0))], "RR": [table((1.0, 1.0), (1.0, 1.0))]}
    deltas = delta_table(mtl, stl, DIRECTIONS)
    cl = deltas[deltas.task == "CL"].set_index("run")
    assert cl.loc["a", "stl_relative"] == pytest.approx(0.8)
    assert cl.loc["a", "signed_delta"] == pytest.approx(0.3) and cl.loc["b", "signed_delta"] == pytest.approx(0.1)
    assert summary(deltas).set_index("task").loc["CL", "delta_t"] == pytest.approx(0.2)
    zero = delta_table({"z": table((0.0, 1.0), (0.5, 1.0))}, stl, DIRECTIONS)
    assert math.isnan(zero[zero.task == "CL"]["delta"].iloc[0])


# --------------------------------------------------------------------------- corruptions
def smooth_images(channels: int, n: int = 3, size: tuple[int, int] = (28, 28)) -> torch.Tensor:
    """Discs on a dark background (a natural image's smoothness: blurs change it, noise too)."""
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    discs = [((xx - 0.2 * k) ** 2 + yy ** 2 < 0.35).float() * 0.8 + 0.1 for k in range(n)]
    gray = torch.stack(discs).unsqueeze(1)
    return gray if channels == 1 else torch.cat([gray, gray * 0.7, gray * 0.4], 1)


@pytest.mark.parametrize("channels, size", [(1, (28, 28)), (3, (40, 48)), (3, (100, 104))])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_shape_range_determinism_severity(name, channels, size):
    """Same shape, dtype, values in [0, 1]; the same seed gives the same images; the image moves
    away from the clean one, more at severity 5 than at 1 (elastic excepted: the reference's own
    severities do not grow in pixel distance, its first ones are the widest warps)."""
    x = smooth_images(channels, size=size)
    distance = []
    for severity in (1, 5):
        y = corrupt(x, name, severity, torch.Generator().manual_seed(3))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.equal(y, corrupt(x, name, severity, torch.Generator().manual_seed(3)))
        distance.append(float((y - x).abs().mean()))
    assert distance[1] > 0
    if name != "elastic_transform":
        assert distance[1] > distance[0], distance


def test_noise_differs_by_seed_and_hand_checked_values():
    """Noise draws follow the seed; contrast at CIFAR severity 1 (c = 0.75) maps a pixel v of a
    two-pixel image with mean m to (v - m) * 0.75 + m; brightness adds c to HSV's V (0.05)."""
    x = smooth_images(1)
    a = corrupt(x, "gaussian_noise", 3, torch.Generator().manual_seed(0))
    b = corrupt(x, "gaussian_noise", 3, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    two = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2).expand(1, 1, 2, 2).contiguous()
    out = corrupt(two, "contrast", 1, torch.Generator())
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.25, 0.55]))
    rgb = torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    bright = corrupt(rgb, "brightness", 1, torch.Generator())  # V 0.8 -> 0.85, H and S kept
    assert torch.allclose(bright[0, :, 0, 0], torch.tensor([0.2, 0.4, 0.8]) * 0.85 / 0.8)


def test_unknown_or_left_out_corruption_is_a_config_error():
    with pytest.raises(ConfigError, match="frost"):
        check_names(["frost"])
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        check_names(["rain"])
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        corrupt(torch.rand(1, 2, 8, 8), "contrast", 1, torch.Generator())


# --------------------------------------------------------------------------- the kept best model
def test_trainer_keeps_the_best_epochs_model(monkeypatch):
    """Validation scores 1, 0.5, 2 (scripted): after epoch 2 the kept state is epoch 1's model, after
    epoch 3 the current one; it rides in the checkpoint (a resumed trainer has it), old checkpoints
    without it load, and keep_model=false keeps nothing."""
    toy = build_problem("toy")
    scores = iter([1.0, 0.5, 2.0])
    monkeypatch.setattr(toy, "score", lambda metrics, tasks: next(scores))
    config = {"method": "ew", "lr": 0.05, "steps_per_epoch": 2}
    trainer = Trainer(toy, config)
    trainer.run_epoch()
    epoch1 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run_epoch()
    kept = trainer.best_state
    assert kept["epoch"] == 1 and trainer.best["best/epoch"] == 1
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(kept["model"][key], epoch1[key]) and kept["model"][key].device.type == "cpu"
    assert any(not torch.equal(v, epoch1[k]) for k, v in trainer.model.state_dict().items())
    state = trainer.state_dict()
    resumed = Trainer(build_problem("toy"), config)
    resumed.load_state_dict(state)
    assert resumed.best_state["epoch"] == 1
    old = {k: v for k, v in state.items() if k != "best_model"}
    resumed.load_state_dict(old)
    assert resumed.best_state is None
    trainer.run_epoch()
    assert trainer.best_state["epoch"] == 3
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(trainer.best_state["model"][key], value)
    off = Trainer(build_problem("toy"), {**config, "keep_model": "false"})
    off.run_epoch()
    assert off.best_state is None and off.state_dict()["best_model"] is None


# --------------------------------------------------------------------------- end to end
def write_tiny_mnist(root: Path, n_train: int = 48, n_test: int = 32) -> None:
    """MNIST in torchvision's on-disk format (<root>/MNIST/raw, IDX files): strokes per class."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 4 + 2 * label: 8 + 2 * label, 6:22] = 255
            images[i] = np.clip(images[i] + rng.integers(0, 30, size=(28, 28)), 0, 255)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """An EW run and the two single-task runs of Multi-MNIST CL_RR, one epoch each, on a tiny MNIST."""
    import mlflow

    from searcher.cli import main

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    write_tiny_mnist(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--space", "mnist_cl_rr", "--max-epochs", "1", "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri]
    assert main(["train", "--method", "ew", *common]) == 0
    mlflow.set_tracking_uri(uri)
    ew = str(mlflow.search_runs(experiment_names=["mnist_cl_rr"]).iloc[0].run_id)
    return uri, ew, common


def test_searcher_robustness_end_to_end(trained, capsys):
    """`searcher train` logs model/best.pt; with both single-task references trained, `searcher
    robustness` writes δ for every task, corruption and severity, finite, and logs the files to the
    run. Before the references exist, the error names the missing task, in one line."""
    from mlflow.tracking import MlflowClient

    from searcher.cli import main

    uri, ew, common = trained
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(ew, "model")] == ["model/best.pt"]
    assert main(["robustness", ew, "--store", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert "no finished single_task run for task CL" in err and "\n" not in err
    assert main(["train", "--method", "single_task", "--param", "task=CL", *common]) == 0
    assert main(["train", "--method", "single_task", "--param", "task=RR", *common]) == 0
    capsys.readouterr()
    assert main(["robustness", ew, "--store", uri, "--out", "rob", "--data-dir", common[5]]) == 0
    out = capsys.readouterr().out
    assert "δ < 0: MTL kept more of its clean performance" in out
    deltas = pd.read_csv("rob/robustness_deltas.csv")
    assert len(deltas) == 2 * len(CORRUPTIONS) * 5
    assert set(deltas.corruption) == set(CORRUPTIONS) and set(deltas.severity) == {1, 2, 3, 4, 5}
    assert np.isfinite(deltas["delta"]).all()
    assert set(pd.read_csv("rob/robustness_summary.csv").task) == {"CL", "RR"}
    assert Path("rob/robustness.png").stat().st_size > 0
    logged = {a.path for a in client.list_artifacts(ew, "robustness")}
    assert "robustness/robustness_deltas.csv" in logged and "robustness/robustness.png" in logged
    # the same corrupted images every call (seeded): the numbers repeat
    assert main(["robustness", ew, "--store", uri, "--out", "rob2", "--data-dir", common[5],
                 "--corruptions", "gaussian_noise", "--severities", "2-3"]) == 0
    again = pd.read_csv("rob2/robustness_deltas.csv")
    first = deltas[(deltas.corruption == "gaussian_noise") & deltas.severity.isin([2, 3])].reset_index(drop=True)
    assert np.allclose(again["delta"], first["delta"])


def test_robustness_bad_input_is_one_line(trained, capsys):
    """Unknown run id, a run without a kept model, a bad severity: one line, exit status 2."""
    from searcher.cli import main

    uri, ew, common = trained
    assert main(["train", "--method", "ew", "--param", "keep_model=false", *common]) == 0
    import mlflow

    runs = mlflow.search_runs(experiment_names=["mnist_cl_rr"])
    bare = str(runs[runs["params.keep_model"] == "False"].iloc[0].run_id)
    capsys.readouterr()
    for args, message in (([ "nosuchrun"], "no run 'nosuchrun'"), ([bare], "has no model/best.pt"),
                          ([ew, "--severities", "0-9"], "severities are 1 to 5"),
                          ([ew, "--corruptions", "frost"], "frost")):
        assert main(["robustness", *args, "--store", uri]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("searcher: error: ") and message in err and "\n" not in err, err
