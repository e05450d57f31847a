"""Multi-MNIST (`002` §3.1-3.2): two real digits in one image, top-left and bottom-right.

Construction as Sener & Koltun and the `002` authors do it: a 36x36 canvas, the left digit
at rows/cols 0:28, the right digit at 6:34, overlap by pixel max, resized to 28x28; the right
digit is drawn at random from the same split with a fixed seed, so the pairing is
reproducible. Inputs and reconstruction targets are normalized with MNIST's mean and std.

Variants name their tasks: C = classify, R = reconstruct; L / R = left / right digit.
``CL_RR`` (classify left, reconstruct right) is `002`'s screening problem.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from trainables.errors import ConfigError
from trainables.metrics import MetricSpec, accuracy, mean_squared_error
from trainables.problems.base import MTLModel, Problem, Splits, TaskSpec, tensor_batches
from trainables.problems.mnist_digits import load_digits, resolve_source

MEAN, STD = 0.1307, 0.3081
CANVAS, DIGIT, OFFSET = 36, 28, 6
VARIANTS = {"CL_CR": ("CL", "CR"), "CL_RR": ("CL", "RR"), "RL_RR": ("RL", "RR")}

ACCURACY = MetricSpec("accuracy", higher_is_better=True, fn=accuracy)
MSE = MetricSpec("mse", higher_is_better=False, fn=mean_squared_error)
# Nominal single-task validation values: single_task, lr 0.0025, 20 epochs, on the 5,000
# offline digits (CL 0.929, RR 0.312). They only put the tasks' metrics on one scale when
# picking the best epoch (Problem.score); reports compare against real single-task runs.
REFERENCE = {"C": {"accuracy": 0.93}, "R": {"mse": 0.31}}


def compose(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Overlay digit pairs: uint8/float (N, 28, 28) each -> float (N, 28, 28) in [0, 1]."""
    left = left.float() / 255.0 if left.dtype == torch.uint8 else left.float()
    right = right.float() / 255.0 if right.dtype == torch.uint8 else right.float()
    n = left.shape[0]
    canvas = torch.zeros(n, CANVAS, CANVAS)
    canvas[:, :DIGIT, :DIGIT] = left
    window = canvas[:, OFFSET : OFFSET + DIGIT, OFFSET : OFFSET + DIGIT]
    canvas[:, OFFSET : OFFSET + DIGIT, OFFSET : OFFSET + DIGIT] = torch.maximum(window, right)
    return TF.resize(canvas.unsqueeze(1), [DIGIT, DIGIT], antialias=True).squeeze(1).clamp(0.0, 1.0)


def pair_indices(n: int, seed: int) -> torch.Tensor:
    """For each left digit, the index of its right partner (drawn from the same split)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n,), generator=g)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


class LeNetEncoder(nn.Sequential):
    """conv(1->10,k5) -> maxpool -> ReLU -> conv(10->20,k5) -> dropout -> maxpool -> ReLU -> fc 320->50 -> ReLU.

    A named ``nn.Sequential`` (parameter names ``conv1``, ``conv2``, ``fc``), so its stages are
    visible to the stage-by-stage Gramian (``trainables.gramian``).
    """

    def __init__(self, dropout: float) -> None:
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(1, 10, kernel_size=5)),
            ("pool1", nn.MaxPool2d(2)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(10, 20, kernel_size=5)),
            ("drop", nn.Dropout2d(dropout)),
            ("pool2", nn.MaxPool2d(2)),
            ("relu2", nn.ReLU()),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(320, 50)),
            ("relu3", nn.ReLU()),
        ]))


def classification_head(dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Dropout(dropout), nn.Linear(50, 10))


def reconstruction_head(dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(50, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, DIGIT * DIGIT))


class MultiMNIST(Problem):
    name = "multi_mnist"
    description = "two real MNIST digits per image; classify (C) or reconstruct (R) the left (L) / right (R) one"
    defaults = {"batch_size": 256, "lr_decay": 0.95, "digit_source": "auto", "data_seed": 0}
    pixel_stats = ((MEAN,), (STD,))

    def source_option(self, source: str) -> dict[str, str]:
        return {"digit_source": source}

    def __init__(self, variant: str = "CL_RR") -> None:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown Multi-MNIST variant {variant!r} (known: {', '.join(VARIANTS)})")
        self.variant = variant

    @property
    def tasks(self) -> list[TaskSpec]:
        specs = []
        for name in VARIANTS[self.variant]:
            kind = name[0]
            metric = ACCURACY if kind == "C" else MSE
            likelihood = "softmax" if kind == "C" else "gaussian"
            specs.append(TaskSpec(name, (metric,), REFERENCE[kind], likelihood))
        return specs

    def prepare(self, data_dir: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_source(str(config.get("digit_source", "auto")), data_dir)

    def make_split(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
        """Composite inputs (N, 1, 28, 28) and the targets of every task of this variant."""
        right = pair_indices(len(labels), seed)
        inputs = normalize(compose(images, images[right])).unsqueeze(1)
        digits = {"L": (images, labels), "R": (images[right], labels[right])}
        targets = {}
        for task in VARIANTS[self.variant]:
            digit_images, digit_labels = digits[task[1]]
            if task[0] == "C":
                targets[task] = digit_labels.long()
            else:
                targets[task] = normalize(digit_images.float() / 255.0).flatten(1)
        return inputs, targets

    def load(
        self, data: Mapping[str, Any], config: Mapping[str, Any], generator: torch.Generator, device: torch.device
    ) -> Splits:
        data_seed = int(config.get("data_seed", 0))
        digits = load_digits(dict(data), seed=data_seed)
        batch_size = int(config.get("batch_size", 256))
        loaders, sizes = {}, {}
        for i, split in enumerate(("train", "val", "test")):
            inputs, targets = self.make_split(digits.images[split], digits.labels[split], seed=data_seed + 1000 * i)
            inputs = inputs.to(device)
            targets = {k: v.to(device) for k, v in targets.items()}
            shuffle = split == "train"
            bs = batch_size if shuffle else max(batch_size, 1024)
            loaders[split] = tensor_batches(inputs, targets, bs, shuffle, generator if shuffle else None)
            sizes[split] = len(inputs)
        return Splits(loaders["train"], loaders["val"], loaders["test"], digits.source, sizes)

    def build_model(self, config: Mapping[str, Any]) -> MTLModel:
        p = float(config.get("dropout", 0.0))
        heads = {t: classification_head(p) if t[0] == "C" else reconstruction_head(p) for t in VARIANTS[self.variant]}
        return MTLModel(LeNetEncoder(p), heads)

    def kpi(self, task: str, output: torch.Tensor, target: torch.Tensor) -> float | None:
        """Batch accuracy of a classification task; reconstructions have no KPI in [0, 1]."""
        if task[0] != "C":
            return None
        correct, total = accuracy(output, target)
        return correct / total

    def loss(self, task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if task[0] == "C":
            return F.cross_entropy(output, target)
        return F.mse_loss(output, target)
