"""Task metrics, their exact pooling over batches, and Delta_m (`002` eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.metrics import (
    MetricAccumulator,
    MetricSpec,
    accuracy,
    delta_m,
    mean_absolute_error,
    mean_squared_error,
)
from trainables.problems.multi_mnist import MultiMNIST

ACC = MetricSpec("accuracy", True, accuracy)
MSE = MetricSpec("mse", False, mean_squared_error)
MAE = MetricSpec("mae", False, mean_absolute_error)


# --------------------------------------------------------------------------- single-batch metrics


def test_accuracy_three_of_four():
    """argmax per row vs target: rows 0, 1, 3 right, row 2 wrong -> (3, 4)."""
    logits = torch.tensor(
        [
            [2.0, 0.1, 0.3],  # 0
            [0.0, 1.0, -1.0],  # 1
            [5.0, 4.0, 0.0],  # 0, target 2 -> wrong
            [0.0, 0.0, 9.0],  # 2
        ]
    )
    target = torch.tensor([0, 1, 2, 2])
    assert accuracy(logits, target) == (3.0, 4.0)


def test_mean_squared_error_hand_worked():
    """errors 1, 0, 0, -2 -> squared sum 5 over 4 elements."""
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    assert mean_squared_error(pred, target) == (5.0, 4.0)


def test_mean_absolute_error_hand_worked():
    """errors 1, 0, 0, -2 -> absolute sum 3 over 4 elements."""
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    assert mean_absolute_error(pred, target) == (3.0, 4.0)


def test_regression_metrics_reshape_prediction_to_target():
    """A (N, 1) prediction against an (N,) target is compared element-wise, not broadcast to (N, N)."""
    pred = torch.tensor([[1.0], [2.0], [4.0]])
    target = torch.tensor([1.0, 1.0, 1.0])
    assert mean_squared_error(pred, target) == (0.0 + 1.0 + 9.0, 3.0)
    assert mean_absolute_error(pred, target) == (0.0 + 1.0 + 3.0, 3.0)


# --------------------------------------------------------------------------- pooling over batches


def test_accumulator_pools_exactly_over_uneven_batches():
    """Batch 1: 2/2 right, batch 2: 0/3 right -> 2/5 = 0.4 (the mean of batch means would be 0.5)."""
    acc = MetricAccumulator({"C": (ACC,)})
    acc.update({"C": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, {"C": torch.tensor([0, 1])})
    acc.update({"C": torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])}, {"C": torch.tensor([1, 1, 1])})
    assert acc.compute() == {"C": {"accuracy": pytest.approx(0.4)}}


def test_accumulator_mse_pooled_by_elements():
    """Batch 1: 1 sample x 2 values, sq err 8; batch 2: 3 samples x 2 values, sq err 1 -> 9/8."""
    acc = MetricAccumulator({"R": (MSE, MAE)})
    acc.update({"R": torch.tensor([[2.0, 2.0]])}, {"R": torch.zeros(1, 2)})
    acc.update({"R": torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])}, {"R": torch.zeros(3, 2)})
    result = acc.compute()["R"]
    assert result["mse"] == pytest.approx(9.0 / 8.0)  # batch means 4 and 1/6 would average to 2.083
    assert result["mae"] == pytest.approx(5.0 / 8.0)


def test_accumulator_several_tasks_independent():
    """Each task accumulates from its own outputs and targets."""
    acc = MetricAccumulator({"C": (ACC,), "R": (MSE,)})
    outputs = {"C": torch.tensor([[0.0, 1.0], [0.0, 1.0]]), "R": torch.tensor([3.0, 1.0])}
    targets = {"C": torch.tensor([1, 0]), "R": torch.tensor([1.0, 1.0])}
    acc.update(outputs, targets)
    assert acc.compute() == {"C": {"accuracy": 0.5}, "R": {"mse": 2.0}}


def test_accumulator_without_batches_is_nan():
    """No batch seen: the value is NaN (0/0), not 0."""
    value = MetricAccumulator({"C": (ACC,)}).compute()["C"]["accuracy"]
    assert math.isnan(value)


# --------------------------------------------------------------------------- Delta_m


def test_delta_m_averages_within_task_then_over_tasks():
    """A: acc 0.8 vs 0.5 (+60 %), err 0.3 vs 0.2 (lower better: -50 %) -> +5; B: mse 0.09 vs 0.1 -> +10.

    Delta_m = (5 + 10) / 2 = 7.5 (a flat mean over the three metrics would give 6.667).
    """
    metrics = {"A": {"acc": 0.8, "err": 0.3}, "B": {"mse": 0.09}}
    reference = {"A": {"acc": 0.5, "err": 0.2}, "B": {"mse": 0.1}}
    hib = {"A": {"acc": True, "err": False}, "B": {"mse": False}}
    assert delta_m(metrics, reference, hib) == pytest.approx(7.5)


def test_delta_m_sign_conventions():
    """Higher-better going up and lower-better going down are both gains (positive), in percent."""
    hib = {"T": {"m": True}}
    assert delta_m({"T": {"m": 1.1}}, {"T": {"m": 1.0}}, hib) == pytest.approx(10.0)
    assert delta_m({"T": {"m": 0.9}}, {"T": {"m": 1.0}}, hib) == pytest.approx(-10.0)
    low = {"T": {"m": False}}
    assert delta_m({"T": {"m": 0.9}}, {"T": {"m": 1.0}}, low) == pytest.approx(10.0)
    assert delta_m({"T": {"m": 1.25}}, {"T": {"m": 1.0}}, low) == pytest.approx(-25.0)
    assert delta_m({"T": {"m": 2.0}}, {"T": {"m": 2.0}}, low) == 0.0


def test_delta_m_task_subset():
    """``tasks`` restricts the average to the listed tasks."""
    metrics = {"A": {"m": 2.0}, "B": {"m": 0.5}}
    reference = {"A": {"m": 1.0}, "B": {"m": 1.0}}
    hib = {"A": {"m": True}, "B": {"m": True}}
    assert delta_m(metrics, reference, hib) == pytest.approx((100.0 - 50.0) / 2)
    assert delta_m(metrics, reference, hib, ["A"]) == pytest.approx(100.0)
    assert delta_m(metrics, reference, hib, ["B"]) == pytest.approx(-50.0)


CITYSCAPES_TASKS = {
    "segmentation": {"acc": True, "miou": True},
    "disparity": {"l1_abs": False, "l1_rel": False},
    "instance": {"l1_abs": False},
}

# `002` Table 4 (Cityscapes): per-metric relative changes (%) and the reported avg.
TABLE_4 = {
    "IMTL": ([-0.224, -2.759, 3.017, 0.993, 1.195], 0.570),
    "EDM": ([-0.225, -3.174, 0.990, -1.051, 2.468], 0.246),
    "Unit. Scal.": ([-2.120, -16.78, -8.542, -11.41, 3.492], -5.312),
    "CDTT": ([-0.948, -8.954, 2.043, -0.224, 0.472], -1.190),
    "FAMO": ([-0.274, -3.268, 0.755, -2.212, 2.339], -0.054),
    "RotoGrad": ([-0.453, -4.484, 0.303, -3.493, -1.659], -1.908),
}


def metrics_with_changes(tasks: dict[str, dict[str, bool]], changes: list[float]):
    """Reference 1.0 everywhere; metric = 1 + c/100 (higher better) or 1 - c/100 (lower better)."""
    values = iter(changes)
    metrics, reference = {}, {}
    for task, specs in tasks.items():
        metrics[task], reference[task] = {}, {}
        for name, higher in specs.items():
            c = next(values)
            metrics[task][name] = 1.0 + c / 100.0 if higher else 1.0 - c / 100.0
            reference[task][name] = 1.0
    return metrics, reference


@pytest.mark.parametrize("method", list(TABLE_4))
def test_delta_m_reproduces_002_table_4(method):
    """Delta_m of per-metric changes equal to Table 4's columns gives the table's avg (rounded to 1e-3)."""
    changes, avg = TABLE_4[method]
    metrics, reference = metrics_with_changes(CITYSCAPES_TASKS, changes)
    assert delta_m(metrics, reference, CITYSCAPES_TASKS) == pytest.approx(avg, abs=1e-3)


# `002` Table 3 (Multi-MNIST CL_RR): CL accuracy and RR MSE changes (%) and the avg.
TABLE_3 = {
    "Unit. Scal.": (-1.043, -16.86, -8.952),
    "IMTL": (-2.513, -1.975, -2.244),
    "FAMO": (-4.587, -0.745, -2.666),
}


@pytest.mark.parametrize("method", list(TABLE_3))
def test_delta_m_reproduces_002_table_3(method):
    """Two single-metric tasks (accuracy up, MSE down) reproduce Table 3's avg."""
    cl, rr, avg = TABLE_3[method]
    tasks = {"CL": {"accuracy": True}, "RR": {"mse": False}}
    metrics, reference = metrics_with_changes(tasks, [cl, rr])
    assert delta_m(metrics, reference, tasks) == pytest.approx(avg, abs=1e-3)


def test_delta_m_uses_reference_scale():
    """The change is relative: acc 0.45 vs ref 0.5 and 0.9 vs 1.0 are both -10 %."""
    hib = {"T": {"m": True}}
    assert delta_m({"T": {"m": 0.45}}, {"T": {"m": 0.5}}, hib) == pytest.approx(-10.0)
    assert delta_m({"T": {"m": 0.9}}, {"T": {"m": 1.0}}, hib) == pytest.approx(-10.0)


# --------------------------------------------------------------------------- Problem.score


@pytest.mark.parametrize("variant", ["CL_CR", "CL_RR", "RL_RR"])
def test_problem_score_is_delta_m_against_nominal_references(variant):
    """MultiMNIST.score = delta_m against accuracy 0.93 (C tasks) and MSE 0.31 (R tasks)."""
    problem = MultiMNIST(variant)
    values = {"C": {"accuracy": 0.837}, "R": {"mse": 0.372}}  # -10 % and -20 %
    metrics = {t: values[t[0]] for t in problem.task_names}
    reference = {t: {"C": {"accuracy": 0.93}, "R": {"mse": 0.31}}[t[0]] for t in problem.task_names}
    hib = {t: {"C": {"accuracy": True}, "R": {"mse": False}}[t[0]] for t in problem.task_names}
    expected = {"CL_CR": -10.0, "CL_RR": -15.0, "RL_RR": -20.0}[variant]
    score = problem.score(metrics, problem.task_names)
    assert score == pytest.approx(expected)
    assert score == pytest.approx(delta_m(metrics, reference, hib, problem.task_names))


def test_accumulator_adds_vector_statistics_and_applies_the_metric_reduction():
    """Tensor statistics (e.g. per-class intersections and unions) add up over batches and
    the metric's own ``reduce`` turns them into one value: here a per-class recall averaged
    over the classes present, which is not a mean of per-batch values."""
    import torch

    from trainables.metrics import MetricAccumulator, MetricSpec

    def per_class(pred: torch.Tensor, target: torch.Tensor):
        hits = torch.bincount(target[pred == target], minlength=3).double()
        return hits, torch.bincount(target, minlength=3).double()

    def mean_recall(hits, totals) -> float:
        present = totals > 0
        return float((hits[present] / totals[present]).mean())

    acc = MetricAccumulator({"seg": (MetricSpec("recall", True, per_class, mean_recall),)})
    acc.update({"seg": torch.tensor([0, 0, 1])}, {"seg": torch.tensor([0, 1, 1])})  # class 0: 1/1, class 1: 1/2
    acc.update({"seg": torch.tensor([1, 2])}, {"seg": torch.tensor([1, 1])})  # class 1: +1/2 -> 2/4 overall
    # class 0: 1/1, class 1: 2/4, class 2 absent -> (1 + 0.5) / 2
    assert acc.compute()["seg"]["recall"] == 0.75
