"""Cityscapes: both on-disk layouts written here in their real formats, label / disparity /
instance encodings checked by hand, every configuration's model, the spaces and the CLI."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from searcher.cli import main
from spaces import SPACES
from trainables.errors import ConfigError, DataError
from trainables.problems import build_problem
from trainables.problems.cityscapes import (
    DISPARITY,
    INSTANCE,
    SEGMENTATION,
    VARIANTS,
    NpyCityscapes,
    OfficialCityscapes,
    decode_disparity,
    encode_labels,
    even_batches,
    instance_offsets,
    locate,
    resize_nearest,
    split_indices,
)
from trainables.problems.dense_models import IMAGENET_MEAN, IMAGENET_STD

H, W = 16, 32  # raw frame size of the tiny official data set
NAN = math.nan


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the network (ImageNet weights are never fetched)."""
    monkeypatch.setenv("SEARCHER_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------- tiny data


def frame_arrays(k: int) -> dict[str, np.ndarray]:
    """One synthetic frame: label ids, instance ids, raw 16-bit disparity, RGB image.

    Rows 0-7: sky (23); rows 8-15: road (7); a car instance 26000 + k at rows 2-3, cols 4-6;
    a one-pixel car instance 26001 at (10, 20); a car crowd region (id 26, no instance) at
    (12, 0..1); a caravan instance 29000 (not evaluated) at (14, 30); parking (9) at (15, 31);
    unlabeled (0) at (0, 0). Disparity: 257 (= 1 px) on the top half, 513 (= 2 px) on the
    bottom half, 0 (invalid) in column 0, 1 (= 0 px) at (5, 5).
    """
    labels = np.full((H, W), 23, np.uint8)
    labels[8:] = 7
    inst = labels.astype(np.uint16).copy()
    labels[2:4, 4:7] = 26
    inst[2:4, 4:7] = 26000 + k
    labels[10, 20] = 26
    inst[10, 20] = 26001 if k == 0 else 26000 + k + 1
    labels[12, 0:2] = 26
    inst[12, 0:2] = 26
    labels[14, 30] = 29
    inst[14, 30] = 29000
    labels[15, 31] = 9
    inst[15, 31] = 9
    labels[0, 0] = 0
    inst[0, 0] = 0
    disp = np.full((H, W), 257, np.uint16)
    disp[8:] = 513
    disp[:, 0] = 0
    disp[5, 5] = 1
    rng = np.random.default_rng(k)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return {"labels": labels, "instances": inst, "disparity": disp, "image": image}


def write_official(root: Path, n_train: int = 5, n_val: int = 2) -> Path:
    """leftImg8bit/, gtFine/ and disparity/ PNGs as on cityscapes-dataset.com."""
    for split, city, n in (("train", "aachen", n_train), ("val", "frankfurt", n_val)):
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            a = frame_arrays(k)
            for folder, suffix, array in (
                ("leftImg8bit", "leftImg8bit", a["image"]),
                ("gtFine", "gtFine_labelIds", a["labels"]),
                ("gtFine", "gtFine_instanceIds", a["instances"]),
                ("disparity", "disparity", a["disparity"]),
            ):
                d = root / folder / split / city
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(d / f"{stem}_{suffix}.png")
    return root


def write_npy(root: Path, n_train: int = 5, n_val: int = 2, h: int = 16, w: int = 32) -> Path:
    """MTAN's preprocessed layout: {train,val}/{image,label_7,label_19,depth}/{i}.npy."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            label_19 = rng.integers(-1, 19, (h, w)).astype(np.float32)
            label_7 = rng.integers(-1, 7, (h, w)).astype(np.float32)
            depth = rng.uniform(0.0, 1.0, (h, w, 1)).astype(np.float32)
            depth[0, :, 0] = 0.0
            for name, array in (
                ("image", rng.uniform(0.0, 1.0, (h, w, 3)).astype(np.float32)),
                ("label_7", label_7),
                ("label_19", label_19),
                ("depth", depth),
            ):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                np.save(root / split / name / f"{i}.npy", array)
    return root


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x * std + mean


# ----------------------------------------------------------------------------- encodings


def test_label_ids_map_to_train_ids_and_categories():
    ids = torch.tensor([7, 8, 11, 17, 21, 23, 24, 26, 33, 0, 9, 29, 255])
    # road sidewalk building pole vegetation sky person car bicycle | unlabeled parking caravan (ignored)
    assert encode_labels(ids, 19).tolist() == [0, 1, 2, 5, 8, 10, 11, 13, 18, -1, -1, -1, -1]
    # flat flat construction object nature sky human vehicle vehicle
    assert encode_labels(ids, 7).tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 6, -1, -1, -1, -1]
    with pytest.raises(ConfigError):
        encode_labels(ids, 8)


def test_disparity_decoding():
    raw = torch.tensor([0, 1, 257, 513, 65535])
    assert decode_disparity(raw).tolist() == [0.0, 0.0, 1.0, 2.0, pytest.approx(65534 / 256)]
    assert decode_disparity(raw, scale=0.125).tolist()[2:4] == [0.125, 0.25]


def test_instance_offsets_to_the_centroid_by_hand():
    ids = torch.tensor(
        [
            [7, 26005, 26005, 26005],
            [7, 26005, 26005, 26005],
            [26, 26, 29001, 24000],
        ]
    )
    off = instance_offsets(ids)
    assert off.shape == (2, 3, 4)
    # car 26005: rows 0-1, cols 1-3 -> centroid (0.5, 2); offset = centroid - pixel
    assert off[:, 0, 1].tolist() == [0.5, 1.0]
    assert off[:, 1, 3].tolist() == [-0.5, -1.0]
    assert off[:, 0, 2].tolist() == [0.5, 0.0]
    # a one-pixel person instance points at itself
    assert off[:, 2, 3].tolist() == [0.0, 0.0]
    # road, a car crowd (id 26 < 1000) and a caravan (not an evaluated class): no instance
    for r, c in ((0, 0), (2, 0), (2, 1), (2, 2)):
        assert torch.isnan(off[:, r, c]).all()
    # offsets of one instance sum to zero (the centroid is their mean)
    assert off[:, :2, 1:].sum(dim=(1, 2)).abs().max() < 1e-6
    # as the `002` code counts them: the car crowd (2, 0)-(2, 1) is one instance, centroid (2, 0.5); the rest alike
    crowd = instance_offsets(ids, crowd=True)
    assert crowd[:, 2, 0].tolist() == [0.0, 0.5] and crowd[:, 2, 1].tolist() == [0.0, -0.5]
    assert torch.isnan(crowd[:, 0, 0]).all() and torch.isnan(crowd[:, 2, 2]).all()
    assert torch.equal(crowd[:, :2].nan_to_num(99.0), off[:, :2].nan_to_num(99.0)) and torch.equal(crowd[:, 2, 3], off[:, 2, 3])


# ----------------------------------------------------------------------------- official layout


def test_official_layout_sample_by_hand(tmp_path):
    root = write_official(tmp_path / "city")
    tasks = (SEGMENTATION, DISPARITY, INSTANCE)
    ds = OfficialCityscapes(str(root), "train", None, (H, W), 19, tasks)
    assert len(ds) == 5
    image, t = ds[0]
    a = frame_arrays(0)
    assert image.shape == (3, H, W) and set(t) == set(tasks)
    assert torch.allclose(unnormalize(image), torch.from_numpy(a["image"]).permute(2, 0, 1).float() / 255, atol=1e-5)
    seg = t[SEGMENTATION]
    assert seg.shape == (H, W) and seg.dtype == torch.long
    assert seg[1, 1] == 10 and seg[9, 1] == 0 and seg[2, 4] == 13  # sky, road, car
    assert seg[0, 0] == -1 and seg[15, 31] == -1 and seg[14, 30] == -1  # unlabeled, parking, caravan
    disp = t[DISPARITY]
    assert disp.shape == (1, H, W)
    assert disp[0, 1, 1] == 1.0 and disp[0, 9, 1] == 2.0 and disp[0, 3, 0] == 0.0 and disp[0, 5, 5] == 0.0
    inst = t[INSTANCE]
    assert inst.shape == (2, H, W)
    # car rows 2-3, cols 4-6: centroid (2.5, 5)
    assert inst[:, 2, 4].tolist() == [0.5, 1.0] and inst[:, 3, 6].tolist() == [-0.5, -1.0]
    assert inst[:, 10, 20].tolist() == [0.0, 0.0]
    assert torch.isnan(inst[:, 12, 0]).all() and torch.isnan(inst[:, 14, 30]).all() and torch.isnan(inst[:, 1, 1]).all()
    # 7 categories from the same frame
    seg7 = OfficialCityscapes(str(root), "train", None, (H, W), 7, (SEGMENTATION,))[0][1][SEGMENTATION]
    assert seg7[1, 1] == 4 and seg7[9, 1] == 0 and seg7[2, 4] == 6 and seg7[0, 0] == -1


def test_official_layout_resizes_with_nearest_and_rescales_disparity(tmp_path):
    root = write_official(tmp_path / "city")
    ds = OfficialCityscapes(str(root), "train", None, (8, 16), 19, (SEGMENTATION, DISPARITY, INSTANCE))
    image, t = ds[1]
    assert image.shape == (3, 8, 16) and t[SEGMENTATION].shape == (8, 16)
    assert t[DISPARITY].shape == (1, 8, 16) and t[INSTANCE].shape == (2, 8, 16)
    # nearest neighbour: only labels of the frame occur, no blends
    assert set(t[SEGMENTATION].unique().tolist()) <= {-1, 0, 10, 13}
    # disparity is in pixels of the new width: halved (1 px -> 0.5, 2 px -> 1); never blended with 0
    assert set(t[DISPARITY].unique().tolist()) <= {0.0, 0.5, 1.0}
    assert t[DISPARITY][0, 0, 5] == 0.5 and t[DISPARITY][0, 7, 5] == 1.0
    # offsets are computed on the resized instance map, in pixels of the new size
    ids = resize_nearest(torch.from_numpy(frame_arrays(1)["instances"].astype(np.int32)), (8, 16))
    inst = t[INSTANCE]
    assert torch.isfinite(inst).any()
    assert torch.equal(torch.nan_to_num(inst, 99.0), torch.nan_to_num(instance_offsets(ids), 99.0))
    for i in ids[(ids >= 26000) & (ids < 27000)].unique():  # the cars (the caravan is no instance)
        assert inst[:, ids == i].sum(dim=1).abs().max() < 1e-5  # offsets of an instance sum to 0


def test_augmentation_keeps_targets_consistent(tmp_path):
    root = write_official(tmp_path / "city")
    ds = OfficialCityscapes(str(root), "train", None, (H, W), 19, (SEGMENTATION, DISPARITY, INSTANCE), augment=True)
    torch.manual_seed(3)
    for i in range(5):
        image, t = ds[i]
        seg, disp, inst = t[SEGMENTATION], t[DISPARITY][0], t[INSTANCE]
        assert set(seg.unique().tolist()) <= {-1, 0, 10, 13}
        assert set(disp.unique().tolist()) <= {0.0, 1.0, 2.0}
        # sky (class 10) has disparity 1 px, road (class 0) 2 px, wherever rotation / flip moved them
        assert (disp[(seg == 10) & (disp > 0)] == 1.0).all() and (disp[(seg == 0) & (disp > 0)] == 2.0).all()
        # instance pixels are car pixels
        assert (seg[torch.isfinite(inst[0])] == 13).all()


def test_official_cache_returns_the_same_samples(tmp_path):
    root = write_official(tmp_path / "city")
    tasks = (SEGMENTATION, DISPARITY, INSTANCE)
    plain = OfficialCityscapes(str(root), "val", None, (8, 16), 19, tasks)
    cached = OfficialCityscapes(str(root), "val", None, (8, 16), 19, tasks, cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # first read writes the cache, the second reads it
        for i in range(len(plain)):
            (x1, t1), (x2, t2) = plain[i], cached[i]
            assert torch.equal(x1, x2)
            for k in tasks:
                assert torch.equal(torch.nan_to_num(t1[k], 99.0), torch.nan_to_num(t2[k], 99.0))
    assert len(list((tmp_path / "cache" / "val").glob("*.npz"))) == 2


def test_splits_are_fixed_and_disjoint(tmp_path):
    train, val = split_indices(10, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert sorted(train + val) == list(range(10))
    assert split_indices(10, 0.2, seed=0) == (train, val)
    assert split_indices(10, 0.2, seed=1) != (train, val)
    # at least 2 validation frames (a batch of one cannot pass BatchNorm in train mode)
    assert [len(v) for _, v in (split_indices(n, 0.2, 0) for n in (4, 5, 12))] == [2, 2, 2]
    with pytest.raises(DataError):
        split_indices(3, 0.2, seed=0)
    for n, bs in ((33, 32), (595, 32), (5, 2), (7, 3), (4, 4)):
        batches = even_batches(n, bs)
        assert sum(batches, []) == list(range(n))
        assert min(len(b) for b in batches) >= 2 and max(len(b) for b in batches) - min(len(b) for b in batches) <= 1

    root = write_official(tmp_path / "city")
    problem = build_problem("cityscapes", {"variant": "19c"})
    data = problem.prepare(str(root), problem.defaults)
    assert data["layout"] == "official"
    config = {**problem.defaults, "height": 8, "width": 16, "num_workers": 0, "batch_size": 2}
    problem = problem.resolved(data, config)
    splits = problem.load(data, config, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert splits.sizes == {"train": 3, "val": 2, "test": 2}
    assert "test = official val" in splits.source
    inputs, targets = next(iter(splits.train))
    assert inputs.shape == (2, 3, 8, 16)
    assert targets[SEGMENTATION].shape == (2, 8, 16) and targets[DISPARITY].shape == (2, 1, 8, 16)
    assert targets[INSTANCE].shape == (2, 2, 8, 16)
    # validation frames are train frames not trained on; test frames come from val/
    val_inputs = torch.cat([x for x, _ in splits.val])
    train_inputs = torch.cat([x for x, _ in problem.load(data, {**config, "augment": "false"}, torch.Generator(), torch.device("cpu")).train])
    assert not any(torch.equal(v, t) for v in val_inputs for t in train_inputs)


# ----------------------------------------------------------------------------- npy layout


def test_npy_layout_samples_and_split(tmp_path):
    root = write_npy(tmp_path / "npy")
    ds = NpyCityscapes(str(root), "train", [2], (16, 32), 19, (SEGMENTATION, DISPARITY))
    image, t = ds[0]
    raw_image = np.load(root / "train" / "image" / "2.npy")
    raw_label = np.load(root / "train" / "label_19" / "2.npy")
    raw_depth = np.load(root / "train" / "depth" / "2.npy")
    assert torch.allclose(unnormalize(image), torch.from_numpy(raw_image).permute(2, 0, 1), atol=1e-5)
    assert torch.equal(t[SEGMENTATION], torch.from_numpy(raw_label).long())
    assert (t[SEGMENTATION] == -1).any()
    assert torch.equal(t[DISPARITY], torch.from_numpy(raw_depth).permute(2, 0, 1))
    seg7 = NpyCityscapes(str(root), "train", [2], (16, 32), 7, (SEGMENTATION,))[0][1][SEGMENTATION]
    assert torch.equal(seg7, torch.from_numpy(np.load(root / "train" / "label_7" / "2.npy")).long())
    # downsampling picks stored values (nearest), keeping 0 = invalid depth
    _, small = NpyCityscapes(str(root), "train", [2], (8, 16), 19, (SEGMENTATION, DISPARITY))[0]
    assert small[DISPARITY].shape == (1, 8, 16)
    assert set(small[DISPARITY].flatten().tolist()) <= set(raw_depth.flatten().tolist())
    with pytest.raises(ConfigError, match="instance"):
        NpyCityscapes(str(root), "train", None, (16, 32), 7, (SEGMENTATION, DISPARITY, INSTANCE))

    problem = build_problem("cityscapes", {"variant": "r18"})
    data = problem.prepare(str(root), problem.defaults)
    assert data["layout"] == "npy"
    config = {**problem.defaults, "height": 16, "width": 32, "num_workers": 0, "batch_size": 2}
    splits = problem.resolved(data, config).load(data, config, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert splits.sizes == {"train": 3, "val": 2, "test": 2}
    assert "test = npy val" in splits.source
    larger = {**config, "height": 32, "width": 64}
    with pytest.raises(ConfigError, match="official layout"):
        problem.resolved(data, larger).load(data, larger, torch.Generator(), torch.device("cpu"))
    # configurations with instances refuse the npy layout in one line
    inst = build_problem("cityscapes", {"variant": "inst"})
    with pytest.raises(ConfigError, match="instance"):
        inst.prepare(str(root), inst.defaults)


def test_locate_finds_layouts_and_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHER_DATA", str(tmp_path / "nothing"))
    monkeypatch.delenv("SEARCHER_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="cityscapes-dataset.com") as err:
        locate(None, "auto")
    assert "\n" not in str(err.value) and "--data-dir" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        locate(str(tmp_path / "missing"), "auto")
    write_npy(tmp_path / "nothing" / "cityscapes")
    assert locate(None, "auto")[1] == "npy"
    with pytest.raises(DataError):
        locate(None, "official")
    write_official(tmp_path / "d" / "cityscapes")
    monkeypatch.setenv("SEARCHER_DATA_DIR", str(tmp_path / "d" / "cityscapes"))
    assert locate(None, "auto")[1] == "official"
    assert locate(str(tmp_path / "d"), "auto") == ((tmp_path / "d" / "cityscapes").resolve(), "official")


def test_official_layout_without_disparity_names_the_archive(tmp_path):
    root = write_official(tmp_path / "city")
    for png in (root / "disparity" / "val").rglob("*.png"):
        png.unlink()
    (root / "disparity" / "val" / "frankfurt").rmdir()
    (root / "disparity" / "val").rmdir()
    problem = build_problem("cityscapes", {"variant": "r50"})
    with pytest.raises(DataError, match="disparity_trainvaltest.zip"):
        problem.prepare(str(root), problem.defaults)


# ----------------------------------------------------------------------------- models


def test_pretrained_weights_are_opt_in_and_never_fetched_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    problem = build_problem("cityscapes", {"variant": "r18"})
    assert problem.defaults["pretrained"] == "false"
    with pytest.raises(ConfigError, match="pretrained"):
        problem.build_model({**problem.defaults, "pretrained": "true"})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_configuration_trains_one_step(variant):
    problem = build_problem("cityscapes", {"variant": variant})
    spec = VARIANTS[variant]
    config = {**problem.defaults, "height": 16, "width": 32}
    model = problem.build_model(config)
    assert type(model.encoder.layer1[0]).__name__ == ("Bottleneck" if spec.backbone == "resnet50" else "BasicBlock")
    assert list(model.heads) == list(spec.tasks) == problem.task_names
    x = torch.randn(2, 3, 16, 32)
    z = model.encode(x)
    assert z.shape == (2, 2048 if spec.backbone == "resnet50" else 512, 2, 4)  # output stride 8
    out = model.decode(z)
    assert out[SEGMENTATION].shape == (2, spec.num_classes, 16, 32)
    assert out[DISPARITY].shape == (2, 1, 16, 32)
    targets = {
        SEGMENTATION: torch.randint(-1, spec.num_classes, (2, 16, 32)),
        DISPARITY: torch.rand(2, 1, 16, 32),
        INSTANCE: torch.where(torch.rand(2, 1, 16, 32) < 0.5, torch.randn(2, 2, 16, 32), torch.tensor(NAN)),
    }
    if INSTANCE in spec.tasks:
        assert out[INSTANCE].shape == (2, 2, 16, 32)
    losses = torch.stack([problem.loss(t, out[t], targets[t]) for t in spec.tasks])
    assert torch.isfinite(losses).all()
    losses.sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert problem.kpi(SEGMENTATION, out[SEGMENTATION], targets[SEGMENTATION]) is not None
    assert problem.kpi(DISPARITY, out[DISPARITY], targets[DISPARITY]) is None
    # the spaces keep the paper's resolutions
    assert (problem.defaults["height"], problem.defaults["width"]) == (spec.height, spec.width)


def test_spaces_follow_002():
    expected = {"r50": (128, 256, 7, 2), "r18": (128, 256, 7, 2), "inst": (128, 256, 7, 3), "hr": (256, 512, 7, 3), "19c": (256, 512, 19, 3)}
    for variant, (h, w, k, n_tasks) in expected.items():
        space = SPACES.get(f"cityscapes_{variant}")
        problem = build_problem(space.problem, space.problem_options)
        assert (problem.defaults["height"], problem.defaults["width"]) == (h, w)
        assert problem.spec.num_classes == k and len(problem.tasks) == n_tasks
        assert space.common["lr"].grid == (0.005, 0.001, 0.0005, 0.0001) and space.common["lr"].log
        # weight decay 0 has no log scale: the grid is searched as it is
        assert space.common["weight_decay"].grid == (1e-4, 1e-5, 0.0) and not space.common["weight_decay"].continuous
        assert space.constants == {"batch_size": 32, "lr_decay": 0.95, "pretrained": "true"}  # as `002` ran
        assert space.max_epochs == 150
        aux = space.method_ranges("auto_lambda")["aux_lr_scale"]
        assert aux.grid == (100.0, 10.0, 1.0, 0.1, 0.01, 0.001, 0.0001) and (aux.low, aux.high, aux.log) == (0.0001, 100.0, True)
        assert space.method_ranges("cagrad")["c"].grid == (0.2, 0.5, 0.8)
        rotograd = space.method_ranges("rotograd")
        assert rotograd["feature_size"].grid == (512,) and rotograd["aux_lr_scale"].grid == (5.0, 1.0, 0.5, 0.1)
    assert VARIANTS["r50"].backbone == "resnet50" and VARIANTS["19c"].backbone == "resnet18"
    metrics = {t.name: {m.name: m.higher_is_better for m in t.metrics} for t in build_problem("cityscapes", {"variant": "19c"}).tasks}
    assert metrics == {
        SEGMENTATION: {"pixel_acc": True, "miou": True},
        DISPARITY: {"abs_err": False, "rel_err": False},
        INSTANCE: {"l1": False},
    }


# ----------------------------------------------------------------------------- references (issue 15)


def references(problem) -> dict[str, dict[str, float]]:
    return {t.name: dict(t.reference) for t in problem.tasks}


#: The nominal references as they were before issue 15 (read off the problem after ``load``): npy
#: has MTAN's depth references at every width; official disparity (0.4 px at 256 px) and instance
#: offsets (2.5 px at 256 px) scale with the width, 0.4 x 16 / 256 = 0.025 and 2.5 x 16 / 256 = 0.15625.
NPY_R18 = {SEGMENTATION: {"miou": 0.74, "pixel_acc": 0.93}, DISPARITY: {"abs_err": 0.0125, "rel_err": 0.28}}
OFFICIAL_19C_16 = {SEGMENTATION: {"miou": 0.45, "pixel_acc": 0.88}, DISPARITY: {"abs_err": 0.025, "rel_err": 0.2},
                   INSTANCE: {"l1": 0.15625}}


def test_references_are_fixed_when_built_and_load_refuses_other_data(tmp_path):
    """The layout and width the references follow are resolved before the problem is built
    (``resolved``), with the values ``load`` used to set; nothing changes them afterwards."""
    r18 = build_problem("cityscapes", {"variant": "r18"})
    # unresolved: the official layout at the variant's width (256 px: the 256-px references as they are)
    assert references(r18)[DISPARITY] == {"abs_err": 0.4, "rel_err": 0.2}
    assert references(build_problem("cityscapes", {"variant": "19c"}))[INSTANCE] == {"l1": 5.0}  # 2.5 x 512 / 256
    npy_root, official_root = write_npy(tmp_path / "npy"), write_official(tmp_path / "city")
    npy_data = r18.prepare(str(npy_root), r18.defaults)
    for width in (32, 16):  # MTAN's depth references do not scale with the width
        config = {**r18.defaults, "height": 8, "width": width}
        assert references(r18.resolved(npy_data, config)) == NPY_R18
    assert references(r18)[DISPARITY] == {"abs_err": 0.4, "rel_err": 0.2}  # resolving built another problem
    c19 = build_problem("cityscapes", {"variant": "19c"})
    official = c19.prepare(str(official_root), c19.defaults)
    config = {**c19.defaults, "height": 8, "width": 16, "num_workers": 0, "batch_size": 2}
    problem = c19.resolved(official, config)
    assert references(problem) == OFFICIAL_19C_16
    assert references(c19.resolved(official, {"width": 32}))[INSTANCE] == {"l1": 0.3125}  # a config over the defaults
    assert problem.resolved(official, config) is problem  # already determined by this data and config
    with pytest.raises(AttributeError):
        problem.layout = "npy"
    problem.load(official, config, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert references(problem) == OFFICIAL_19C_16 and (problem.layout, problem.width) == ("official", 16)
    # a problem resolved for other data or another width refuses to load rather than score with references no
    # driver saw
    with pytest.raises(ConfigError, match=r"built for official data 16 px wide, not official data 32 px wide"):
        problem.load(official, {**config, "width": 32}, torch.Generator(), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"built for official data 256 px wide, not npy data 32 px.*resolved"):
        r18.load(npy_data, {**r18.defaults, "height": 8, "width": 32}, torch.Generator(), torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown Cityscapes layout 'auto'"):
        build_problem("cityscapes", {"variant": "r18", "layout": "auto"})


@pytest.mark.parametrize("layout", ["npy", "official"])
def test_the_driver_and_a_trial_see_the_same_tasks(tmp_path, layout):
    """A session's problem (the driver's: tasks of the search, NSGA-II's objectives) and the
    problem a trial of the same config trains and scores with have the same references, those of
    the resolved layout and width, before and after the trial's epoch."""
    from searcher.session import open_session, run_config
    from trainables.trial import run_trial

    if layout == "npy":
        root, space, expected = write_npy(tmp_path / "npy"), "cityscapes_r18", NPY_R18
    else:
        root, space, expected = write_official(tmp_path / "city"), "cityscapes_19c", OFFICIAL_19C_16
    params = ["height=8", "width=16", "num_workers=0", "batch_size=2", "pretrained=false", "augment=false"]
    session = open_session(space, ["ew"], params, str(root), 1)
    assert session.settings.data["layout"] == layout
    assert references(session.problem) == expected
    config = run_config(session, "ew", seed=0)
    assert references(session.settings.problem_for(config)) == expected
    trained = []
    last = run_trial(config, session.settings, lambda metrics, trainer: trained.append(trainer))
    assert math.isfinite(last["best/val_score"])
    (trainer,) = [t for t in trained if t is not None]
    assert trainer.problem is not session.problem  # built in the trial, as on a Ray worker
    assert references(trainer.problem) == references(session.problem) == expected
    assert [t.likelihood for t in trainer.problem.tasks] == [t.likelihood for t in session.problem.tasks]


# ----------------------------------------------------------------------------- command line


def test_cli_train_19c_on_tiny_official_data(tmp_path, capsys):
    root = write_official(tmp_path / "city", n_train=5, n_val=2)
    code = main([
        "train", "--space", "cityscapes_19c", "--method", "ew", "--data-dir", str(root), "--max-epochs", "1",
        "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
        "--param", "height=16", "--param", "width=32", "--param", "num_workers=0", "--param", "batch_size=2",
        "--param", "pretrained=false",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "test segmentation/miou" in out and "test instance/l1" in out and "test disparity/abs_err" in out
    assert "data: cityscapes-official" in out


def test_cli_pretrained_weights_missing_offline_is_one_line_on_the_driver(tmp_path, capsys, monkeypatch):
    """The Cityscapes spaces use ImageNet-pretrained encoders as `002`; offline without the weights in the torch hub
    cache the command ends with one line naming the file, the folder and the way out, before any run is logged."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root = write_official(tmp_path / "city", n_train=5, n_val=2)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code = main(["train", "--space", "cityscapes_19c", "--method", "ew", "--data-dir", str(root), "--max-epochs", "1",
                 "--tracking-uri", uri, "--param", "height=16", "--param", "width=32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "resnet18" in err and str(tmp_path / "torch") in err and "--param pretrained=false" in err
    assert not (tmp_path / "m.db").exists() or not MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()])


def test_cli_missing_data_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEARCHER_DATA", str(tmp_path / "none"))
    monkeypatch.delenv("SEARCHER_DATA_DIR", raising=False)
    code = main(["train", "--space", "cityscapes_19c", "--method", "ew", "--max-epochs", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "leftImg8bit_trainvaltest.zip" in err and "disparity_trainvaltest.zip" in err and "--data-dir" in err


def test_source_option_pins_the_layout_the_runs_logged(tmp_path):
    """Reruns and confirmations pin ``layout`` from a run's logged data source (`searcher rerun`)."""
    problem = build_problem("cityscapes", {"variant": "r18"})
    for layout, root in (("npy", write_npy(tmp_path / "npy")), ("official", write_official(tmp_path / "official"))):
        source = problem.prepare(str(root), {"layout": "auto"})["source"]
        pin = problem.source_option(source)
        assert pin == {"layout": layout}
        assert problem.prepare(str(root), pin)["source"] == source
    assert problem.source_option("something-else") == {}


# ----------------------------------------------------------------------------- the `002` authors' split


def test_the_shipped_002_split_lists():
    """2,380 / 595 frames of official train and 500 of official val (`002` §3.3), disjoint."""
    from trainables.problems.cityscapes_split import listed_frames

    train, val, test = (listed_frames(p) for p in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (2380, 595, 500)
    assert len(set(train) | set(val)) == 2975 and len(set(test)) == 500
    assert all(f.startswith("train/") for f in train + val) and all(f.startswith("val/") for f in test)
    assert train[0] == "train/aachen/aachen_000001_000019" and val[0] == "train/aachen/aachen_000000_000019"


def write_lists(directory: Path, parts: dict[str, list[str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for part, frames in parts.items():
        (directory / f"{part}.txt").write_text("# a comment line\n" + "\n".join(frames) + "\n")
    return directory


def test_split_002_selects_exactly_the_listed_frames(tmp_path, monkeypatch):
    from trainables.problems import cityscapes_split
    from trainables.problems.cityscapes_split import frame_id

    lists = {"train": ["train/aachen/aachen_000004_000019", "train/aachen/aachen_000001_000019",
                       "train/aachen/aachen_000002_000019"],
             "val": ["train/aachen/aachen_000000_000019", "train/aachen/aachen_000005_000019"],
             "test": ["val/frankfurt/frankfurt_000002_000019", "val/frankfurt/frankfurt_000000_000019"]}
    monkeypatch.setattr(cityscapes_split, "LISTS", write_lists(tmp_path / "lists", lists))
    root = write_official(tmp_path / "city", n_train=6, n_val=3)  # aachen_000003 and frankfurt_000001 unlisted
    problem = build_problem("cityscapes", {"variant": "19c"})
    data = problem.prepare(str(root), problem.defaults)
    config = {**problem.defaults, "height": 8, "width": 16, "num_workers": 0, "batch_size": 2}
    for split in ("002", "auto"):
        sets, source = problem._datasets(data, {**config, "split": split})
        for part in ("train", "val", "test"):
            assert [frame_id(sets[part].base.images[f]) for f in sets[part].frames] == lists[part], (split, part)
        assert "the `002` authors' split (train 3, val 2 of official train; test 2 of official val)" in source
    sets, source = problem._datasets(data, {**config, "split": "random"})
    assert (len(sets["train"]), len(sets["val"]), len(sets["test"])) == (4, 2, 3) and "seed 0" in source

    # a layout without every listed frame: 002 is a one-line error, auto falls back to the random split
    missing = write_official(tmp_path / "small", n_train=4, n_val=3)
    small = problem.prepare(str(missing), problem.defaults)
    with pytest.raises(DataError, match="lacks some of them"):
        problem._datasets(small, {**config, "split": "002"})
    assert "seed 0" in problem._datasets(small, {**config, "split": "auto"})[1]
    with pytest.raises(ConfigError, match="cityscapes split must be one of auto, 002, random"):
        problem.prepare(str(root), {**problem.defaults, "split": "mine"})
    r50 = build_problem("cityscapes", {"variant": "r50"})  # no instance task: the npy layout serves it
    npy_data = r50.prepare(str(write_npy(tmp_path / "npy")), {**r50.defaults, "layout": "npy"})
    with pytest.raises(ConfigError, match="split=002 names frames of the official layout"):
        r50._datasets(npy_data, {**config, "split": "002"})


def test_crowd_regions_are_instances_by_default_as_002_counts_them(tmp_path):
    """The problem's default (``crowd_instances``): the crowd region of frame_arrays (row 12, columns 0-1, car)
    is one instance in the instance targets, centroid (12, 0.5); ``crowd_instances=false`` leaves it out."""
    root = write_official(tmp_path / "city")
    problem = build_problem("cityscapes", {"variant": "19c"})
    data = problem.prepare(str(root), problem.defaults)
    config = {**problem.defaults, "height": H, "width": W, "num_workers": 0, "augment": "false", "cache": "false"}
    for flag, expected in (("true", [[0.0, 0.0], [0.5, -0.5]]), ("false", None)):
        sets, _ = problem._datasets(data, {**config, "crowd_instances": flag})
        offsets = sets["train"][0][1][INSTANCE][:, 12, 0:2]
        if expected is None:
            assert torch.isnan(offsets).all()
        else:
            assert offsets.tolist() == expected
