"""What building QM9's batches costs (issue 6: a GPU trial must not be bound by the data loader).

Side by side in one run, over the same molecules and batch order: one epoch of training batches
from PyG's ``DataLoader`` over the per-molecule complete graphs (``qm9_data.CompleteGraphs``,
each molecule's graph built in Python on read, then collated), and from ``CompleteGraphBatches``
(the molecules held in device memory, each batch cut with tensor ops). Also one EW training
step of the Nash-MTL network on a batch, so that the loader's share of a step can be read off.

    python bench/qm9_batches.py --subset 2000            # CPU
    python bench/qm9_batches.py --subset 0 --device cuda  # all 130,831 molecules, on a GPU

The molecules come from the offline qm9pack copy (or PyG's QM9 with ``--source pyg``);
featurization is cached, so only the first run of a subset pays for RDKit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SEARCHER_OFFLINE", "1")

from trainables.problems import qm9_data  # noqa: E402
from trainables.problems.graph_batches import CompleteGraphBatches  # noqa: E402
from trainables.problems.qm9 import QM9  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_seconds(batches, device: torch.device, limit: int) -> tuple[float, int]:
    """Seconds to draw up to ``limit`` batches and have them on ``device``, and how many."""
    sync(device)
    start, count = time.perf_counter(), 0
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        count += 1
        if count == limit:
            break
    sync(device)
    return time.perf_counter() - start, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=2000, help="molecules (0 = all 130,831)")
    ap.add_argument("--source", default="auto", choices=qm9_data.SOURCES)
    ap.add_argument("--batch-size", type=int, default=120)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batches", type=int, default=0, help="stop each epoch after this many batches (0 = all)")
    ap.add_argument("--steps", type=int, default=3, help="training steps timed (after one warm-up)")
    args = ap.parse_args()
    from torch_geometric.loader import DataLoader

    device = torch.device(args.device)
    data = qm9_data.resolve_source(args.source, None, download=False)
    table, rows = qm9_data.load_molecules(data, subset=args.subset, progress=True)
    targets = ((table.y - table.y.mean(0)) / table.y.std(0)).float()
    train = rows["train"]
    reference = DataLoader(qm9_data.CompleteGraphs(table, targets, train), batch_size=args.batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    start = time.perf_counter()
    on_device = table.to(device)
    sync(device)
    move_s = time.perf_counter() - start
    ours = CompleteGraphBatches(on_device, targets, train, args.batch_size, True, torch.Generator().manual_seed(0))
    limit = args.max_batches or len(ours)
    print(f"{len(table)} molecules ({table.nbytes() / 2**20:.1f} MiB as tensors), {len(train)} train, "
          f"batch {args.batch_size}, device {device}, {limit} batches per epoch timed")
    # Warm-up (CUDA kernels, allocator) on an unshuffled copy, so that ``ours`` draws the same
    # order from its seed as ``reference``: both time the same batches.
    epoch_seconds(CompleteGraphBatches(on_device, targets, train, args.batch_size, False), device, 2)
    pyg_s, n = epoch_seconds(reference, device, limit)
    ours_s, m = epoch_seconds(ours, device, limit)
    assert n == m

    problem = QM9()
    model = problem.build_model({}).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = next(iter(ours))

    def step() -> None:
        outputs = model(batch)
        loss = sum(problem.loss(t, outputs[t], batch.y[:, k]) for k, t in enumerate(qm9_data.TARGETS))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    step_s = (time.perf_counter() - start) / args.steps

    print(f"table to {device}: {move_s:.3f} s once per trial")
    print("| batches from | s per epoch | ms per batch | per batch / EW step |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in (("PyG DataLoader over CompleteGraphs", pyg_s), ("CompleteGraphBatches (tensor ops)", ours_s)):
        print(f"| {name} | {seconds:.2f} | {1000 * seconds / n:.2f} | {seconds / n / step_s:.3f} |")
    print(f"EW training step (Nash-MTL MPNN, batch {args.batch_size}): {1000 * step_s:.1f} ms; "
          f"tensor-built / DataLoader batches: {ours_s / pyg_s:.3f}")


if __name__ == "__main__":
    main()
