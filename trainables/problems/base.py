"""What a problem is: tasks, data, a shared-encoder model, losses and metrics.

The trainer talks to a problem only through this interface, so it knows nothing of any
dataset. A problem is built from its configuration (e.g. the Multi-MNIST variant); data is
resolved once on the driver (``prepare``: check paths, download if allowed) and loaded in
every trial (``load``: never downloads).

A problem is immutable once built (issue 15): its tasks, metrics and nominal references are
fixed in the constructor and ``load`` changes none of them. What they depend on in the data
or the run's config (Cityscapes' layout and width) is resolved before: ``resolved(data,
config)`` returns the fully determined problem, which the driver (``searcher.session``) and
every trial (``RunSettings.problem_for``) build the same way from the same prepared data, so
both see the same tasks and references.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from trainables.metrics import MetricAccumulator, MetricSpec, delta_m

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its metrics and the nominal single-task reference used to score epochs."""

    name: str
    metrics: tuple[MetricSpec, ...]
    reference: Mapping[str, float] = field(default_factory=dict)
    #: The likelihood behind the loss, for methods that depend on it (UW, Kendall et al.):
    #: "softmax" (cross-entropy), "gaussian" (L2 / MSE) or "laplace" (L1).
    likelihood: str = "gaussian"


@dataclass
class Splits:
    """The three splits as iterables of ``(inputs, {task: target})`` batches."""

    train: Iterable[Batch]
    val: Iterable[Batch]
    test: Iterable[Batch]
    source: str
    sizes: dict[str, int]


class MTLModel(nn.Module):
    """A shared encoder and one head per task (hard parameter sharing)."""

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The shared representation z (what feature-level methods differentiate)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor, per_task: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Head outputs from z, or from one input per task (in head order) when given."""
        if per_task is None:
            return {t: head(z) for t, head in self.heads.items()}
        return {t: head(x) for (t, head), x in zip(self.heads.items(), per_task)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.decode(self.encode(x))

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]


class Problem(ABC):
    """Base class of every problem. Subclasses set ``name`` and implement the hooks."""

    name: str = ""
    description: str = ""
    #: Training defaults of the problem (overridden by the space, then by the trial config).
    defaults: Mapping[str, Any] = {}
    #: Inputs that are images: the per-channel (mean, std) that standardised [0, 1] pixels into
    #: the inputs, so that image corruptions (``trainables.corruptions``) act on pixels; None for
    #: inputs that are not images (no corruption applies).
    pixel_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    @abstractmethod
    def tasks(self) -> list[TaskSpec]:
        """The tasks, in a fixed order (the order of weights and losses)."""

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def prepare(self, data_dir: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
        """Resolve the data once, on the driver. Returns settings passed on to ``load``."""
        return {}

    def resolved(self, data: Mapping[str, Any], config: Mapping[str, Any]) -> Problem:
        """The problem fully determined by ``prepare``'s ``data`` and a run's ``config``: a new
        instance where its tasks depend on them, else ``self`` (the default: tasks fixed by the
        constructor's options alone). ``load`` accepts only data and config it was resolved
        for, so that a trial never scores with tasks the driver did not see."""
        return self

    def source_option(self, source: str) -> dict[str, str]:
        """The option (``{KEY: VALUE}``, a ``--param``) that makes ``prepare`` pick the data source
        ``source`` (as runs log it in ``data_source``) where an ``auto`` default could pick
        another; empty when the problem has a single source. Reruns and confirmations pin it to
        the data of their runs."""
        return {}

    @abstractmethod
    def load(
        self, data: Mapping[str, Any], config: Mapping[str, Any], generator: torch.Generator, device: torch.device
    ) -> Splits:
        """Load the splits (never downloads). ``generator`` shuffles training batches."""

    @abstractmethod
    def build_model(self, config: Mapping[str, Any]) -> MTLModel:
        """The model for these hyperparameters (dropout, ...)."""

    @abstractmethod
    def loss(self, task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The scalar training loss of one task on one batch."""

    def kpi(self, task: str, output: torch.Tensor, target: torch.Tensor) -> float | None:
        """A per-batch KPI of ``task`` in [0, 1], higher is better (e.g. accuracy), for methods
        driven by KPIs (DTP, AMTL); None where the task has no natural one."""
        return None

    def new_metrics(self, config: Mapping[str, Any] | None = None) -> MetricAccumulator:
        """An accumulator of every task's metrics over one split; ``config`` (the run's resolved
        config) lets a problem pick how they are averaged (NYUv2's ``metric_average``)."""
        return MetricAccumulator({t.name: t.metrics for t in self.tasks})

    def higher_is_better(self) -> dict[str, dict[str, bool]]:
        return {t.name: {m.name: m.higher_is_better for m in t.metrics} for t in self.tasks}

    def units(self) -> dict[str, dict[str, tuple[float, str]]]:
        """Per task and metric, how reports print it: (scale, unit), e.g. (100, "%") for a fraction."""
        return {t.name: {m.name: (m.scale, m.unit) for m in t.metrics} for t in self.tasks}

    def score(self, metrics: Mapping[str, Mapping[str, float]], tasks: list[str]) -> float:
        """Validation score used to pick the best epoch (higher is better).

        Default: Delta_m (`002` eq. 1) of ``tasks`` against the problem's nominal
        single-task references, the multi-task metric the `002` authors select epochs by.
        """
        reference = {t.name: dict(t.reference) for t in self.tasks}
        return delta_m(metrics, reference, self.higher_is_better(), tasks)


def tensor_batches(
    inputs: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """Batches of in-memory tensors, sliced whole (no per-sample collation).

    The tensors may already live on the GPU: small datasets are loaded once into device
    memory so that a trial is not bound by the data loader.
    """
    names = list(targets)
    dataset = TensorDataset(inputs, *(targets[n] for n in names))
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=False)

    def collate(items: list[torch.Tensor]) -> Batch:
        return items[0], dict(zip(names, items[1:]))

    return DataLoader(dataset, sampler=sampler, batch_size=None, collate_fn=collate)


def split_loaders(
    datasets: Mapping[str, Any],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    generator: torch.Generator,
    eval_seed: int = 0,
) -> dict[str, DataLoader]:
    """DataLoaders of on-disk image splits: the ``train`` split shuffled by the run's
    ``generator``, the others in order (workers seeded from a fixed generator, ``eval_seed``);
    memory pinned on CUDA. A lone last training sample is dropped: batch norm cannot take a
    batch of one on the small pooled maps these models have."""
    loaders = {}
    for split, dataset in datasets.items():
        train = split == "train"
        loaders[split] = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(dataset) % batch_size == 1 and len(dataset) > 1,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=generator if train else torch.Generator().manual_seed(eval_seed),
        )
    return loaders
