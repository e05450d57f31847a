"""NYUv2 (`000` Table 2, `001`, `003`, `004`): 13-class segmentation, depth and surface normals.

Data: MTAN's preprocessed NYUv2 (lorenmt/mtan README; ``im2im_pred/create_dataset.py``), one
``.npy`` file per sample and kind::

    <root>/{train,val}/image/{i}.npy    (288, 384, 3) float RGB in [0, 1]
    <root>/{train,val}/label/{i}.npy    (288, 384)    float class 0..12, -1 = no label
    <root>/{train,val}/depth/{i}.npy    (288, 384, 1) float metres, 0 = no measurement
    <root>/{train,val}/normal/{i}.npy   (288, 384, 3) float unit normals, 0 vector = none

MTAN, LibMTL, CAGrad and Nash-MTL train on all 795 training images and report the best epoch
on ``val`` (the 654 official test images): option ``validation=test`` does the same (the
space ``nyuv2_mtan``). By default (``validation=holdout``) ``val`` is the **test** split and a
validation set is split off ``train`` with a fixed seed (``val_fraction`` 0.2 = 159 of the 795
training images, as `003` A3.1 does), so the epoch picked on validation never saw the test
images; the splits' description (logged with every run) says which.

Training batches get CAGrad's / Nash-MTL's augmentation (``augment``, on by default as in
`000` Table 1 "aug: True" and `003` A3.1; MTAN's paper trained without it): a random zoom by
1.0, 1.2 or 1.5 (crop then resize back; depth divided by the zoom) and a horizontal flip
(normals' x component negated).

Losses as MTAN's ``model_fit``: cross-entropy ignoring -1; L1 depth on pixels with depth > 0;
1 - cosine between predicted and true normals on pixels with a normal. Metrics as `000`
Table 2: mIoU and pixel accuracy; absolute and relative depth error; the angle between
predicted and true normals (mean, median, fraction within 11.25 / 22.5 / 30 degrees).
Segmentation's are always accumulated over the whole split (MTAN's and Nash-MTL's
``ConfMatrix``); option ``metric_average`` says how the seven depth and normal statistics are:
``pooled`` (default) over every valid pixel of the split, as LibMTL (``examples/nyu/utils.py``:
``DepthMetric`` weighs each batch's mean by its valid-pixel count, ``NormalMetric`` concatenates
every angle), or ``per_batch`` as MTAN (lorenmt/mtan ``im2im_pred/utils.py``: ``depth_error``,
``normal_error``, ``multi_task_trainer``'s ``avg_cost += cost / test_batch``) and Nash-MTL
(AvivNavon/nash-mtl ``experiments/nyuv2/utils.py``, ``trainer.py``, the same): each batch's
mean, median and "within" fractions over its own valid pixels, then the plain mean of those
over the batches of the split (the space ``nyuv2_mtan``).

Models (``model``): MTAN's SegNet "split" baseline (shared encoder-decoder, z = the last
decoder feature map, a small conv head per task), SegNet + MTAN's task attention
(``segnet_mtan``, ``trainables.problems.mtan``), or a dilated ResNet with one DeepLabv3 head
per task (`001` A.1, `003` §4.1.2: ResNet-50; ResNet-18 as in `004`), from
``trainables.problems.dense_models``.

Options (``--param``): ``height`` / ``width`` (every split resized to them, 288x384 native),
``num_workers`` (DataLoader workers; memory pinned on CUDA), ``augment``, ``validation``
(holdout or test), ``val_fraction`` and ``split_seed`` (the holdout split), ``metric_average``
(pooled or per_batch), ``pretrained`` (ImageNet ResNet weights, off; they are
downloaded by torchvision), ``segnet_filters`` (SegNet widths, narrow for tests).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from trainables.dense_metrics import (
    IGNORE_INDEX,
    abs_error_metric,
    iou_statistics,
    masked_l1_loss,
    mean_iou,
    miou_metric,
    pixel_accuracy_metric,
    positive,
    rel_error_metric,
    segmentation_loss,
)
from trainables.errors import ConfigError, DataError
from trainables.metrics import MetricAccumulator, MetricSpec, Stat, per_batch
from trainables.problems.base import MTLModel, Problem, Splits, TaskSpec, split_loaders
from trainables.problems.dense_models import ResNetEncoder, deeplab_head, normalize_image

NUM_CLASSES = 13
#: Height and width of MTAN's preprocessed images.
NATIVE_SIZE = (288, 384)
KINDS = ("image", "label", "depth", "normal")
TASKS = ("segmentation", "depth", "normal")
#: Where the epoch is selected (option ``validation``).
VALIDATION = ("holdout", "test")
#: How depth and normal errors are averaged over a split (option ``metric_average``).
METRIC_AVERAGE = ("pooled", "per_batch")
DOWNLOAD = "https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip"
MODELS = {"segnet": None, "segnet_mtan": None, "resnet18_deeplab": "resnet18", "resnet50_deeplab": "resnet50"}
#: MTAN's SegNet widths ("standard"; its "wide" variant ends in 1024).
SEGNET_FILTERS = "64,128,256,512,512"
#: The angle thresholds of `000` Table 2 ("Within t degrees").
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
#: Bin width (degrees) of the angle histogram the median is read from: exact to half a bin.
ANGLE_BIN = 0.01
ANGLE_BINS = int(round(180.0 / ANGLE_BIN))
#: CAGrad / Nash-MTL ``RandomScaleCrop`` zoom factors.
ZOOMS = (1.0, 1.2, 1.5)
#: `000` Table 1 / MTAN / CAGrad halve the lr every 100 of 200 epochs (StepLR).
LR_STEP_DECAY, LR_STEP_EVERY = 0.5, 100

# Nominal single-task references for Problem.score (Delta_m, `002` eq. 1), from `003` Appendix
# Table A5 (SegNet, STL row, Adam) and Table A6 (DeepLabV3+ on ResNet-50, STL row, Adam); `003`
# reports fractions, as our metrics do, and angles in degrees. ResNet-18 borrows the ResNet-50
# row (no seed has a ResNet-18 single-task row). They only put the nine metrics on one scale
# to pick the best epoch; reports compare against real single-task runs.
_REFERENCE_SEGNET = {
    "segmentation": {"miou": 0.3922, "pixel_acc": 0.6462},
    "depth": {"abs_err": 0.6068, "rel_err": 0.2579},
    "normal": {"mean_angle": 24.74, "median_angle": 18.49, "within_11.25": 0.3084, "within_22.5": 0.5816,
               "within_30": 0.6996},
}
_REFERENCE_DEEPLAB = {
    "segmentation": {"miou": 0.5517, "pixel_acc": 0.7668},
    "depth": {"abs_err": 0.3650, "rel_err": 0.1524},
    "normal": {"mean_angle": 21.16, "median_angle": 14.52, "within_11.25": 0.4023, "within_22.5": 0.6679,
               "within_30": 0.7679},
}


# --------------------------------------------------------------------------- data on disk


def find_root(data_dir: str | None) -> Path:
    """The folder holding ``train/`` and ``val/``: ``data_dir`` itself or its ``nyuv2/``
    subfolder (what unzipping MTAN's ``nyuv2.zip`` gives)."""
    how = (f"download MTAN's preprocessed NYUv2 ({DOWNLOAD}, see lorenmt/mtan), unzip it and pass "
           f"--data-dir <folder with train/ and val/, each with image/ label/ depth/ normal/ of .npy files>")
    if not data_dir:
        raise DataError(f"NYUv2 needs --data-dir: {how}")
    base = Path(data_dir).expanduser()
    for root in (base, base / "nyuv2"):
        if (root / "train" / "image").is_dir() and (root / "val" / "image").is_dir():
            return root
    raise DataError(f"NYUv2 not found under {base}: {how}")


def sample_count(folder: Path) -> int:
    """Number of samples of one split folder, checking that every kind has files 0..n-1."""
    names = {}
    for kind in KINDS:
        sub = folder / kind
        if not sub.is_dir():
            raise DataError(f"NYUv2: missing folder {sub} (MTAN layout: {folder}/{{{','.join(KINDS)}}}/<i>.npy)")
        names[kind] = {p.name for p in sub.iterdir() if p.suffix == ".npy"}
    n = len(names["image"])
    expected = {f"{i}.npy" for i in range(n)}
    for kind in KINDS:
        if names[kind] != expected:
            missing = sorted(expected - names[kind], key=len)[:3]
            raise DataError(f"NYUv2: {folder / kind} does not hold 0.npy..{n - 1}.npy like {folder / 'image'}"
                            + (f" (missing e.g. {', '.join(missing)})" if missing else ""))
    if n == 0:
        raise DataError(f"NYUv2: no samples in {folder / 'image'}")
    return n


def check_sample(folder: Path, index: int) -> None:
    """Shapes of one sample against MTAN's layout (any H x W: samples are resized on loading)."""
    arrays = {k: np.load(folder / k / f"{index}.npy", mmap_mode="r") for k in KINDS}
    h, w = arrays["image"].shape[:2]
    expected = {"image": (h, w, 3), "label": (h, w), "depth": (h, w, 1), "normal": (h, w, 3)}
    for kind, shape in expected.items():
        if tuple(arrays[kind].shape) != shape:
            raise DataError(f"NYUv2: {folder / kind / f'{index}.npy'} has shape {tuple(arrays[kind].shape)}, "
                            f"expected {shape} (MTAN layout)")


def validation_indices(n_train: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices into MTAN's ``train`` folder: a seeded random ``fraction`` is val."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {fraction}")
    if n_train < 2:
        raise DataError(f"NYUv2: {n_train} training sample(s); need 2 or more to split off a validation set")
    n_val = min(max(int(round(fraction * n_train)), 1), n_train - 1)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


# --------------------------------------------------------------------------- transforms


def resize_sample(
    image: torch.Tensor, label: torch.Tensor, depth: torch.Tensor, normal: torch.Tensor, size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resize one sample (C, H, W) to ``size``: the image bilinearly (antialiased), the targets by
    nearest neighbour so labels stay classes and invalid pixels stay exactly 0 / -1."""
    size = tuple(int(s) for s in size)
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
    depth = F.interpolate(depth[None], size=size, mode="nearest")[0]
    normal = F.interpolate(normal[None], size=size, mode="nearest")[0]
    return image, label, depth, normal


def scale_crop(
    image: torch.Tensor, label: torch.Tensor, depth: torch.Tensor, normal: torch.Tensor, zoom: float, top: int, left: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zoom in by ``zoom``: crop (H/zoom, W/zoom) at (top, left) and resize back to (H, W).

    Nash-MTL ``experiments/nyuv2/data.py`` ``RandomScaleCrop`` (from CAGrad, after MTAN issue
    #34): image and normals bilinear (align_corners), label and depth nearest, and depth
    divided by the zoom (the scene looks ``zoom`` times closer).
    """
    height, width = image.shape[-2:]
    h, w = int(height / zoom), int(width / zoom)
    crop = (slice(None), slice(top, top + h), slice(left, left + w))
    size = (height, width)
    image = F.interpolate(image[crop][None], size=size, mode="bilinear", align_corners=True)[0]
    label = F.interpolate(label[None][crop][None].float(), size=size, mode="nearest")[0, 0]
    depth = F.interpolate(depth[crop][None], size=size, mode="nearest")[0] / zoom
    normal = F.interpolate(normal[crop][None], size=size, mode="bilinear", align_corners=True)[0]
    return image, label, depth, normal


def hflip(
    image: torch.Tensor, label: torch.Tensor, depth: torch.Tensor, normal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mirror left-right; the normals' x component changes sign (Nash-MTL / CAGrad)."""
    normal = normal.flip(-1)  # a copy
    normal[0] = -normal[0]
    return image.flip(-1), label.flip(-1), depth.flip(-1), normal


class NYUv2Npy(Dataset):
    """Samples of one MTAN split folder: ``(image (3, H, W), {task: target})``.

    Targets: ``segmentation`` long (H, W) with -1 = ignore, ``depth`` float (1, H, W) with
    0 = invalid, ``normal`` float (3, H, W) with the zero vector = invalid.
    """

    def __init__(
        self, folder: str | Path, indices: Sequence[int] | None = None, size: Sequence[int] | None = None,
        augment: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.indices = list(range(sample_count(self.folder))) if indices is None else list(indices)
        self.size = None if size is None else tuple(int(s) for s in size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, kind: str, index: int) -> torch.Tensor:
        array = np.load(self.folder / kind / f"{index}.npy")
        t = torch.from_numpy(np.ascontiguousarray(array)).float()
        return t if t.dim() == 2 else t.permute(2, 0, 1).contiguous()  # HWC -> CHW

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        k = self.indices[i]
        image, label, depth, normal = (self._load(kind, k) for kind in KINDS)
        if self.size is not None and tuple(image.shape[-2:]) != self.size:
            image, label, depth, normal = resize_sample(image, label, depth, normal, self.size)
        if self.augment:
            # torch's RNG: seeded by the trainer in the main process, per worker by the DataLoader.
            zoom = ZOOMS[int(torch.randint(len(ZOOMS), ()))]
            height, width = image.shape[-2:]
            top = int(torch.randint(height - int(height / zoom) + 1, ()))
            left = int(torch.randint(width - int(width / zoom) + 1, ()))
            image, label, depth, normal = scale_crop(image, label, depth, normal, zoom, top, left)
            if float(torch.rand(())) < 0.5:
                image, label, depth, normal = hflip(image, label, depth, normal)
        return image, {"segmentation": label.long(), "depth": depth, "normal": normal}


# --------------------------------------------------------------------------- losses and metrics


def normal_valid(target: torch.Tensor) -> torch.Tensor:
    """(N, H, W) mask of pixels with a ground-truth normal (not the zero vector).

    MTAN masks ``sum(normal, dim=1) != 0``; the zero-vector test is the same on real data and
    does not drop a true normal whose components happen to sum to 0.
    """
    return target.abs().sum(dim=1) > 0


def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine between predicted and true normals over valid pixels (MTAN ``model_fit``:
    1 - sum(pred * gt * mask) / #valid, with unit predictions; both are normalised here)."""
    valid = normal_valid(target)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(dim=1)
    return 1.0 - cos[valid].mean()


def normal_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angles in degrees between predicted and true normals (N, 3, H, W), valid pixels only.

    MTAN ``normal_error`` takes acos of the clamped dot product of unit vectors; we use
    atan2(|p x g|, p . g), the same angle for any lengths and accurate near 0 and 180 degrees,
    where acos of a float32 dot product is off by up to ~0.02 degrees. A zero prediction
    counts as 90 degrees (acos of a zero dot product, as in MTAN).
    """
    valid = normal_valid(target)
    p = pred.movedim(1, -1)[valid].double()
    g = target.movedim(1, -1)[valid].double()
    angle = torch.rad2deg(torch.atan2(torch.linalg.cross(p, g).norm(dim=-1), (p * g).sum(dim=-1)))
    return torch.where(p.norm(dim=-1) > 0, angle, torch.full_like(angle, 90.0))


def mean_angle(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(sum of angles, number of valid pixels)."""
    angles = normal_angles(pred, target)
    return float(angles.sum().item()), float(angles.numel())


def angle_histogram(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(counts of angles in ANGLE_BIN-wide bins over [0, 180], number of valid pixels): the
    histograms of batches add up, so the median of a whole split is read off their sum."""
    angles = normal_angles(pred, target)
    bins = torch.div(angles, ANGLE_BIN, rounding_mode="floor").long().clamp_(0, ANGLE_BINS - 1)
    return torch.bincount(bins, minlength=ANGLE_BINS).double(), float(angles.numel())


def histogram_median(hist: Stat, count: Stat) -> float:
    """Median (numpy's: the mean of the two middle values for an even count) from angle-bin
    counts, each value taken at its bin's centre: within ANGLE_BIN / 2 of the exact median."""
    h = torch.as_tensor(hist, dtype=torch.float64).cpu()
    n = int(round(float(h.sum())))
    if n == 0:
        return math.nan
    cum = h.cumsum(0)
    ranks = torch.tensor([(n - 1) // 2, n // 2], dtype=torch.float64)
    bins = torch.searchsorted(cum, ranks, right=True)  # first bin whose cumulative count > rank
    return float(((bins.double() + 0.5) * ANGLE_BIN).mean())


def within(threshold: float):
    """Statistics of the fraction of valid pixels with an angle below ``threshold`` degrees."""

    def fn(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        angles = normal_angles(pred, target)
        return float((angles < threshold).sum().item()), float(angles.numel())

    return fn


def _threshold_name(t: float) -> str:
    return f"within_{t:g}"


# Units as `000` Table 2 prints them: mIoU, pixel accuracy and the "within" fractions in percent,
# angles in degrees, depth errors in metres (absolute) and as a ratio (relative).
NORMAL_METRICS = (
    MetricSpec("mean_angle", higher_is_better=False, fn=mean_angle, unit="deg"),
    MetricSpec("median_angle", higher_is_better=False, fn=angle_histogram, reduce=histogram_median, unit="deg"),
    *(MetricSpec(_threshold_name(t), higher_is_better=True, fn=within(t), unit="%", scale=100.0)
      for t in ANGLE_THRESHOLDS),
)
SEGMENTATION_METRICS = (miou_metric(NUM_CLASSES).shown("%", 100.0), pixel_accuracy_metric().shown("%", 100.0))
DEPTH_METRICS = (abs_error_metric(positive).shown("m"), rel_error_metric(positive))


def batch_median_angle(pred: torch.Tensor, target: torch.Tensor) -> float | None:
    """The exact median angle of one batch's valid pixels (numpy's ``np.median``, as MTAN's
    ``normal_error``: the mean of the two middle values for an even count); None if none valid."""
    angles = normal_angles(pred, target).sort().values
    n = angles.numel()
    if n == 0:
        return None
    return float((angles[(n - 1) // 2] + angles[n // 2]) / 2)


def averaged_metrics(average: str) -> dict[str, tuple[MetricSpec, ...]]:
    """Every task's metrics with depth and normal statistics ``pooled`` over the split's valid
    pixels or averaged ``per_batch`` (MTAN / Nash-MTL: all seven of them, the median included,
    are per-batch values averaged over batches); segmentation's are pooled either way."""
    if average == "pooled":
        return {"segmentation": SEGMENTATION_METRICS, "depth": DEPTH_METRICS, "normal": NORMAL_METRICS}
    exact = {"median_angle": batch_median_angle}
    return {
        "segmentation": SEGMENTATION_METRICS,
        "depth": tuple(per_batch(m) for m in DEPTH_METRICS),
        "normal": tuple(per_batch(m, exact.get(m.name)) for m in NORMAL_METRICS),
    }


def depth_delta1(pred: torch.Tensor, target: torch.Tensor) -> float | None:
    """Fraction of valid pixels with max(pred/gt, gt/pred) < 1.25 (the delta_1 accuracy `001`
    reports for depth); a non-positive prediction counts as wrong. None without valid pixels."""
    pred = pred.reshape(target.shape)
    mask = positive(target)
    if not bool(mask.any()):
        return None
    p, g = pred[mask], target[mask]
    ratio = torch.maximum(p / g, g / p.clamp_min(1e-12))
    return float(((ratio < 1.25) & (p > 0)).double().mean())


# --------------------------------------------------------------------------- models


def conv_layer(cin: int, cout: int) -> nn.Sequential:
    """MTAN's ``conv_layer``: 3x3 conv, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegNetEncoderDecoder(nn.Module):
    """The shared part of MTAN's SegNet "split" (standard) model: image -> z.

    lorenmt/mtan ``im2im_pred/model_segnet_split.py``: five encoder stages (2, 2, 3, 3, 3
    conv layers, VGG-16-like) each followed by 2x2 max-pooling that keeps its indices, and
    the mirrored decoder with max-unpooling. z is the last decoder feature map,
    (N, filters[0], H, W). Unpooling is given each stage's size, so any H, W >= 32 works.
    """

    def __init__(self, filters: Sequence[int] = (64, 128, 256, 512, 512)) -> None:
        super().__init__()
        f = [int(x) for x in filters]
        if len(f) != 5 or min(f) < 1:
            raise ConfigError(f"segnet_filters needs 5 positive widths, got {filters}")
        self.encoder_block = nn.ModuleList([conv_layer(3, f[0])] + [conv_layer(f[i], f[i + 1]) for i in range(4)])
        self.decoder_block = nn.ModuleList([conv_layer(f[0], f[0])] + [conv_layer(f[i + 1], f[i]) for i in range(4)])
        enc, dec = [conv_layer(f[0], f[0])], [conv_layer(f[0], f[0])]
        for i in range(4):
            if i == 0:
                enc.append(conv_layer(f[1], f[1]))
                dec.append(conv_layer(f[0], f[0]))
            else:
                enc.append(nn.Sequential(conv_layer(f[i + 1], f[i + 1]), conv_layer(f[i + 1], f[i + 1])))
                dec.append(nn.Sequential(conv_layer(f[i], f[i]), conv_layer(f[i], f[i])))
        self.conv_block_enc, self.conv_block_dec = nn.ModuleList(enc), nn.ModuleList(dec)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        self.out_channels = f[0]
        init_like_mtan(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, sizes = [], []
        for i in range(5):
            x = self.conv_block_enc[i](self.encoder_block[i](x))
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        for i in reversed(range(5)):
            x = self.unpool(x, indices[i], output_size=sizes[i])
            x = self.conv_block_dec[i](self.decoder_block[i](x))
        return x


def init_like_mtan(module: nn.Module) -> None:
    """MTAN's initialisation: Xavier-normal conv weights, zero biases, unit batch-norm scales."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0.0)


class UnitNormal(nn.Module):
    """Scales each pixel's 3-vector to length 1 (MTAN: ``t3_pred / norm(t3_pred)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


class ImageNetStandardize(nn.Module):
    """[0, 1] RGB -> ImageNet-standardised input, what torchvision's ResNet weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_image(x)


def segnet_head(channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """MTAN's ``pred_task``: 3x3 conv then 1x1 conv to the task's channels (no activation
    between them, as in MTAN). Optional Dropout2d on z first (MTAN has none: p = 0)."""
    layers: list[nn.Module] = [nn.Dropout2d(dropout)] if dropout > 0 else []
    layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, out_channels, 1)]
    head = nn.Sequential(*layers)
    init_like_mtan(head)
    return head


# --------------------------------------------------------------------------- options


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def parse_int(name: str, value: Any, minimum: int = 0) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if out < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {out}")
    return out


def parse_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if str(value) not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def parse_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def parse_filters(value: Any) -> tuple[int, ...]:
    try:
        widths = tuple(int(x) for x in str(value).replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"segnet_filters must be 5 comma-separated widths, got {value!r}") from None
    if len(widths) != 5 or min(widths) < 1:
        raise ConfigError(f"segnet_filters must be 5 comma-separated widths, got {value!r}")
    return widths


# --------------------------------------------------------------------------- the problem


class NYUv2(Problem):
    name = "nyuv2"
    description = "NYUv2 (MTAN's preprocessed .npy): 13-class segmentation, depth, surface normals"
    pixel_stats = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # [0, 1] RGB as stored (the model standardises)

    def __init__(self, model: str = "segnet") -> None:
        if model not in MODELS:
            raise ConfigError(f"unknown NYUv2 model {model!r} (known: {', '.join(MODELS)})")
        self.model = model
        deeplab = MODELS[model] is not None
        self.defaults = {
            # MTAN / `000` Table 1: Adam, lr 1e-4, halved every 100 of 200 epochs; batch 8 as `003`, `001`.
            "lr": 1e-4,
            "batch_size": 8,
            "lr_decay": LR_STEP_DECAY,
            "lr_step_every": LR_STEP_EVERY,
            # torchvision's / LibMTL's DeepLab head ends its ASPP with Dropout(0.5); SegNet has none.
            "dropout": 0.5 if deeplab else 0.0,
            # Every split is resized to height x width when it differs (MTAN's is 288x384;
            # e.g. 32x48 for tests). At least 32: SegNet pools five times.
            "height": NATIVE_SIZE[0],
            "width": NATIVE_SIZE[1],
            "num_workers": 4,  # DataLoader workers; pinned memory whenever the device is CUDA
            "augment": True,  # zoom-crop + flip of training batches (Nash-MTL / CAGrad)
            # holdout: a validation split off train/ (159 of 795, `003` A3.1); test: train on all 795 and
            # select on the test images, as MTAN, LibMTL and Nash-MTL do (`000` Table 2)
            "validation": "holdout",
            "val_fraction": 0.2,  # of MTAN's train folder -> our validation split (159 of 795)
            "split_seed": 0,  # seed of that split
            # depth / normal errors over all valid pixels of a split (LibMTL) or per batch, then
            # averaged over batches (MTAN, Nash-MTL)
            "metric_average": "pooled",
            "pretrained": False,  # ImageNet weights for the ResNet (downloaded by torchvision)
            "segnet_filters": SEGNET_FILTERS,
        }

    @property
    def tasks(self) -> list[TaskSpec]:
        ref = _REFERENCE_SEGNET if MODELS[self.model] is None else _REFERENCE_DEEPLAB
        return [
            TaskSpec("segmentation", SEGMENTATION_METRICS, ref["segmentation"], "softmax"),
            TaskSpec("depth", DEPTH_METRICS, ref["depth"], "laplace"),
            TaskSpec("normal", NORMAL_METRICS, ref["normal"], "gaussian"),
        ]

    def _options(self, config: Mapping[str, Any]) -> dict[str, Any]:
        c = {**self.defaults, **config}
        pretrained = parse_bool("pretrained", c["pretrained"])
        if pretrained and MODELS[self.model] is None:
            raise ConfigError("pretrained applies to the ResNet models only (MTAN's SegNet trains from scratch)")
        return {
            "size": (parse_int("height", c["height"], minimum=32), parse_int("width", c["width"], minimum=32)),
            "num_workers": parse_int("num_workers", c["num_workers"]),
            "augment": parse_bool("augment", c["augment"]),
            "validation": parse_choice("validation", c["validation"], VALIDATION),
            "val_fraction": parse_float("val_fraction", c["val_fraction"]),
            "split_seed": parse_int("split_seed", c["split_seed"]),
            "metric_average": parse_choice("metric_average", c["metric_average"], METRIC_AVERAGE),
            "pretrained": pretrained,
            "filters": parse_filters(c["segnet_filters"]),
            "batch_size": parse_int("batch_size", c["batch_size"], minimum=1),
            "dropout": parse_float("dropout", c["dropout"]),
        }

    def new_metrics(self, config: Mapping[str, Any] | None = None) -> MetricAccumulator:
        """The split's accumulator, depth and normal errors averaged as ``metric_average`` says."""
        average = self._options(config or {})["metric_average"]
        return MetricAccumulator(averaged_metrics(average))

    def prepare(self, data_dir: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
        """Find and check the MTAN layout once, on the driver (a one-line DataError if absent)."""
        self._options(config)  # bad options fail here, before any trial starts
        root = find_root(data_dir)
        for split in ("train", "val"):
            sample_count(root / split)
            check_sample(root / split, 0)
        return {"root": str(root.resolve()), "source": "mtan_npy"}

    def load(
        self, data: Mapping[str, Any], config: Mapping[str, Any], generator: torch.Generator, device: torch.device
    ) -> Splits:
        if "root" not in data:
            data = self.prepare(None, config)  # raises the one-line DataError
        o = self._options(config)
        root = Path(data["root"])
        if o["validation"] == "test":
            # MTAN, LibMTL, Nash-MTL (`000`): train on all of train/, select on the test images
            datasets = {
                "train": NYUv2Npy(root / "train", None, o["size"], augment=o["augment"]),
                "val": NYUv2Npy(root / "val", None, o["size"]),
                "test": NYUv2Npy(root / "val", None, o["size"]),
            }
            where = "validation = test (MTAN's val/: the epoch is picked on the test images, as MTAN and LibMTL do)"
        else:
            train_idx, val_idx = validation_indices(sample_count(root / "train"), o["val_fraction"], o["split_seed"])
            datasets = {
                "train": NYUv2Npy(root / "train", train_idx, o["size"], augment=o["augment"]),
                "val": NYUv2Npy(root / "train", val_idx, o["size"]),
                "test": NYUv2Npy(root / "val", None, o["size"]),
            }
            where = f"validation = {len(val_idx)} held-out train images (seed {o['split_seed']}), test = MTAN's val/"
        loaders = split_loaders(datasets, o["batch_size"], o["num_workers"], device, generator, o["split_seed"])
        sizes = {split: len(d) for split, d in datasets.items()}
        return Splits(loaders["train"], loaders["val"], loaders["test"], f"MTAN npy ({root}): {where}", sizes)

    def build_model(self, config: Mapping[str, Any]) -> MTLModel:
        o = self._options(config)
        outs = {"segmentation": NUM_CLASSES, "depth": 1, "normal": 3}
        backbone = MODELS[self.model]
        if self.model == "segnet_mtan":
            from trainables.problems.mtan import MTANShared, MTANTaskHead

            shared = MTANShared(o["filters"])
            heads: dict[str, nn.Module] = {t: MTANTaskHead(shared, n, o["dropout"]) for t, n in outs.items()}
            heads["normal"] = nn.Sequential(heads["normal"], UnitNormal())
            return MTLModel(shared, heads)
        if backbone is None:
            encoder = SegNetEncoderDecoder(o["filters"])
            heads = {t: segnet_head(encoder.out_channels, n, o["dropout"]) for t, n in outs.items()}
            heads["normal"] = nn.Sequential(heads["normal"], UnitNormal())
            return MTLModel(encoder, heads)
        try:
            resnet = ResNetEncoder(backbone, pretrained=o["pretrained"], dilated=True)
        except OSError as err:  # urllib's URLError included: the weights could not be fetched
            raise DataError(f"could not get the ImageNet weights of {backbone} ({err}); put them in torch's hub "
                            f"cache (torch.hub.get_dir()/checkpoints) or use --param pretrained=false") from None
        heads = {t: deeplab_head(resnet, n, output_size=o["size"], dropout=o["dropout"]) for t, n in outs.items()}
        heads["normal"] = nn.Sequential(heads["normal"], UnitNormal())
        return MTLModel(nn.Sequential(ImageNetStandardize(), resnet), heads)

    def loss(self, task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if task == "segmentation":
            return segmentation_loss(output, target, IGNORE_INDEX)
        if task == "depth":
            return masked_l1_loss(output, target, positive)
        return normal_loss(output, target)

    def kpi(self, task: str, output: torch.Tensor, target: torch.Tensor) -> float | None:
        """Per-batch task accuracies in [0, 1] as `001` (AMTL) uses them on NYUv2: mIoU,
        depth delta_1, normals within 11.25 degrees."""
        if task == "segmentation":
            value = mean_iou(*iou_statistics(output, target, NUM_CLASSES, IGNORE_INDEX))
            return None if math.isnan(value) else value
        if task == "depth":
            return depth_delta1(output, target)
        hits, total = within(ANGLE_THRESHOLDS[0])(output, target)
        return hits / total if total else None


__all__ = [
    "NYUv2",
    "NYUv2Npy",
    "SegNetEncoderDecoder",
    "NORMAL_METRICS",
    "METRIC_AVERAGE",
    "averaged_metrics",
    "batch_median_angle",
    "find_root",
    "histogram_median",
    "normal_angles",
    "normal_loss",
    "scale_crop",
    "hflip",
    "resize_sample",
    "validation_indices",
]
