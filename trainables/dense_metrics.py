"""Metrics and losses of dense (per-pixel) prediction, shared by Cityscapes and NYUv2.

Segmentation: pixel accuracy and mean IoU from the confusion over a whole split (the
intersections and unions add over batches, so the value is exact whatever the batch size),
pixels labelled ``ignore_index`` left out. Regression (depth, disparity, instance offsets):
absolute / relative error and L1 over *valid* pixels only, where validity is a predicate on
the target (``positive``: depth and disparity with 0 = invalid, as MTAN and Nash-MTL mask
them; ``finite``: targets with NaN where undefined, e.g. instance offsets off instances).

Reference formulas: MTAN (lorenmt/mtan, ``utils.py``: ``ConfMatrix`` for mIoU / pixel
accuracy, ``depth_error`` for abs / rel error on ``binary_mask = depth != 0``) and Nash-MTL
(AvivNavon/nash-mtl, ``experiments/cityscapes/utils.py``). Unlike MTAN, whose mIoU averages
every class (NaN when a class is absent), classes absent from both the prediction and the
target of the whole split (union 0) are left out of the mean; and errors are averaged over
all valid pixels of the split rather than per batch (``trainables.metrics.per_batch`` gives
MTAN's per-batch mean instead: NYUv2's option ``metric_average``).

Each ``*_metric`` builder returns a ``trainables.metrics.MetricSpec``; the plain functions
take logits / predictions and targets of one batch.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from trainables.metrics import MetricSpec, Stat

#: Default label of pixels without a class (MTAN's preprocessed Cityscapes / NYUv2 use -1).
IGNORE_INDEX = -1

#: A validity predicate: target -> boolean mask of the same shape.
Validity = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- validity


def positive(target: torch.Tensor) -> torch.Tensor:
    """Valid where the target is > 0: depth / disparity with 0 = missing (MTAN's mask)."""
    return target > 0


def finite(target: torch.Tensor) -> torch.Tensor:
    """Valid where the target is finite: NaN marks undefined pixels (e.g. off instances)."""
    return torch.isfinite(target)


def _as_target_shape(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return pred.reshape(target.shape) if pred.shape != target.shape else pred


# --------------------------------------------------------------------------- segmentation


def confusion_matrix(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Confusion counts (C, C), rows = target class, columns = predicted class.

    ``logits`` (N, C, H, W) (or already predicted labels (N, H, W) of integer dtype),
    ``target`` (N, H, W) integer labels; pixels with ``ignore_index`` (or any label outside
    [0, C)) are skipped. As MTAN's ``ConfMatrix.update`` (bincount of C * target + pred).
    """
    pred = logits if not logits.is_floating_point() else logits.argmax(dim=1)
    pred, target = pred.reshape(-1), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_statistics(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class (intersection, union) counts, float64 on the CPU; both add over batches.

    IoU_c = TP_c / (TP_c + FP_c + FN_c) = diag / (row sum + column sum - diag).
    """
    conf = confusion_matrix(logits, target, num_classes, ignore_index).double().cpu()
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    return inter.clone(), union


def mean_iou(intersection: Stat, union: Stat) -> float:
    """Mean of per-class IoU over the classes present in prediction or target (union > 0).

    NaN when no class is present at all (an empty split).
    """
    inter = torch.as_tensor(intersection, dtype=torch.float64)
    union = torch.as_tensor(union, dtype=torch.float64)
    present = union > 0
    if not bool(present.any()):
        return math.nan
    return float((inter[present] / union[present]).mean())


def pixel_accuracy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[float, float]:
    """(correctly labelled pixels, labelled pixels); ignored pixels count in neither."""
    pred = logits if not logits.is_floating_point() else logits.argmax(dim=1)
    valid = target != ignore_index
    correct = ((pred == target) & valid).sum().item()
    return float(correct), float(valid.sum().item())


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise cross-entropy ignoring ``ignore_index`` (0 with a graph if a batch has no label)."""
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)


def miou_metric(num_classes: int, ignore_index: int = IGNORE_INDEX, name: str = "miou") -> MetricSpec:
    """Mean IoU over the split (vector statistics: per-class intersections and unions)."""

    def fn(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return iou_statistics(logits, target, num_classes, ignore_index)

    return MetricSpec(name, higher_is_better=True, fn=fn, reduce=mean_iou)


def pixel_accuracy_metric(ignore_index: int = IGNORE_INDEX, name: str = "pixel_acc") -> MetricSpec:
    """Fraction of labelled pixels predicted right, over the split."""

    def fn(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        return pixel_accuracy(logits, target, ignore_index)

    return MetricSpec(name, higher_is_better=True, fn=fn)


# --------------------------------------------------------------------------- regression


def masked_abs_error(pred: torch.Tensor, target: torch.Tensor, valid: Validity = positive) -> tuple[float, float]:
    """(sum of |pred - target|, number of valid elements) over elements where ``valid(target)``.

    MTAN ``depth_error``: abs_err = sum |x_pred - x_true| / #valid on the valid mask.
    """
    pred = _as_target_shape(pred, target)
    mask = valid(target)
    err = (pred[mask] - target[mask]).abs().sum().item()
    return float(err), float(mask.sum().item())


def masked_rel_error(pred: torch.Tensor, target: torch.Tensor, valid: Validity = positive) -> tuple[float, float]:
    """(sum of |pred - target| / |target|, number of valid elements) over valid elements.

    MTAN ``depth_error``: rel_err = sum |x_pred - x_true| / x_true / #valid. ``valid`` must
    exclude zero targets (``positive`` does).
    """
    pred = _as_target_shape(pred, target)
    mask = valid(target)
    t = target[mask]
    err = ((pred[mask] - t).abs() / t.abs()).sum().item()
    return float(err), float(mask.sum().item())


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, valid: Validity = positive) -> torch.Tensor:
    """Mean |pred - target| over valid elements, differentiable (0 with a graph if none valid).

    The training loss of depth / disparity (MTAN ``model_fit``: L1 on ``binary_mask``) and
    of instance offsets (Kendall et al. 2018 §3.3: L1 on pixels of instances).
    """
    pred = _as_target_shape(pred, target)
    mask = valid(target)
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return (pred[mask] - target[mask]).abs().mean()


def abs_error_metric(valid: Validity = positive, name: str = "abs_err") -> MetricSpec:
    """Mean absolute error on valid pixels over the split (lower is better)."""

    def fn(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        return masked_abs_error(pred, target, valid)

    return MetricSpec(name, higher_is_better=False, fn=fn)


def rel_error_metric(valid: Validity = positive, name: str = "rel_err") -> MetricSpec:
    """Mean relative error |pred - target| / target on valid pixels over the split (lower is better)."""

    def fn(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        return masked_rel_error(pred, target, valid)

    return MetricSpec(name, higher_is_better=False, fn=fn)


def l1_metric(valid: Validity = finite, name: str = "l1") -> MetricSpec:
    """Mean L1 error per valid element over the split (lower is better); for instance offsets."""

    def fn(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        return masked_abs_error(pred, target, valid)

    return MetricSpec(name, higher_is_better=False, fn=fn)


__all__ = [
    "IGNORE_INDEX",
    "Validity",
    "positive",
    "finite",
    "confusion_matrix",
    "iou_statistics",
    "mean_iou",
    "pixel_accuracy",
    "segmentation_loss",
    "miou_metric",
    "pixel_accuracy_metric",
    "masked_abs_error",
    "masked_rel_error",
    "masked_l1_loss",
    "abs_error_metric",
    "rel_error_metric",
    "l1_metric",
]
