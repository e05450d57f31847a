"""NYUv2: the MTAN .npy loader, losses and metrics on hand-worked values, models, CLI.

The data is a tiny set written here in MTAN's exact layout ({train,val}/{image,label,depth,
normal}/{i}.npy at 288x384). No test touches the network (conftest sets SEARCHER_OFFLINE and
opening a socket fails here).
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.errors import ConfigError, DataError
from trainables.metrics import MetricAccumulator
from trainables.problems import build_problem
from trainables.problems.nyuv2 import (
    ANGLE_BIN,
    NORMAL_METRICS,
    batch_median_angle,
    NYUv2Npy,
    SegNetEncoderDecoder,
    depth_delta1,
    hflip,
    histogram_median,
    normal_angles,
    scale_crop,
    validation_indices,
)

H, W = 288, 384
TINY = ["--param", "height=32", "--param", "width=48", "--param", "num_workers=0", "--param", "segnet_filters=4,4,8,8,8",
        "--param", "batch_size=2"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)


def write_mtan(root: Path, n_train: int = 5, n_val: int = 2, seed: int = 0) -> dict:
    """MTAN's layout with float64 arrays (as np.save of the preprocessed data); returns them."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("val", n_val)):
        for kind in ("image", "label", "depth", "normal"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.random((H, W, 3))
            label = rng.integers(0, 13, (H, W)).astype(np.float64)
            label[:20] = -1  # unlabelled rows
            depth = rng.uniform(0.5, 10.0, (H, W, 1))
            depth[:, :30] = 0  # no measurement
            normal = rng.normal(size=(H, W, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[-15:] = 0  # no normal
            arrays = {"image": image, "label": label, "depth": depth, "normal": normal}
            for kind, a in arrays.items():
                np.save(root / split / kind / f"{i}.npy", a)
            written[(split, i)] = arrays
    return written


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyuv2")
    return root, write_mtan(root)


def unit(deg: float, azimuth: float = 0.0) -> list[float]:
    """A unit vector at ``deg`` degrees from +z (tilted towards azimuth in the x-y plane)."""
    t, a = math.radians(deg), math.radians(azimuth)
    return [math.sin(t) * math.cos(a), math.sin(t) * math.sin(a), math.cos(t)]


def as_map(vectors: list[list[float]]) -> torch.Tensor:
    """A (1, 3, 1, P) normal map from P vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def evaluate(specs, batches) -> dict[str, float]:
    acc = MetricAccumulator({"t": tuple(specs)})
    for out, tgt in batches:
        acc.update({"t": out}, {"t": tgt})
    return acc.compute()["t"]


# --------------------------------------------------------------------------- loader


def test_npy_layout_reads_back_shapes_dtypes_ignore_and_invalid(tiny):
    root, written = tiny
    ds = NYUv2Npy(root / "val")
    assert len(ds) == 2
    image, targets = ds[1]
    ref = written[("val", 1)]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert torch.allclose(image, torch.from_numpy(ref["image"]).float().permute(2, 0, 1))
    seg, depth, normal = targets["segmentation"], targets["depth"], targets["normal"]
    assert seg.shape == (H, W) and seg.dtype == torch.int64
    assert (seg[:20] == -1).all() and seg[20:].min() >= 0 and seg.max() <= 12
    assert torch.equal(seg, torch.from_numpy(ref["label"]).long())
    assert depth.shape == (1, H, W) and depth.dtype == torch.float32
    assert (depth[:, :, :30] == 0).all() and (depth[:, :, 30:] > 0).all()
    assert normal.shape == (3, H, W)
    assert torch.allclose(normal, torch.from_numpy(ref["normal"]).float().permute(2, 0, 1))


def test_resizing_keeps_labels_and_invalid_pixels_exact(tiny):
    root, written = tiny
    image, t = NYUv2Npy(root / "val", size=(36, 48))[0]  # 8x smaller: nearest picks every 8th pixel
    assert image.shape == (3, 36, 48)
    ref = written[("val", 0)]
    assert torch.equal(t["segmentation"], torch.from_numpy(ref["label"][::8, ::8]).long())
    assert torch.equal(t["depth"][0], torch.from_numpy(ref["depth"][::8, ::8, 0]).float())
    assert set(t["segmentation"].unique().tolist()) <= set(range(-1, 13))


def test_validation_is_a_seeded_part_of_train_and_test_is_mtans_val(tiny):
    root, _ = tiny
    train, val = validation_indices(795, 0.2, seed=0)
    assert len(val) == 159 and len(train) == 636  # `003` A3.1: 159 of 795
    assert not set(train) & set(val) and set(train) | set(val) == set(range(795))
    assert validation_indices(795, 0.2, seed=0) == (train, val)
    assert validation_indices(795, 0.2, seed=1)[1] != val

    problem = build_problem("nyuv2")
    config = {**problem.defaults, "height": 32, "width": "48", "num_workers": "0", "batch_size": "2", "augment": "false"}
    splits = problem.load(problem.prepare(str(root), config), config, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert splits.sizes == {"train": 4, "val": 1, "test": 2}
    val_ids = splits.val.dataset.indices
    assert splits.val.dataset.folder == splits.train.dataset.folder == root / "train"
    assert splits.test.dataset.folder == root / "val"
    assert not set(val_ids) & set(splits.train.dataset.indices)
    inputs, targets = next(iter(splits.test))
    assert inputs.shape == (2, 3, 32, 48)
    assert targets["segmentation"].shape == (2, 32, 48) and targets["depth"].shape == (2, 1, 32, 48)
    assert targets["normal"].shape == (2, 3, 32, 48)
    assert "validation = 1 held-out train images (seed 0)" in splits.source

    # validation=test: MTAN / LibMTL / Nash-MTL train on all of train/ and pick the epoch on the test images
    as_reference = {**config, "validation": "test"}
    splits = problem.load(problem.prepare(str(root), as_reference), as_reference, torch.Generator().manual_seed(0),
                          torch.device("cpu"))
    assert splits.sizes == {"train": 5, "val": 2, "test": 2} and "validation = test" in splits.source
    assert splits.val.dataset.folder == splits.test.dataset.folder == root / "val"
    with pytest.raises(ConfigError, match="validation must be one of holdout, test"):
        problem.prepare(str(root), {**config, "validation": "train"})


def test_workers_give_the_same_batches(tiny):
    root, _ = tiny
    problem = build_problem("nyuv2")
    data = problem.prepare(str(root), problem.defaults)
    batches = {}
    for workers in (0, 2):
        config = {**problem.defaults, "height": 32, "width": "48", "num_workers": workers, "batch_size": 1}
        splits = problem.load(data, config, torch.Generator().manual_seed(0), torch.device("cpu"))
        assert splits.test.num_workers == workers and not splits.test.pin_memory  # pinned only on CUDA
        batches[workers] = [(x, t["depth"]) for x, t in splits.test]
    for (x0, d0), (x2, d2) in zip(batches[0], batches[2]):
        assert torch.equal(x0, x2) and torch.equal(d0, d2)


def test_augmentation_zooms_crops_and_flips_consistently():
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)[:1].repeat(3, 1, 1)
    label = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    depth = torch.full((1, 4, 4), 6.0)
    normal = torch.tensor(unit(30)).view(3, 1, 1).repeat(1, 4, 4)
    # zoom 1 at (0, 0) is the identity
    out = scale_crop(image, label, depth, normal, 1.0, 0, 0)
    assert all(torch.allclose(a, b) for a, b in zip(out, (image, label, depth, normal)))
    # zoom 2 at (2, 2): the bottom-right 2x2 block blown up; depth halves (the scene is 2x closer)
    _, lab2, dep2, nor2 = scale_crop(image, label, depth, normal, 2.0, 2, 2)
    assert torch.equal(lab2, torch.tensor([[10.0, 10, 11, 11], [10, 10, 11, 11], [14, 14, 15, 15], [14, 14, 15, 15]]))
    assert torch.allclose(dep2, torch.full((1, 4, 4), 3.0)) and torch.allclose(nor2, normal)
    # horizontal flip mirrors every map and negates the normals' x component
    im3, lab3, _, nor3 = hflip(image, label, depth, normal)
    assert torch.equal(lab3[0], torch.tensor([3.0, 2, 1, 0])) and torch.equal(im3, image.flip(-1))
    assert torch.allclose(nor3[:, 0, 0], torch.tensor([-unit(30)[0], unit(30)[1], unit(30)[2]]))


def test_augmented_training_samples_keep_shapes_and_label_values(tiny):
    root, _ = tiny
    torch.manual_seed(3)
    ds = NYUv2Npy(root / "train", [0, 1], size=(64, 96), augment=True)
    for i in range(2):
        image, t = ds[i]
        assert image.shape == (3, 64, 96) and t["normal"].shape == (3, 64, 96)
        assert set(t["segmentation"].unique().tolist()) <= set(range(-1, 13))
        assert t["depth"].min() >= 0


# --------------------------------------------------------------------------- losses


def test_segmentation_loss_ignores_unlabelled_pixels():
    problem = build_problem("nyuv2")
    logits = torch.zeros(1, 13, 1, 2)
    logits[0, 0, 0, 0] = math.log(12.0)  # pixel 0, class 0: p = 12 / (12 + 12) = 1/2
    logits[0, 5, 0, 1] = 50.0  # pixel 1 is unlabelled: its confident wrong guess must not count
    target = torch.tensor([[[0, -1]]])
    assert problem.loss("segmentation", logits, target).item() == pytest.approx(math.log(2.0), rel=1e-6)
    # nothing labelled: zero loss, still differentiable
    empty = problem.loss("segmentation", logits.requires_grad_(), torch.full((1, 1, 2), -1))
    assert empty.item() == 0.0 and empty.requires_grad


def test_depth_loss_is_l1_on_valid_pixels():
    problem = build_problem("nyuv2")
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    target = torch.tensor([0.0, 1.0, 5.0, 4.0]).view(1, 1, 1, 4)  # first pixel invalid
    assert problem.loss("depth", pred, target).item() == pytest.approx((1 + 2 + 0) / 3)


def test_normal_loss_is_one_minus_cosine_on_valid_pixels():
    problem = build_problem("nyuv2")
    gt = as_map([unit(0), unit(0), [0.0, 0.0, 0.0]])  # third pixel has no normal
    pred = as_map([unit(0), unit(60), unit(170)])
    assert problem.loss("normal", pred, gt).item() == pytest.approx(1 - (1.0 + 0.5) / 2, abs=1e-6)
    assert problem.loss("normal", 3.0 * pred, gt).item() == pytest.approx(0.25, abs=1e-6)  # predictions normalised


# --------------------------------------------------------------------------- metrics


def test_segmentation_metrics_by_hand():
    seg = build_problem("nyuv2").tasks[0]
    target = torch.tensor([[[0, 0, 1, -1]]])
    logits = torch.zeros(1, 13, 1, 4)
    for pixel, cls in enumerate([0, 1, 1, 0]):
        logits[0, cls, 0, pixel] = 1.0
    m = evaluate(seg.metrics, [(logits, target)])
    # labelled pixels 0-2, right on 0 and 2; IoU(0) = 1/2, IoU(1) = 1/2, other classes absent
    assert m["pixel_acc"] == pytest.approx(2 / 3) and m["miou"] == pytest.approx(0.5)


def test_depth_metrics_by_hand_over_two_batches():
    depth = build_problem("nyuv2").tasks[1]
    b1 = (torch.tensor([1.0, 2.0]).view(1, 1, 1, 2), torch.tensor([0.0, 1.0]).view(1, 1, 1, 2))
    b2 = (torch.tensor([3.0, 4.0]).view(1, 1, 1, 2), torch.tensor([5.0, 4.0]).view(1, 1, 1, 2))
    m = evaluate(depth.metrics, [b1, b2])
    assert m["abs_err"] == pytest.approx((1 + 2 + 0) / 3)
    assert m["rel_err"] == pytest.approx((1 / 1 + 2 / 5 + 0) / 3)
    assert not depth.metrics[0].higher_is_better and not depth.metrics[1].higher_is_better


def test_normal_angle_metrics_by_hand_over_two_batches():
    """Angles 0, 45 | 10, 20 degrees (+ one invalid pixel): mean 18.75, median 15 (the mean of
    the middle two), within 11.25: 2/4, within 22.5: 3/4, within 30: 3/4."""
    gt1 = as_map([unit(0), unit(0), [0.0, 0.0, 0.0]])
    pred1 = as_map([unit(0), unit(45, 30), unit(100)])  # invalid pixel at 100 degrees must not count
    gt2 = as_map([unit(20, 90), unit(50, 200)])
    pred2 = as_map([unit(30, 90), unit(30, 200)])  # 10 and 20 degrees apart, in the same plane
    pred2 = pred2 * torch.tensor([2.0, 0.5]).view(1, 1, 1, 2)  # lengths do not matter
    m = evaluate(NORMAL_METRICS, [(pred1, gt1), (pred2, gt2)])
    assert m["mean_angle"] == pytest.approx(18.75, abs=1e-4)
    assert m["median_angle"] == pytest.approx(15.0, abs=ANGLE_BIN)
    assert m["within_11.25"] == pytest.approx(0.5)
    assert m["within_22.5"] == pytest.approx(0.75) and m["within_30"] == pytest.approx(0.75)
    directions = {s.name: s.higher_is_better for s in NORMAL_METRICS}
    assert directions == {"mean_angle": False, "median_angle": False, "within_11.25": True,
                          "within_22.5": True, "within_30": True}


def test_per_batch_averaging_of_depth_and_normals_by_hand():
    """``metric_average=per_batch`` (MTAN / Nash-MTL): each batch's value, then their mean.

    Depth: batch 1 has one valid pixel (|error| 4, relative 4/2 = 2), batch 2 three exact ones:
    pooled abs 4/4 = 1 and rel 2/4 = 0.5; per batch (4 + 0)/2 = 2 and (2 + 0)/2 = 1.
    Normals: batch 1 one valid angle 40 (+ an invalid pixel), batch 2 angles 0, 10, 20, 50.
    Pooled over {0, 10, 20, 40, 50}: mean 24, median 20, within 11.25 / 22.5 / 30: 2/5, 3/5, 3/5.
    Per batch: batch values (40, 20) mean 30; medians (40, 15) -> 27.5 (15: numpy's median of
    an even count, exact); within (0, 1/2) -> 1/4, (0, 3/4) -> 3/8, (0, 3/4) -> 3/8.
    Segmentation is pooled either way (MTAN's ConfMatrix).
    """
    problem = build_problem("nyuv2")
    depth = [(torch.tensor([6.0, 9.0]).view(1, 1, 1, 2), torch.tensor([2.0, 0.0]).view(1, 1, 1, 2)),
             (torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 1, 3), torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 1, 3))]
    normal = [(as_map([unit(40, 10), unit(3)]), as_map([unit(0), [0.0, 0.0, 0.0]])),
              (as_map([unit(0), unit(10, 90), unit(30, 200), unit(50, 45)]),
               as_map([unit(0), unit(0), unit(10, 200), unit(0)]))]
    seg = (torch.randn(1, 13, 1, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([[[0, 1, 1, -1]]]))
    batches = [
        ({"segmentation": seg[0], "depth": d[0], "normal": n[0]},
         {"segmentation": seg[1], "depth": d[1], "normal": n[1]})
        for d, n in zip(depth, normal)
    ]

    def run(average):
        acc = problem.new_metrics({"metric_average": average})
        for out, tgt in batches:
            acc.update(out, tgt)
        return acc.compute()

    pooled, by_batch = run("pooled"), run("per_batch")
    assert pooled["depth"] == {"abs_err": pytest.approx(1.0), "rel_err": pytest.approx(0.5)}
    assert by_batch["depth"] == {"abs_err": pytest.approx(2.0), "rel_err": pytest.approx(1.0)}
    assert pooled["normal"]["mean_angle"] == pytest.approx(24.0, abs=1e-4)
    assert pooled["normal"]["median_angle"] == pytest.approx(20.0, abs=ANGLE_BIN)
    assert [pooled["normal"][f"within_{t}"] for t in ("11.25", "22.5", "30")] == pytest.approx([0.4, 0.6, 0.6])
    assert by_batch["normal"]["mean_angle"] == pytest.approx(30.0, abs=1e-4)
    assert by_batch["normal"]["median_angle"] == pytest.approx(27.5, abs=1e-4)  # exact, not a histogram bin
    assert [by_batch["normal"][f"within_{t}"] for t in ("11.25", "22.5", "30")] == pytest.approx([0.25, 0.375, 0.375])
    assert by_batch["segmentation"] == pooled["segmentation"]
    # the default is LibMTL's pooling
    assert run(problem.defaults["metric_average"]) == pooled and problem.new_metrics().compute() is not None


def test_batch_median_is_numpys_median():
    g = torch.Generator().manual_seed(1)
    for n in (7, 8):
        gt, pred = torch.randn(1, 3, 1, n, generator=g), torch.randn(1, 3, 1, n, generator=g)
        exact = float(np.median(normal_angles(pred, gt).numpy()))
        assert batch_median_angle(pred, gt) == pytest.approx(exact, abs=1e-9)
    assert batch_median_angle(as_map([unit(5)]), as_map([[0.0, 0.0, 0.0]])) is None


def test_metric_average_of_the_presets_and_bad_values():
    from spaces import get_space
    from trainables.config import resolve

    problem = build_problem("nyuv2")
    for name, expected in (("nyuv2", "pooled"), ("nyuv2_r50", "pooled"), ("nyuv2_mtan", "per_batch")):
        space = get_space(name)
        defaults = build_problem(space.problem, space.problem_options).defaults
        config = resolve({**space.constants, "method": "ew"}, defaults)
        assert config["metric_average"] == expected, name
    assert "metric_average" not in get_space("nyuv2_mtan").common  # a constant of the preset, never searched
    with pytest.raises(ConfigError, match="^metric_average must be one of pooled, per_batch, got 'mean'$"):
        problem.new_metrics({"metric_average": "mean"})
    with pytest.raises(ConfigError, match="metric_average"):
        problem.prepare(None, {"metric_average": "batch"})  # before looking for data


def test_cli_bad_metric_average_is_one_line(tmp_path, capsys):
    from searcher.cli import main

    rc = main(["train", "--space", "nyuv2_mtan", "--method", "ew", "--data-dir", str(tmp_path), "--max-epochs", "1",
               "--param", "metric_average=median", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "metric_average must be one of pooled, per_batch" in err


def test_runs_of_the_two_averagings_are_never_seeds_of_one_configuration():
    """metric_average is a logged param and a problem option: the report keeps runs of the two
    averagings in different comparable groups and never averages them as seeds."""
    from mlflow.entities import Param, Run, RunData, RunInfo

    from analysis.report import experiment_problem
    from searcher.run_record import SEED_PARAMS, from_run
    from spaces import get_space
    from trainables.config import run_params

    space = get_space("nyuv2_mtan")
    problem = build_problem(space.problem, space.problem_options)
    info = experiment_problem(["nyuv2_mtan"])
    assert "metric_average" in info.option_keys and "metric_average" not in SEED_PARAMS
    records = []
    for average in ("per_batch", "pooled"):
        params = run_params({**space.constants, "method": "ew", "seed": 1, "metric_average": average}, problem.defaults)
        run = Run(RunInfo(run_id=average, experiment_id="1", user_id="", status="FINISHED", start_time=0, end_time=0,
                          lifecycle_stage="active", run_name=average),
                  RunData(params=[Param(k, str(v)) for k, v in params.items()]))
        records.append(from_run(run))
    per_batch_run, pooled_run = records
    assert per_batch_run.params["metric_average"] == "per_batch"
    assert per_batch_run.configuration_key() != pooled_run.configuration_key()
    key, other = info.key(per_batch_run), info.key(pooled_run)
    assert key != other and "metric_average=per_batch" in key.describe()
    assert key.differences(other) == ["metric_average=pooled (not per_batch)"]


def test_trainer_evaluates_with_the_runs_metric_average(tiny):
    """The trainer's accumulator follows the run's config: its test metrics are the per-batch
    means of the same model's outputs (2 test images, batch 1)."""
    from trainables.problems.nyuv2 import averaged_metrics
    from trainables.trainer import Trainer

    root, _ = tiny
    problem = build_problem("nyuv2")
    config = {"method": "ew", "height": 32, "width": 48, "num_workers": 0, "segnet_filters": "4,4,8,8,8",
              "batch_size": 1, "metric_average": "per_batch", "augment": False}
    trainer = Trainer(problem, config, problem.prepare(str(root), config))
    got = trainer.evaluate("test")
    accs = {a: MetricAccumulator(averaged_metrics(a)) for a in ("pooled", "per_batch")}
    trainer.model.eval()
    with torch.no_grad():
        for batch in trainer.splits.test:
            inputs, targets = trainer.to_device(batch)
            outputs = trainer.forward(trainer.model, inputs)
            for acc in accs.values():
                acc.update(outputs, targets)
    want, pooled = accs["per_batch"].compute(), accs["pooled"].compute()
    assert got["normal"]["median_angle"] == pytest.approx(want["normal"]["median_angle"], abs=1e-9)
    assert got["normal"]["median_angle"] != pooled["normal"]["median_angle"]  # exact per batch vs a bin centre
    assert got["depth"] == pytest.approx(want["depth"]) and got["segmentation"] == pytest.approx(pooled["segmentation"])


def test_angles_are_exact_at_0_and_180_and_odd_median():
    gt = as_map([unit(0), unit(0), unit(0)])
    angles = normal_angles(as_map([unit(0), [0.0, 0.0, -1.0], unit(7)]), gt)
    assert angles[0].item() == 0.0 and angles[1].item() == 180.0  # no acos rounding at the ends
    assert angles[2].item() == pytest.approx(7.0, abs=1e-5)  # float32 input vectors
    m = evaluate(NORMAL_METRICS, [(as_map([unit(5), unit(7), unit(40)]), gt)])
    assert m["median_angle"] == pytest.approx(7.0, abs=ANGLE_BIN)


def test_histogram_median_is_within_half_a_bin_of_numpy_over_a_split():
    g = torch.Generator().manual_seed(0)
    for n in (1000, 1001):
        gt = torch.randn(1, 3, 1, n, generator=g)
        pred = torch.randn(1, 3, 1, n, generator=g)
        exact = float(np.median(normal_angles(pred, gt).numpy()))
        batches = [(pred[..., :300], gt[..., :300]), (pred[..., 300:], gt[..., 300:])]
        value = evaluate(NORMAL_METRICS[1:2], batches)["median_angle"]
        assert abs(value - exact) <= ANGLE_BIN / 2 + 1e-9
    assert math.isnan(histogram_median(torch.zeros(10), 0.0))


def test_kpis_are_batch_accuracies():
    problem = build_problem("nyuv2")
    pred = torch.tensor([1.0, 2.0, 0.5, 9.0]).view(1, 1, 1, 4)
    target = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 4)
    assert depth_delta1(pred, target) == pytest.approx(1 / 3)  # ratios 1, 2, 2; last pixel invalid
    gt = as_map([unit(0), unit(0)])
    assert problem.kpi("normal", as_map([unit(5), unit(12)]), gt) == pytest.approx(0.5)


def test_score_is_delta_m_against_the_003_references():
    problem = build_problem("nyuv2")
    ref = {t.name: dict(t.reference) for t in problem.tasks}
    assert ref["segmentation"]["miou"] == 0.3922 and ref["normal"]["median_angle"] == 18.49  # `003` Table A5
    assert problem.score(ref, problem.task_names) == pytest.approx(0.0)
    better = {t: dict(v) for t, v in ref.items()}
    better["segmentation"]["miou"] *= 1.1  # +10 % on one of 2 metrics of 1 of 3 tasks
    assert problem.score(better, problem.task_names) == pytest.approx(10 / 2 / 3)
    deeplab = build_problem("nyuv2", {"model": "resnet50_deeplab"})
    assert deeplab.tasks[0].reference["miou"] == 0.5517  # `003` Table A6


# --------------------------------------------------------------------------- models


def check_forward_backward(model, size) -> None:
    x = torch.rand(2, 3, *size)
    out = model(x)
    assert out["segmentation"].shape == (2, 13, *size)
    assert out["depth"].shape == (2, 1, *size) and out["normal"].shape == (2, 3, *size)
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(2, *size), atol=1e-5)
    problem = build_problem("nyuv2")
    targets = {"segmentation": torch.randint(-1, 13, (2, *size)), "depth": torch.rand(2, 1, *size),
               "normal": torch.nn.functional.normalize(torch.randn(2, 3, *size), dim=1)}
    sum(problem.loss(t, out[t], targets[t]) for t in out).backward()
    assert all(p.grad is not None for p in model.shared_parameters())
    assert all(p.grad is not None for p in model.heads.parameters())


def test_segnet_split_is_mtans_encoder_decoder():
    enc = SegNetEncoderDecoder((4, 4, 8, 8, 8))
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 26  # 13 encoder convs (VGG-16's 2-2-3-3-3) mirrored by 13 decoder convs
    assert enc(torch.rand(1, 3, 40, 56)).shape == (1, 4, 40, 56)  # z: last decoder map, any H, W >= 32
    full = SegNetEncoderDecoder()
    assert full.encoder_block[4][0].out_channels == 512 and full.out_channels == 64


def test_segnet_forward_backward_at_tiny_resolution():
    problem = build_problem("nyuv2")
    model = problem.build_model({**problem.defaults, "segnet_filters": "4,4,8,8,8"})
    assert model.encode(torch.rand(2, 3, 32, 48)).shape == (2, 4, 32, 48)
    check_forward_backward(model, (32, 48))


@pytest.mark.parametrize("name", ["resnet18_deeplab", "resnet50_deeplab"])
def test_resnet_deeplab_forward_backward_at_tiny_resolution(name):
    problem = build_problem("nyuv2", {"model": name})
    model = problem.build_model({**problem.defaults, "height": 32, "width": 40})
    assert model.encode(torch.rand(2, 3, 32, 40)).shape[-2:] == (4, 5)  # output stride 8
    check_forward_backward(model, (32, 40))


def test_bad_options_are_one_line_config_errors():
    problem = build_problem("nyuv2")
    with pytest.raises(ConfigError, match="height"):
        problem.build_model({**problem.defaults, "height": "tiny"})
    with pytest.raises(ConfigError, match="width must be at least 32"):
        problem.build_model({**problem.defaults, "width": 16})
    with pytest.raises(ConfigError, match="pretrained"):
        problem.build_model({**problem.defaults, "pretrained": "true"})
    with pytest.raises(ConfigError, match="unknown NYUv2 model"):
        build_problem("nyuv2", {"model": "vgg"})


# --------------------------------------------------------------------------- data errors and CLI


def test_missing_or_malformed_data_is_a_data_error(tmp_path):
    problem = build_problem("nyuv2")
    with pytest.raises(DataError, match="--data-dir"):
        problem.prepare(None, problem.defaults)
    root = tmp_path / "bad"
    write_mtan(root, n_train=2, n_val=1)
    (root / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(DataError, match="depth"):
        problem.prepare(str(root), problem.defaults)
    np.save(root / "train" / "depth" / "1.npy", np.zeros((H, W, 1)))
    np.save(root / "val" / "label" / "0.npy", np.zeros((H, W, 1)))
    with pytest.raises(DataError, match="shape"):
        problem.prepare(str(root), problem.defaults)


def test_cli_train_runs_one_epoch_and_logs_test_metrics(tiny, tmp_path, capsys):
    import mlflow

    from searcher.cli import main

    root, _ = tiny
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rc = main(["train", "--space", "nyuv2", "--method", "ew", "--data-dir", str(root), "--max-epochs", "1",
               *TINY, "--tracking-uri", uri])
    assert rc == 0
    assert "test normal/median_angle" in capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["nyuv2"]).iloc[0]
    for key in ("segmentation/miou", "depth/rel_err", "normal/within_30"):
        assert not math.isnan(run[f"metrics.best/test/{key}"])


def test_cli_without_data_says_where_to_get_it(tmp_path, capsys):
    from searcher.cli import main

    rc = main(["train", "--space", "nyuv2", "--method", "ew", "--data-dir", str(tmp_path / "none"),
               "--max-epochs", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("searcher: error: NYUv2 not found") and "nyuv2.zip" in err and "--data-dir" in err


# --------------------------------------------------------------------------- SegNet + MTAN


def reference_mtan_parameters(f=(64, 128, 256, 512, 512), classes=13) -> int:
    """The parameters of lorenmt/mtan's ``model_segnet_mtan.SegNet``, counted from its layer lists."""
    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    def conv_layer(cin, cout):  # 3x3 conv + BN
        return conv(cin, cout, 3) + 2 * cout

    def att_layer(c0, c1, c2):  # 1x1 conv + BN + 1x1 conv + BN
        return conv(c0, c1, 1) + 2 * c1 + conv(c1, c2, 1) + 2 * c2

    n = conv_layer(3, f[0]) + conv_layer(f[0], f[0])  # encoder_block, decoder_block
    n += sum(conv_layer(f[i], f[i + 1]) + conv_layer(f[i + 1], f[i]) for i in range(4))
    n += 2 * conv_layer(f[0], f[0])  # conv_block_enc, conv_block_dec
    n += conv_layer(f[1], f[1]) + conv_layer(f[0], f[0])
    n += sum(2 * conv_layer(f[i + 1], f[i + 1]) + 2 * conv_layer(f[i], f[i]) for i in range(1, 4))
    n += 3 * (att_layer(f[0], f[0], f[0]) + att_layer(2 * f[0], f[0], f[0]))  # encoder_att, decoder_att
    n += 3 * sum(att_layer(2 * f[i + 1], f[i + 1], f[i + 1]) + att_layer(f[i + 1] + f[i], f[i], f[i]) for i in range(4))
    n += conv_layer(f[0], f[1]) + conv_layer(f[0], f[0])  # encoder_block_att, decoder_block_att
    n += sum(conv_layer(f[i + 1], f[i + 2] if i < 3 else f[i + 1]) + conv_layer(f[i + 1], f[i] if i < 3 else f[i + 1])
             for i in range(4))
    n += sum(conv(f[0], f[0], 3) + conv(f[0], c, 1) for c in (classes, 1, 3))  # pred_task1..3
    return n + 3  # logsigma (here: the uw method's own parameters)


def test_segnet_mtan_has_the_reference_architecture():
    """Parameter count equal to the reference model's (less its 3 logsigma), 1.77x the single-task SegNet's 24,981,069
    as MTAN's Table 3 prints (#P 1.77); every attention mask at its stage's width and resolution, in (0, 1)."""
    problem = build_problem("nyuv2", {"model": "segnet_mtan"})
    model = problem.build_model(problem.defaults)
    count = sum(p.numel() for p in model.parameters())
    assert count + 3 == reference_mtan_parameters() == 44_229_076
    assert round((count + 3) / 24_981_069, 2) == 1.77
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in model.encoder.encoder_block_att.parameters())  # shared by the tasks
    assert not any(id(p) in shared for p in model.heads.parameters())

    f = (4, 8, 8, 16, 16)
    small = problem.build_model({**problem.defaults, "segnet_filters": ",".join(map(str, f))})
    assert sum(p.numel() for p in small.parameters()) + 3 == reference_mtan_parameters(f)
    masks: dict[str, tuple] = {}
    head = small.heads["depth"]
    for j in range(5):
        head.encoder_att[j].register_forward_hook(lambda m, i, o, j=j: masks.__setitem__(f"enc{j}", o))
        head.decoder_att[j].register_forward_hook(lambda m, i, o, j=j: masks.__setitem__(f"dec{j}", o))
    small(torch.rand(2, 3, 32, 48))
    for j in range(5):  # stage j at 32x48 / 2^j: encoder masks of width f[j]; decoder masks of the width the
        # decoder stage outputs, f[j - 1] (f[0] at the first stage), as the reference's decoder_att
        for kind, width in (("enc", f[j]), ("dec", f[max(j - 1, 0)])):
            mask = masks[f"{kind}{j}"]
            assert tuple(mask.shape) == (2, width, 32 >> j, 48 >> j), (kind, j)
            assert 0 < mask.min() and mask.max() < 1
    check_forward_backward(small, (32, 48))


def test_segnet_mtan_trains_through_the_cli_with_a_gradient_method(tiny, tmp_path):
    from searcher.cli import main

    root, _ = tiny
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["train", "--space", "nyuv2_mtan", "--method", "cagrad", "--data-dir", str(root), "--max-epochs", "1",
                 *TINY, "--tracking-uri", uri]) == 0
