"""Task metrics and the multi-task score.

Each metric is computed from per-batch sufficient statistics (a sum and a count) so that
an epoch's value is exact whatever the batch size; ``per_batch`` turns a metric into the mean
of its per-batch values instead (how MTAN and Nash-MTL average NYUv2's depth and normal
errors). ``delta_m`` is `002` eq. (1).
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping, Union

import torch

# A metric maps (output, target) of one batch to sufficient statistics (sum, count), each a
# float or a tensor (e.g. per-class intersections and unions); they add up over batches and
# the value is ``reduce(sum, count)``, by default sum / count.
Stat = Union[float, torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], tuple[Stat, Stat]]
ReduceFn = Callable[[Stat, Stat], float]


def ratio(total: Stat, count: Stat) -> float:
    """The default reduction: sum / count (NaN when nothing was counted)."""
    total, count = float(total), float(count)
    return total / count if count else math.nan


@dataclass(frozen=True)
class MetricSpec:
    """A named metric with its direction, the per-batch statistics and their reduction."""

    name: str
    higher_is_better: bool
    fn: MetricFn
    reduce: ReduceFn = ratio
    #: How the papers print it: ``value * scale`` in ``unit`` (e.g. a fraction x 100 in "%"); what
    #: runs log is the value itself.
    unit: str = ""
    scale: float = 1.0

    def shown(self, unit: str, scale: float = 1.0) -> "MetricSpec":
        """The same metric, printed in ``unit`` (x ``scale``) by reports."""
        return dataclasses.replace(self, unit=unit, scale=scale)


#: A metric's value on one batch computed directly (e.g. an exact median); None when the batch has
#: nothing to count.
BatchValueFn = Callable[[torch.Tensor, torch.Tensor], Union[float, None]]


def per_batch(spec: MetricSpec, batch_value: BatchValueFn | None = None) -> MetricSpec:
    """``spec`` averaged per batch: each batch's own value, then the mean of those over batches.

    MTAN (lorenmt/mtan ``im2im_pred/utils.py``, ``multi_task_trainer``) and Nash-MTL
    (AvivNavon/nash-mtl ``experiments/nyuv2/trainer.py``) form an epoch's depth and normal
    errors as ``avg_cost += cost / test_batch``: the mean of per-batch values, every batch
    weighing the same whatever its number of valid pixels. The batch's value is
    ``batch_value(output, target)`` when given (an exact per-batch statistic) and else
    ``spec.reduce`` of the batch's own statistics. A batch with nothing to count (value None or
    NaN: no valid pixel) is left out of the mean; MTAN's would put a NaN into the epoch's value.
    """

    def fn(output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        if batch_value is not None:
            value = batch_value(output, target)
        else:
            value = spec.reduce(*spec.fn(output, target))
        if value is None or math.isnan(float(value)):
            return 0.0, 0.0
        return float(value), 1.0

    return dataclasses.replace(spec, fn=fn, reduce=ratio)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Top-1 accuracy: (number correct, number of samples)."""
    correct = (logits.argmax(dim=-1) == target).sum().item()
    return float(correct), float(target.numel())


def mean_squared_error(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """MSE over every element: (sum of squared errors, number of elements)."""
    sq = (pred.reshape(target.shape) - target).pow(2).sum().item()
    return float(sq), float(target.numel())


def mean_absolute_error(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """MAE over every element: (sum of absolute errors, number of elements)."""
    ab = (pred.reshape(target.shape) - target).abs().sum().item()
    return float(ab), float(target.numel())


def identity_value(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """For problems whose 'output' already is the metric value (the 2-D toy objectives)."""
    return float(pred.sum().item()), float(pred.numel())


class MetricAccumulator:
    """Accumulates every task's metrics over the batches of one split."""

    def __init__(self, task_metrics: Mapping[str, tuple[MetricSpec, ...]]) -> None:
        self.task_metrics = task_metrics
        self._sums: dict[str, dict[str, Stat]] = {t: {m.name: 0.0 for m in ms} for t, ms in task_metrics.items()}
        self._counts: dict[str, dict[str, Stat]] = {t: {m.name: 0.0 for m in ms} for t, ms in task_metrics.items()}

    def update(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        for task, specs in self.task_metrics.items():
            for spec in specs:
                s, c = spec.fn(outputs[task], targets[task])
                self._sums[task][spec.name] += s
                self._counts[task][spec.name] += c

    def compute(self) -> dict[str, dict[str, float]]:
        return {
            t: {m.name: float(m.reduce(self._sums[t][m.name], self._counts[t][m.name])) for m in specs}
            for t, specs in self.task_metrics.items()
        }


def delta_m(
    metrics: Mapping[str, Mapping[str, float]],
    reference: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
    tasks: list[str] | None = None,
) -> float:
    """Mean relative change (in %) against single-task references, `002` eq. (1).

    Delta_m = 1/T sum_t 1/|M_t| sum_m (-1)^{l_m} (M_m - M_ref,m) / M_ref,m * 100, with
    l_m = 1 when lower is better: averaged within a task over its metrics first, then over
    tasks. Positive means better than the references.
    """
    tasks = list(metrics) if tasks is None else tasks
    per_task = []
    for t in tasks:
        changes = []
        for m, value in metrics[t].items():
            ref = reference[t][m]
            sign = 1.0 if higher_is_better[t][m] else -1.0
            changes.append(sign * (value - ref) / abs(ref) * 100.0)
        per_task.append(sum(changes) / len(changes))
    return sum(per_task) / len(per_task)
