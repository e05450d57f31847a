"""Cityscapes (`002` §3.3): semantic segmentation, disparity and instance offsets.

Configurations (``variant``), cumulative steps of `002` §3.3:

* ``r50``  - ResNet-50 dilated encoder + DeepLabv3 heads, 128x256, 7 categories + disparity
  (Kurin et al. 2022's set-up);
* ``r18``  - the same with ResNet-18;
* ``inst`` - R18 + instance segmentation (per-pixel offset to the instance centre);
* ``hr``   - Inst. Seg. at 256x512;
* ``19c``  - HR with the 19 train classes (`002`'s hard problem).

Data, two layouts (``layout``: auto, official or npy):

* official - ``leftImg8bit/``, ``gtFine/``, ``disparity/`` with train/val(/test), read with
  ``torchvision.datasets.Cityscapes`` (images, ``*_labelIds.png``, ``*_instanceIds.png``)
  plus the 16-bit ``*_disparity.png`` (Cityscapes' encoding: d = (p - 1) / 256 px for p > 0,
  p = 0 invalid). The split (option ``split``, ``trainables.problems.cityscapes_split``):
  ``002`` (or ``auto`` when the layout holds every listed frame) takes the `002` authors' own
  lists, 2,380 / 595 frames of official train and 500 of official val; ``random`` (what
  ``auto`` falls back to) splits train into train / validation (fraction ``val_fraction``,
  seed ``split_seed``) with the official val set as the test set. Images are resized bilinearly, label / instance / disparity maps with
  nearest neighbour, and disparity is rescaled to pixels of the new width (x W / W_orig).
  Resized samples are cached as ``.npz`` under ``<root>/searcher_cache/<H>x<W>/`` (option
  ``cache``), since decoding 2048x1024 PNGs dominates an epoch otherwise.
* npy - the preprocessed 128x256 layout of MTAN / Nash-MTL:
  ``{train,val}/{image,label_7,label_19,depth}/{i}.npy``, image (128, 256, 3) in [0, 1],
  labels with -1 = ignore, depth (128, 256, 1) with 0 = invalid. Its ``val`` is the test
  set and a validation set is split off ``train`` as above, so validation != test. It has
  no instance targets (the configurations with instances need the official layout).

Targets: segmentation (N, H, W) long with -1 = ignore; disparity (N, 1, H, W) with 0 =
invalid; instance (N, 2, H, W): (dy, dx) from each pixel to the centroid of its instance
(Kendall et al. 2018 §3.3 "instance regression"; MGDA / `002` code use pixel - centre, the
opposite sign, which leaves the L1 loss and metric unchanged), NaN on pixels of no instance.
Ids >= 1000 of the 19 evaluated classes are instances (Cityscapes' encoding label_id * 1000 +
k); with ``crowd_instances`` (the default, as the `002` code's ``encode_instancemap``) each
crowd region (an id < 1000 of an instance class, all such pixels of a class in a frame) is
one instance too. Training samples are augmented as the `002` authors' ``--aug``: random
rotation in [-10, 10] degrees and a horizontal flip with probability 0.5 (``augment``).

Losses (`002` code, ``losses.py``): cross-entropy with ignore, L1 on valid disparity, L1 on
instance pixels. Metrics: pixel accuracy and mIoU; disparity abs / rel error; instance L1.
The common ``dropout`` is the heads' ASPP dropout (0 in the `002` scripts, ``--p 0``).

Options (``--param``): layout, height / width (override the variant's resolution, e.g. for
tests), num_workers (DataLoader workers; pinned memory on CUDA), pretrained (ImageNet
encoder weights, off by default; the `002` authors used them), augment, cache, split
(auto, 002, random), crowd_instances, val_fraction and split_seed (the random train /
validation split).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from trainables import dense_metrics as dm
from trainables.errors import ConfigError, DataError
from trainables.problems import cityscapes_split
from trainables.problems.base import MTLModel, Problem, Splits, TaskSpec
from trainables.problems.dense_models import (
    IMAGENET_MEAN, IMAGENET_STD, ResNetEncoder, check_pretrained, deeplab_head, normalize_image,
)

SEGMENTATION, DISPARITY, INSTANCE = "segmentation", "disparity", "instance"
IGNORE = dm.IGNORE_INDEX  # -1, as the MTAN files and the `002` code
#: Width of the original Cityscapes frames (disparity is in pixels of this width).
ORIGINAL_WIDTH = 2048


@dataclass(frozen=True)
class Variant:
    backbone: str
    num_classes: int
    tasks: tuple[str, ...]
    height: int
    width: int


VARIANTS = {
    "r50": Variant("resnet50", 7, (SEGMENTATION, DISPARITY), 128, 256),
    "r18": Variant("resnet18", 7, (SEGMENTATION, DISPARITY), 128, 256),
    "inst": Variant("resnet18", 7, (SEGMENTATION, DISPARITY, INSTANCE), 128, 256),
    "hr": Variant("resnet18", 7, (SEGMENTATION, DISPARITY, INSTANCE), 256, 512),
    "19c": Variant("resnet18", 19, (SEGMENTATION, DISPARITY, INSTANCE), 256, 512),
}

DOWNLOAD_HINT = (
    "download leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip and disparity_trainvaltest.zip "
    "from https://www.cityscapes-dataset.com/downloads/ and unzip them into one folder (leftImg8bit/, "
    "gtFine/, disparity/), or use MTAN's preprocessed npy folder ({train,val}/{image,label_7,label_19,depth}/); "
    "pass it with --data-dir DIR or put it at $SEARCHER_DATA_DIR or $SEARCHER_DATA/cityscapes "
    "(default ~/.cache/searcher/data/cityscapes)"
)


# ----------------------------------------------------------------------------- labels


def _label_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lookup tables indexed by Cityscapes label id (0..255): train id (19 classes), category
    (7 classes) and "is an evaluated instance class"; ignored ids map to -1 / False.

    From torchvision's ``Cityscapes.classes`` (= cityscapesScripts ``labels.py``). The 7
    categories are flat, construction, object, nature, sky, human, vehicle (category_id - 1)
    for labels that have a train id, as the `002` code's ``categoryTrainId``.
    """
    from torchvision.datasets import Cityscapes

    train = torch.full((256,), IGNORE, dtype=torch.long)
    category = torch.full((256,), IGNORE, dtype=torch.long)
    has_instances = torch.zeros(256, dtype=torch.bool)
    for c in Cityscapes.classes:
        if c.id < 0 or c.train_id in (255, -1):
            continue
        train[c.id] = c.train_id
        category[c.id] = c.category_id - 1
        has_instances[c.id] = c.has_instances
    return train, category, has_instances


TRAIN_IDS, CATEGORIES, INSTANCE_CLASSES = _label_tables()


def encode_labels(label_ids: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cityscapes label ids (``*_labelIds.png``) -> 19 train ids or 7 categories, -1 = ignore."""
    if num_classes not in (7, 19):
        raise ConfigError(f"Cityscapes has 7 categories or 19 classes, not {num_classes}")
    table = TRAIN_IDS if num_classes == 19 else CATEGORIES
    return table[label_ids.long().clamp(0, 255)]


def decode_disparity(raw: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """16-bit disparity PNG values -> disparity in pixels, times ``scale``; 0 = invalid.

    Cityscapes README: d = (p - 1) / 256 for p > 0, p = 0 invalid. ``scale`` = new width /
    original width after resizing (`002` code: ``disp_factor``).
    """
    raw = raw.to(torch.float32)
    return torch.where(raw > 0, (raw - 1.0) / 256.0 * scale, torch.zeros_like(raw))


def instance_mask(instance_ids: torch.Tensor, crowd: bool = False) -> torch.Tensor:
    """Pixels of an individual instance: id >= 1000 of an evaluated class with instances; with
    ``crowd``, also a crowd region of such a class (its id is the label id, < 1000), one
    instance per class and image, as the `002` code's ``encode_instancemap`` counts it."""
    ids = instance_ids.long()
    mask = (ids >= 1000) & INSTANCE_CLASSES[(ids // 1000).clamp(0, 255)]
    if crowd:
        mask |= (ids > 0) & (ids < 1000) & INSTANCE_CLASSES[ids.clamp(0, 255)]
    return mask


def instance_offsets(instance_ids: torch.Tensor, crowd: bool = False) -> torch.Tensor:
    """(H, W) ``*_instanceIds`` -> (2, H, W) offsets (dy, dx) to the instance centroid, NaN off instances.

    The centroid is the mean (row, column) of the instance's pixels; the target is
    centroid - pixel (Kendall et al. 2018 §3.3). ``crowd``: crowd regions count as instances
    (``instance_mask``).
    """
    ids = instance_ids.long()
    h, w = ids.shape
    out = torch.full((2, h, w), math.nan, dtype=torch.float32)
    mask = instance_mask(ids, crowd)
    if not bool(mask.any()):
        return out
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    _, inverse = torch.unique(ids[mask], return_inverse=True)
    count = torch.bincount(inverse).double()
    cy = torch.bincount(inverse, weights=ys[mask]) / count
    cx = torch.bincount(inverse, weights=xs[mask]) / count
    out[0][mask] = (cy[inverse] - ys[mask]).float()
    out[1][mask] = (cx[inverse] - xs[mask]).float()
    return out


# ----------------------------------------------------------------------------- samples


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an (H, W) map of labels / ids / raw disparity (no mixing)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return TF.resize(x.unsqueeze(0), list(size), interpolation=InterpolationMode.NEAREST, antialias=False).squeeze(0)


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of a float (3, H, W) image."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return TF.resize(x, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)


def augment(image: torch.Tensor, maps: list[torch.Tensor], max_angle: float = 10.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random rotation in [-max_angle, max_angle] and horizontal flip (p = 0.5), shared by
    the image (bilinear) and the (H, W) maps (nearest, filled with 0 = "no label / no
    instance / invalid disparity"); as the `002` code's ``RandomRotate(10)`` + flip.

    Uses torch's global RNG (seeded per DataLoader worker from the trainer's generator).
    """
    angle = float((torch.rand(()) * 2.0 - 1.0) * max_angle)
    flip = bool(torch.rand(()) < 0.5)
    image = TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
    maps = [TF.rotate(m.unsqueeze(0), angle, interpolation=InterpolationMode.NEAREST, fill=0).squeeze(0) for m in maps]
    if flip:
        image = TF.horizontal_flip(image)
        maps = [TF.horizontal_flip(m) for m in maps]
    return image, maps


class OfficialCityscapes(Dataset):
    """Samples of the official layout: torchvision's ``Cityscapes`` + the disparity PNGs.

    ``indices`` select (and order) frames of ``split`` sorted by file name.
    """

    def __init__(
        self,
        root: str,
        split: str,
        indices: list[int] | None,
        size: tuple[int, int],
        num_classes: int,
        tasks: tuple[str, ...],
        augment: bool = False,
        cache_dir: str | None = None,
        crowd: bool = False,
    ) -> None:
        from torchvision.datasets import Cityscapes

        try:
            self.base = Cityscapes(root, split=split, mode="fine", target_type=["semantic", "instance"])
        except (RuntimeError, OSError) as err:
            raise DataError(f"cannot read Cityscapes {split} under {root} ({err}); {DOWNLOAD_HINT}") from None
        order = sorted(range(len(self.base.images)), key=lambda i: self.base.images[i])
        self.frames = [order[i] for i in indices] if indices is not None else order
        self.root, self.split, self.size = root, split, size
        self.num_classes, self.tasks, self.augment = num_classes, tasks, augment
        #: Crowd regions as instances (``instance_mask``).
        self.crowd = crowd
        self.cache_dir = Path(cache_dir) / split if cache_dir else None

    def __len__(self) -> int:
        return len(self.frames)

    def disparity_path(self, image_path: str) -> str:
        """``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` -> ``disparity/<split>/<city>/<x>_disparity.png``."""
        city_dir, name = os.path.split(image_path)
        city = os.path.basename(city_dir)
        stem = name.split("_leftImg8bit")[0]
        return os.path.join(self.root, "disparity", self.split, city, f"{stem}_disparity.png")

    def read_frame(self, frame: int) -> dict[str, np.ndarray]:
        """Decode and resize one frame: uint8 image (H, W, 3), label ids, instance ids, disparity (px)."""
        image_path = self.base.images[frame]
        try:
            image, (labels, instances) = self.base[frame]
            disparity = Image.open(self.disparity_path(image_path))
            raw = torch.from_numpy(np.array(disparity, dtype=np.int32))
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read Cityscapes frame {image_path} ({err}); {DOWNLOAD_HINT}") from None
        h, w = self.size
        img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        img = resize_image(img.float() / 255.0, (h, w))
        label_ids = resize_nearest(torch.from_numpy(np.array(labels, dtype=np.int32)), (h, w))
        instance_ids = resize_nearest(torch.from_numpy(np.array(instances, dtype=np.int32)), (h, w))
        disp = decode_disparity(resize_nearest(raw, (h, w)), scale=w / raw.shape[-1])
        return {
            "image": (img * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy(),
            "label_ids": label_ids.to(torch.int32).numpy(),
            "instance_ids": instance_ids.to(torch.int32).numpy(),
            "disparity": disp.numpy(),
        }

    def cached_frame(self, frame: int) -> dict[str, np.ndarray]:
        """``read_frame`` through the on-disk cache (written atomically; skipped if unwritable)."""
        if self.cache_dir is None:
            return self.read_frame(frame)
        name = Path(self.base.images[frame]).name.replace("_leftImg8bit.png", ".npz")
        path = self.cache_dir / name
        if path.is_file():
            try:
                with np.load(path) as f:
                    return {k: f[k] for k in ("image", "label_ids", "instance_ids", "disparity")}
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file is rebuilt
        arrays = self.read_frame(frame)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads the arrays as allow_pickle
            os.replace(tmp, path)
        except OSError:
            pass
        return arrays

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a = self.cached_frame(self.frames[index])
        image = torch.from_numpy(a["image"]).permute(2, 0, 1).float() / 255.0
        maps = [torch.from_numpy(a[k]) for k in ("label_ids", "instance_ids", "disparity")]
        if self.augment:
            image, maps = augment(image, maps)
        label_ids, instance_ids, disparity = maps[0].long(), maps[1].long(), maps[2]
        targets = {SEGMENTATION: encode_labels(label_ids, self.num_classes), DISPARITY: disparity.float().unsqueeze(0)}
        if INSTANCE in self.tasks:
            targets[INSTANCE] = instance_offsets(instance_ids, self.crowd)
        return normalize_image(image), {t: targets[t] for t in self.tasks}


class NpyCityscapes(Dataset):
    """Samples of MTAN's preprocessed layout ``<root>/<split>/{image,label_7,label_19,depth}/<i>.npy``."""

    def __init__(
        self,
        root: str,
        split: str,
        indices: list[int] | None,
        size: tuple[int, int],
        num_classes: int,
        tasks: tuple[str, ...],
        augment: bool = False,
    ) -> None:
        if INSTANCE in tasks:
            raise ConfigError(
                "the MTAN npy layout of Cityscapes has no instance targets; this configuration needs the official "
                "layout (leftImg8bit/, gtFine/, disparity/ from https://www.cityscapes-dataset.com/downloads/)"
            )
        self.dir = Path(root) / split
        n = npy_count(self.dir)
        self.indices = list(indices) if indices is not None else list(range(n))
        self.size, self.num_classes, self.tasks, self.augment = size, num_classes, tasks, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        i = self.indices[index]
        try:
            image = np.load(self.dir / "image" / f"{i}.npy")
            labels = np.load(self.dir / f"label_{self.num_classes}" / f"{i}.npy")
            depth = np.load(self.dir / "depth" / f"{i}.npy")
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read Cityscapes npy sample {self.dir}/*/{i}.npy ({err}); {DOWNLOAD_HINT}") from None
        img = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        lab = torch.from_numpy(np.rint(np.asarray(labels, dtype=np.float64))).long().reshape(img.shape[-2:])
        dep = torch.from_numpy(np.asarray(depth, dtype=np.float32)).reshape(img.shape[-2:])
        img = resize_image(img, self.size)
        lab, dep = resize_nearest(lab, self.size), resize_nearest(dep, self.size)
        if self.augment:
            img, (lab_shift, dep) = augment(img, [lab + 1, dep])  # +1: fill 0 becomes ignore (-1)
            lab = lab_shift - 1
        lab = torch.where((lab >= 0) & (lab < self.num_classes), lab, torch.full_like(lab, IGNORE))
        targets = {SEGMENTATION: lab, DISPARITY: dep.unsqueeze(0)}
        return normalize_image(img), {t: targets[t] for t in self.tasks}


def npy_count(split_dir: Path) -> int:
    """Number of samples of one npy split (files 0.npy ... n-1.npy in ``image/``)."""
    image_dir = split_dir / "image"
    if not image_dir.is_dir():
        raise DataError(f"no {image_dir}; {DOWNLOAD_HINT}")
    n = len([p for p in image_dir.iterdir() if p.suffix == ".npy"])
    if n == 0:
        raise DataError(f"no .npy files in {image_dir}; {DOWNLOAD_HINT}")
    return n


def npy_resolution(split_dir: Path) -> tuple[int, int]:
    """(H, W) of the stored npy images (128x256 in MTAN's files), from the first sample."""
    try:
        shape = np.load(split_dir / "image" / "0.npy", mmap_mode="r").shape
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {split_dir / 'image' / '0.npy'} ({err}); {DOWNLOAD_HINT}") from None
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(f"{split_dir / 'image' / '0.npy'} has shape {shape}, expected (H, W, 3)")
    return int(shape[0]), int(shape[1])


# ----------------------------------------------------------------------------- data location


def default_roots() -> list[Path]:
    """Where the data is looked for without --data-dir: $SEARCHER_DATA_DIR, then
    $SEARCHER_DATA/cityscapes (default ~/.cache/searcher/data/cityscapes)."""
    roots = []
    if os.environ.get("SEARCHER_DATA_DIR"):
        roots.append(Path(os.environ["SEARCHER_DATA_DIR"]))
    base = Path(os.environ.get("SEARCHER_DATA", Path.home() / ".cache" / "searcher" / "data"))
    roots.append(base / "cityscapes")
    return roots


def detect_layout(root: Path) -> str | None:
    """'official', 'npy' or None for a folder."""
    if (root / "leftImg8bit" / "train").is_dir() and (root / "gtFine" / "train").is_dir():
        return "official"
    if (root / "train" / "image").is_dir() and (root / "val" / "image").is_dir():
        return "npy"
    return None


def locate(data_dir: str | None, layout: str) -> tuple[Path, str]:
    """The data folder and its layout; raises a one-line DataError naming what to download."""
    if layout not in ("auto", "official", "npy"):
        raise ConfigError(f"unknown Cityscapes layout {layout!r} (use auto, official or npy)")
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise DataError(f"Cityscapes data dir {data_dir} does not exist; {DOWNLOAD_HINT}")
        candidates = [Path(data_dir), Path(data_dir) / "cityscapes"]
    else:
        candidates = default_roots()
    for root in candidates:
        found = detect_layout(root)
        if found is not None and layout in ("auto", found):
            return root.resolve(), found
    where = data_dir if data_dir is not None else " or ".join(str(p) for p in candidates)
    wanted = {"auto": "Cityscapes", "official": "official-layout Cityscapes", "npy": "MTAN npy Cityscapes"}[layout]
    raise DataError(f"no {wanted} data under {where}; {DOWNLOAD_HINT}")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Fixed-seed split of n training frames into (train, validation) index lists, each sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n < 4:
        raise DataError(f"Cityscapes train split has {n} frames; at least 4 are needed (2 to train, 2 to validate)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(2, round(val_fraction * n)), n - 2)
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def even_batches(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive batches of 0..n-1, as equal as possible, ``batch_size`` at most unless
    that would leave a batch of one (then one more).

    Evaluation batches of one sample would break BatchNorm in train mode (ASPP's pooled
    branch), which Auto-Lambda uses on validation batches; equal sizes of at least 2 avoid
    that whenever n >= 2. Metrics add up exactly whatever the batch sizes.
    """
    count = max(1, min(math.ceil(n / batch_size), n // 2))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(count) if bounds[i + 1] > bounds[i]]


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"expected true or false, got {value!r}")


# ----------------------------------------------------------------------------- references

# Nominal single-task validation values, only to put the metrics on one scale when picking
# the best epoch (Problem.score); reports compare against real single-task runs. npy: MTAN's
# STL Cityscapes 7-class numbers as reported by Nash-MTL (Table 3: mIoU 74.01, pixel acc
# 93.16, abs 0.0125, rel 27.77 %), 19-class mIoU nominal. official: disparity in pixels at
# 256 px width and instance offsets in pixels, both scaled with the width (rough values).
_SEG_REFERENCE = {7: {"miou": 0.74, "pixel_acc": 0.93}, 19: {"miou": 0.45, "pixel_acc": 0.88}}
_NPY_DEPTH_REFERENCE = {"abs_err": 0.0125, "rel_err": 0.28}
_OFFICIAL_DISPARITY_REFERENCE_256 = {"abs_err": 0.4, "rel_err": 0.2}
_INSTANCE_REFERENCE_256 = {"l1": 2.5}


# ----------------------------------------------------------------------------- problem


class Cityscapes(Problem):
    name = "cityscapes"
    description = "Cityscapes: semantic segmentation (7 or 19 classes), disparity, instance offsets (`002` §3.3)"
    pixel_stats = (IMAGENET_MEAN, IMAGENET_STD)  # loaded ImageNet-standardised (normalize_image)

    def __init__(self, variant: str = "r50", *, layout: str = "official", width: int | None = None) -> None:
        """``layout`` and ``width`` (default: the variant's) are those of the data the run
        trains on, which the nominal references follow; ``resolved`` sets them from the
        prepared data and the run's config (``--param layout`` / ``width`` choose them)."""
        if variant not in VARIANTS:
            raise ConfigError(f"unknown Cityscapes variant {variant!r} (known: {', '.join(VARIANTS)})")
        if layout not in ("official", "npy"):
            raise ConfigError(f"unknown Cityscapes layout {layout!r} (official or npy)")
        self.variant = variant
        self.spec = VARIANTS[variant]
        self._layout = layout
        self._width = self.size({"width": self.spec.width if width is None else width})[1]
        self.defaults = {
            "batch_size": 32,
            "lr_decay": 0.95,
            "layout": "auto",
            "height": self.spec.height,
            "width": self.spec.width,
            "num_workers": 2,
            "pretrained": "false",
            "augment": "true",
            "cache": "true",
            "split": "auto",
            "crowd_instances": "true",
            "val_fraction": 0.2,
            "split_seed": 0,
        }
        self._tasks = self._task_specs()

    @property
    def layout(self) -> str:
        """The data layout the references are for (official or npy)."""
        return self._layout

    @property
    def width(self) -> int:
        """The input width the references are for (disparity and offsets are in its pixels)."""
        return self._width

    def _task_specs(self) -> tuple[TaskSpec, ...]:
        """The tasks of the variant with the references of ``layout`` at ``width``: npy depth
        as MTAN's (the same at every resolution), official disparity and instance offsets
        scaled from 256 px to ``width`` (both in pixels of the resized frame)."""
        k = self.spec.num_classes
        scale = self.width / 256.0
        if self.layout == "npy":
            disparity_ref = dict(_NPY_DEPTH_REFERENCE)
        else:
            disparity_ref = {"abs_err": _OFFICIAL_DISPARITY_REFERENCE_256["abs_err"] * scale,
                             "rel_err": _OFFICIAL_DISPARITY_REFERENCE_256["rel_err"]}
        specs = {
            SEGMENTATION: TaskSpec(
                SEGMENTATION, (dm.pixel_accuracy_metric(IGNORE), dm.miou_metric(k, IGNORE)), dict(_SEG_REFERENCE[k]),
                "softmax"
            ),
            DISPARITY: TaskSpec(
                DISPARITY, (dm.abs_error_metric(dm.positive), dm.rel_error_metric(dm.positive)), disparity_ref, "laplace"
            ),
            INSTANCE: TaskSpec(
                INSTANCE, (dm.l1_metric(dm.finite),), {"l1": _INSTANCE_REFERENCE_256["l1"] * scale}, "laplace"
            ),
        }
        return tuple(specs[t] for t in self.spec.tasks)

    @property
    def tasks(self) -> list[TaskSpec]:
        return list(self._tasks)

    def resolved(self, data: Mapping[str, Any], config: Mapping[str, Any]) -> Cityscapes:
        """This variant for the layout ``prepare`` found (``data["layout"]``; the
        constructor's without one) at the width of ``config`` (over the defaults)."""
        layout = str(data.get("layout", self.layout))
        width = self.size({**self.defaults, **config})[1]
        if (layout, width) == (self.layout, self.width):
            return self
        return Cityscapes(self.variant, layout=layout, width=width)

    def size(self, config: Mapping[str, Any]) -> tuple[int, int]:
        try:
            h, w = int(config.get("height", self.spec.height)), int(config.get("width", self.spec.width))
        except (TypeError, ValueError):
            got = f"{config.get('height')!r}, {config.get('width')!r}"
            raise ConfigError(f"height and width must be integers, got {got}") from None
        if h < 8 or w < 8:
            raise ConfigError(f"resolution {h}x{w} is too small (at least 8x8)")
        return h, w

    def source_option(self, source: str) -> dict[str, str]:
        layout = source.removeprefix("cityscapes-")  # what ``prepare`` logs: cityscapes-<layout>
        return {"layout": layout} if layout in ("official", "npy") else {}

    def prepare(self, data_dir: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
        if str(config.get("split", "auto")) not in cityscapes_split.SPLITS:
            raise ConfigError(f"cityscapes split must be one of {', '.join(cityscapes_split.SPLITS)}, "
                              f"got {config.get('split')!r}")
        root, layout = locate(data_dir, str(config.get("layout", "auto")))
        if layout == "official":
            for folder, archive in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine"), ("disparity", "disparity")):
                for split in ("train", "val"):
                    if not (root / folder / split).is_dir():
                        raise DataError(
                            f"Cityscapes under {root} lacks {folder}/{split}/: unzip {archive}_trainvaltest.zip "
                            "from https://www.cityscapes-dataset.com/downloads/ there"
                        )
        if layout == "npy" and INSTANCE in self.spec.tasks:
            raise ConfigError(
                f"cityscapes variant {self.variant!r} needs instance targets, which the MTAN npy layout under {root} "
                "lacks; use the official layout (leftImg8bit/, gtFine/, disparity/ from "
                "https://www.cityscapes-dataset.com/downloads/)"
            )
        if _flag(config.get("pretrained", False)):
            check_pretrained(self.spec.backbone)  # on the driver, before any trial asks for the weights
        # "source" is what the runs log as their data source (searcher.session.data_source).
        return {"data_dir": str(root), "layout": layout, "source": f"cityscapes-{layout}"}

    def _datasets(
        self, data: Mapping[str, Any], config: Mapping[str, Any]
    ) -> tuple[dict[str, NpyCityscapes | OfficialCityscapes], str]:
        root = str(data["data_dir"])
        layout = str(data["layout"])
        size = self.size(config)
        k, tasks = self.spec.num_classes, self.spec.tasks
        fraction, seed = float(config.get("val_fraction", 0.2)), int(config.get("split_seed", 0))
        split = str(config.get("split", "auto"))
        aug = _flag(config.get("augment", True))
        if layout == "npy":
            cityscapes_split.choose(split, layout, [], [], root)  # split=002 cannot be had: a one-line error
            stored = npy_resolution(Path(root) / "train")
            if size[0] > stored[0] or size[1] > stored[1]:
                raise ConfigError(
                    f"the npy Cityscapes under {root} is {stored[0]}x{stored[1]}; {size[0]}x{size[1]} needs the "
                    "official layout (or lower --param height / width)"
                )
            train_idx, val_idx = split_indices(npy_count(Path(root) / "train"), fraction, seed)
            sets: dict[str, NpyCityscapes | OfficialCityscapes] = {
                "train": NpyCityscapes(root, "train", train_idx, size, k, tasks, augment=aug),
                "val": NpyCityscapes(root, "train", val_idx, size, k, tasks),
                "test": NpyCityscapes(root, "val", None, size, k, tasks),
            }
            test_from = "npy val"
        else:
            cache = f"{root}/searcher_cache/{size[0]}x{size[1]}" if _flag(config.get("cache", True)) else None
            probe = OfficialCityscapes(root, "train", None, size, k, tasks)
            test_probe = OfficialCityscapes(root, "val", None, size, k, tasks)
            listed = cityscapes_split.choose(split, layout, probe.base.images, test_probe.base.images, root)
            if listed is not None:
                train_idx, val_idx, test_idx = listed["train"], listed["val"], listed["test"]
            else:
                (train_idx, val_idx), test_idx = split_indices(len(probe), fraction, seed), None
            crowd = _flag(config.get("crowd_instances", True))
            sets = {
                "train": OfficialCityscapes(root, "train", train_idx, size, k, tasks, augment=aug, cache_dir=cache,
                                            crowd=crowd),
                "val": OfficialCityscapes(root, "train", val_idx, size, k, tasks, cache_dir=cache, crowd=crowd),
                "test": OfficialCityscapes(root, "val", test_idx, size, k, tasks, cache_dir=cache, crowd=crowd),
            }
            test_from = "official val"
            if listed is not None:
                for split_set in sets.values():
                    if len(split_set) == 0:
                        raise DataError(f"Cityscapes under {root}: the `002` split selected no frame")
                return sets, (f"cityscapes official {size[0]}x{size[1]} at {root}: the `002` authors' split "
                              f"(train {len(listed['train'])}, val {len(listed['val'])} of official train; "
                              f"test {len(listed['test'])} "
                              "of official val)")
        for split, ds in sets.items():
            if len(ds) == 0:
                raise DataError(f"Cityscapes {split} split under {root} is empty; {DOWNLOAD_HINT}")
        source = (
            f"cityscapes {layout} {size[0]}x{size[1]} at {root}: train/val = {1 - fraction:.2f}/{fraction:.2f} "
            f"of train (seed {seed}), test = {test_from}"
        )
        return sets, source

    def load(
        self, data: Mapping[str, Any], config: Mapping[str, Any], generator: torch.Generator, device: torch.device
    ) -> Splits:
        layout, width = str(data["layout"]), self.size(config)[1]
        if (layout, width) != (self.layout, self.width):
            raise ConfigError(
                f"this cityscapes problem was built for {self.layout} data {self.width} px wide, not {layout} data "
                f"{width} px wide: build it with problem.resolved(data, config), as the driver does"
            )
        sets, source = self._datasets(data, config)
        batch_size = int(config.get("batch_size", 32))
        workers = int(config.get("num_workers", 2))
        pin = torch.cuda.is_available() and device.type == "cuda"
        common: dict[str, Any] = {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0}
        n_train = len(sets["train"])
        # drop_last: BatchNorm (ASPP's image pooling) cannot train on a batch of one.
        train = DataLoader(
            sets["train"], batch_size=min(batch_size, n_train), shuffle=True, drop_last=True, generator=generator, **common
        )
        loaders = {
            s: DataLoader(sets[s], batch_sampler=even_batches(len(sets[s]), batch_size), **common) for s in ("val", "test")
        }
        sizes = {s: len(d) for s, d in sets.items()}
        return Splits(train, loaders["val"], loaders["test"], source, sizes)

    def build_model(self, config: Mapping[str, Any]) -> MTLModel:
        encoder = ResNetEncoder(self.spec.backbone, pretrained=_flag(config.get("pretrained", False)), dilated=True)
        size = self.size(config)
        p = float(config.get("dropout", 0.0))
        channels = {SEGMENTATION: self.spec.num_classes, DISPARITY: 1, INSTANCE: 2}
        heads = {t: deeplab_head(encoder, channels[t], size, dropout=p) for t in self.spec.tasks}
        return MTLModel(encoder, heads)

    def loss(self, task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if task == SEGMENTATION:
            return dm.segmentation_loss(output, target, IGNORE)
        if task == DISPARITY:
            return dm.masked_l1_loss(output, target, dm.positive)
        return dm.masked_l1_loss(output, target, dm.finite)

    def kpi(self, task: str, output: torch.Tensor, target: torch.Tensor) -> float | None:
        """Batch pixel accuracy of the segmentation; the regressions have no KPI in [0, 1]."""
        if task != SEGMENTATION:
            return None
        correct, total = dm.pixel_accuracy(output, target, IGNORE)
        return correct / total if total else None


__all__ = [
    "Cityscapes",
    "VARIANTS",
    "OfficialCityscapes",
    "NpyCityscapes",
    "encode_labels",
    "decode_disparity",
    "instance_mask",
    "instance_offsets",
    "locate",
    "split_indices",
]
