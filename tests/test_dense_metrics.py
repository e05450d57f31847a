"""Dense-prediction metrics and losses on hand-worked examples (trainables/dense_metrics.py)."""

from __future__ import annotations

import math

import pytest
import torch

from trainables import dense_metrics as dm
from trainables.metrics import MetricAccumulator, per_batch


def one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) predicted labels -> (N, C, H, W) logits whose argmax is that label."""
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


# A 2x3 image, 3 classes, one ignored pixel (-1):
#   target  0  0  1        prediction  0  1  1
#           2 -1  2                    2  0  0
# Counted pixels (5): (0,0) 0->0 ok, (0,0) 0->1, 1->1 ok, 2->2 ok, 2->0.
# Confusion (rows target, cols prediction):
#   [[1, 1, 0],
#    [0, 1, 0],
#    [1, 0, 1]]
# IoU_0 = 1 / (2 + 2 - 1) = 1/3; IoU_1 = 1 / (1 + 2 - 1) = 1/2; IoU_2 = 1 / (2 + 1 - 1) = 1/2.
TARGET = torch.tensor([[[0, 0, 1], [2, -1, 2]]])
PRED = torch.tensor([[[0, 1, 1], [2, 0, 0]]])


def test_confusion_matrix_skips_ignored_pixels():
    conf = dm.confusion_matrix(one_hot_logits(PRED, 3), TARGET, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    # integer predictions are taken as labels directly
    assert torch.equal(dm.confusion_matrix(PRED, TARGET, 3), conf)


def test_pixel_accuracy_and_miou_by_hand():
    logits = one_hot_logits(PRED, 3)
    assert dm.pixel_accuracy(logits, TARGET) == (3.0, 5.0)
    inter, union = dm.iou_statistics(logits, TARGET, 3)
    assert inter.tolist() == [1.0, 1.0, 1.0]
    assert union.tolist() == [3.0, 2.0, 2.0]
    assert dm.mean_iou(inter, union) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)


def test_miou_excludes_classes_absent_from_prediction_and_target():
    # class 3 of 4 never occurs: its union is 0 and it does not count as IoU 0 (or NaN)
    inter, union = dm.iou_statistics(one_hot_logits(PRED, 4), TARGET, 4)
    assert union[3] == 0
    assert dm.mean_iou(inter, union) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    # but a class predicted and never in the target counts with IoU 0
    pred = torch.tensor([[[3, 1, 1], [2, 0, 0]]])  # pixel (0,0): 0 -> 3
    inter, union = dm.iou_statistics(pred, TARGET, 4)
    # IoU_0: target 0 twice, predicted 0 once (at (1,2)), never both -> 0 / 3; IoU_3 = 0 / 1
    assert inter.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert union.tolist() == [3.0, 2.0, 2.0, 1.0]
    assert dm.mean_iou(inter, union) == pytest.approx((0 + 0.5 + 0.5 + 0) / 4)
    assert math.isnan(dm.mean_iou(torch.zeros(3), torch.zeros(3)))


def test_metric_specs_accumulate_over_batches_like_one_batch():
    """mIoU from summed per-class statistics over two batches equals the whole-split value,
    which differs from the mean of per-batch mIoUs."""
    logits = one_hot_logits(PRED, 3)
    specs = (dm.pixel_accuracy_metric(), dm.miou_metric(3))
    whole = MetricAccumulator({"seg": specs})
    whole.update({"seg": logits}, {"seg": TARGET})
    split = MetricAccumulator({"seg": specs})
    split.update({"seg": logits[..., :1, :]}, {"seg": TARGET[..., :1, :]})  # first row
    split.update({"seg": logits[..., 1:, :]}, {"seg": TARGET[..., 1:, :]})  # second row
    a, b = whole.compute()["seg"], split.compute()["seg"]
    assert a["pixel_acc"] == pytest.approx(3 / 5) and b["pixel_acc"] == pytest.approx(3 / 5)
    assert a["miou"] == pytest.approx(4 / 9) and b["miou"] == pytest.approx(4 / 9)
    # per-batch means: row 1 IoU_0 = 1/2, IoU_1 = 1/2 -> 1/2; row 2 IoU_0 = 0, IoU_2 = 1/2 -> 1/4
    assert (0.5 + 0.25) / 2 != pytest.approx(a["miou"])
    assert dm.miou_metric(3).higher_is_better and dm.pixel_accuracy_metric().higher_is_better


def test_segmentation_loss_ignores_labels():
    logits = torch.randn(1, 3, 2, 3, requires_grad=True)
    loss = dm.segmentation_loss(logits, TARGET)
    flat = logits.permute(0, 2, 3, 1).reshape(-1, 3)
    keep = TARGET.reshape(-1) != -1
    expected = torch.nn.functional.cross_entropy(flat[keep], TARGET.reshape(-1)[keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    empty = dm.segmentation_loss(logits, torch.full_like(TARGET, -1))
    assert empty.item() == 0.0 and empty.requires_grad


# Disparity / depth: 0 = invalid. target [[2, 0], [4, 1]], prediction [[3, 5], [3, 1.5]]
# valid: 2, 4, 1 -> |errors| 1, 1, 0.5 -> abs = 2.5 / 3; rel = (1/2 + 1/4 + 0.5/1) / 3 = 1.25 / 3.
DEPTH = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
DEPTH_PRED = torch.tensor([[[[3.0, 5.0], [3.0, 1.5]]]])


def test_masked_abs_and_rel_error_on_valid_pixels_only():
    assert dm.masked_abs_error(DEPTH_PRED, DEPTH) == (2.5, 3.0)
    s, c = dm.masked_rel_error(DEPTH_PRED, DEPTH)
    assert (s, c) == (pytest.approx(1.25), 3.0)
    acc = MetricAccumulator({"d": (dm.abs_error_metric(), dm.rel_error_metric())})
    acc.update({"d": DEPTH_PRED}, {"d": DEPTH})
    values = acc.compute()["d"]
    assert values["abs_err"] == pytest.approx(2.5 / 3)
    assert values["rel_err"] == pytest.approx(1.25 / 3)
    assert not dm.abs_error_metric().higher_is_better and not dm.rel_error_metric().higher_is_better
    # a prediction of shape (N, H, W) is compared in the target's shape
    assert dm.masked_abs_error(DEPTH_PRED[:, 0], DEPTH) == (2.5, 3.0)


def test_masked_l1_loss_and_instance_l1_with_nan_as_invalid():
    pred = DEPTH_PRED.clone().requires_grad_(True)
    loss = dm.masked_l1_loss(pred, DEPTH)
    assert loss.item() == pytest.approx(2.5 / 3)
    loss.backward()
    # the invalid pixel gets no gradient
    assert pred.grad[0, 0, 0, 1] == 0 and pred.grad[0, 0, 0, 0] == pytest.approx(1 / 3)
    # instance offsets: NaN marks pixels of no instance
    target = torch.tensor([[[[1.0, math.nan]], [[-2.0, math.nan]]]])  # (1, 2, 1, 2)
    out = torch.tensor([[[[0.0, 7.0]], [[0.0, 7.0]]]])
    assert dm.masked_abs_error(out, target, dm.finite) == (3.0, 2.0)
    acc = MetricAccumulator({"i": (dm.l1_metric(),)})
    acc.update({"i": out}, {"i": target})
    assert acc.compute()["i"]["l1"] == pytest.approx(1.5)
    assert dm.masked_l1_loss(out, target, dm.finite).item() == pytest.approx(1.5)
    none = dm.masked_l1_loss(out.requires_grad_(True), torch.full_like(target, math.nan), dm.finite)
    assert none.item() == 0.0 and none.requires_grad


def test_per_batch_mean_differs_from_pooled_by_hand():
    """Batch 1: one valid pixel (target 2, prediction 6: |error| 4, relative 2) and one invalid;
    batch 2: three valid pixels predicted exactly. Pooled over the 4 valid pixels: abs 4/4 = 1,
    rel 2/4 = 0.5. Per batch (MTAN's ``avg_cost += cost / test_batch``): abs (4 + 0)/2 = 2,
    rel (2 + 0)/2 = 1. A third batch without a valid pixel is left out of the per-batch mean."""
    b1 = (torch.tensor([6.0, 9.0]).view(1, 1, 1, 2), torch.tensor([2.0, 0.0]).view(1, 1, 1, 2))
    b2 = (torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 1, 3), torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 1, 3))
    empty = (torch.tensor([5.0]).view(1, 1, 1, 1), torch.tensor([0.0]).view(1, 1, 1, 1))
    pooled_specs = (dm.abs_error_metric(), dm.rel_error_metric())
    per_batch_specs = tuple(per_batch(m) for m in pooled_specs)

    def run(specs):
        acc = MetricAccumulator({"d": specs})
        for out, tgt in (b1, b2, empty):
            acc.update({"d": out}, {"d": tgt})
        return acc.compute()["d"]

    assert run(pooled_specs) == {"abs_err": pytest.approx(1.0), "rel_err": pytest.approx(0.5)}
    assert run(per_batch_specs) == {"abs_err": pytest.approx(2.0), "rel_err": pytest.approx(1.0)}
    # the wrapped metric keeps its name, direction and printing
    shown = per_batch(dm.abs_error_metric().shown("m"))
    assert (shown.name, shown.higher_is_better, shown.unit) == ("abs_err", False, "m")
    # nothing valid in any batch: NaN, as pooled
    acc = MetricAccumulator({"d": per_batch_specs})
    acc.update({"d": empty[0]}, {"d": empty[1]})
    assert all(math.isnan(v) for v in acc.compute()["d"].values())
