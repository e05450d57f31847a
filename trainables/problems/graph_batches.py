"""Batches of complete molecular graphs built with tensor ops from molecules held in (device) memory.

Issue 6 asks that small datasets load once into device memory so that a GPU trial is not bound
by the data loader. All of QM9 takes 253 MiB as a ``MoleculeTable`` (atoms, positions,
bonds, targets), so it is moved to the GPU once and every batch is cut from it there: the
nodes of the batch's molecules are gathered, the complete graph of each molecule (all ordered
pairs i != j, row-major, as PyG's ``Complete()``) is enumerated with a few vectorized index
operations, the bonded pairs get their one-hot bond type and every pair its distance (as PyG's
``Distance(norm=False)``). No per-molecule Python, no collation, no host-to-device copy.

The batches equal, tensor for tensor, what PyG's ``DataLoader`` collates from the per-molecule
reference ``qm9_data.CompleteGraphs`` in the same order (tested), and the shuffle draws the same
order from the trial's generator as such a loader.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from trainables.problems.qm9_data import NUM_BOND_TYPES, MoleculeTable, _gather_ranges

#: Fraction of the free GPU memory the molecules may take for ``data_on_device=auto`` to put
#: them there: the rest is for the model, whose NNConv materializes a 64x64 matrix per edge.
DEVICE_SHARE = 0.25


def fits_on_device(table: MoleculeTable, device: torch.device, share: float = DEVICE_SHARE) -> bool:
    """Whether ``table`` takes at most ``share`` of the free memory of ``device`` (always, off CUDA:
    there the molecules already sit in the memory the model computes in)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return table.nbytes() <= share * free


class CompleteGraphBatches:
    """One split's batches: a PyG ``Batch`` (x, pos, edge_index, edge_attr, y, batch, ptr) each.

    ``table`` may sit on any device; batches are built on that device. ``rows`` are the split's
    molecules (rows of ``table``), ``targets`` the (molecules, 11) normalized targets of the table.
    """

    def __init__(
        self,
        table: MoleculeTable,
        targets: torch.Tensor,
        rows: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.table = table
        self.targets = targets.to(device=table.x.device, dtype=torch.float32)
        self.rows = rows.to(device=table.x.device, dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        # The order is torch's DataLoader's over the row positions (a few ints per batch), so that
        # a seed gives the batches that PyG's DataLoader over the molecules would give.
        # (a range is a map-style dataset to the DataLoader; torch's annotation asks for a Dataset)
        order: DataLoader[int] = DataLoader(
            range(len(self.rows)), self.batch_size, shuffle=self.shuffle, generator=self.generator  # type: ignore[arg-type]
        )
        for positions in order:
            yield self.batch(self.rows[positions.to(self.rows.device)])

    def batch(self, rows: torch.Tensor) -> Any:
        """The molecules ``rows`` (table rows, on the table's device) as one PyG ``Batch``."""
        from torch_geometric.data import Batch

        t = self.table
        graphs = torch.arange(len(rows), device=rows.device)
        atoms, node_ptr = _gather_ranges(t.node_ptr, rows)
        n = node_ptr[1:] - node_ptr[:-1]  # atoms per molecule
        batch = torch.repeat_interleave(graphs, n)

        # Every ordered pair (i, j) of each molecule, row-major: pair k of molecule g is
        # (k // n_g, k % n_g); pair_ptr[g] is where molecule g's n_g^2 pairs start.
        pairs = n * n
        pair_ptr = torch.zeros(len(rows) + 1, dtype=torch.long, device=rows.device)
        pair_ptr[1:] = pairs.cumsum(0)
        pair_graph = torch.repeat_interleave(graphs, pairs)
        k = torch.arange(int(pair_ptr[-1]), device=rows.device) - pair_ptr[:-1][pair_graph]
        n_of_pair = n[pair_graph]
        i, j = k // n_of_pair, k % n_of_pair

        # Bond one-hot on the bonded pairs (the table's bonds are local to their molecule).
        bonds, bond_ptr = _gather_ranges(t.edge_ptr, rows)
        bond_graph = torch.repeat_interleave(graphs, bond_ptr[1:] - bond_ptr[:-1])
        a, b = t.edge_index[:, bonds]
        bond_attr = torch.zeros(len(k), NUM_BOND_TYPES, device=rows.device)
        bond_attr[pair_ptr[:-1][bond_graph] + a * n[bond_graph] + b, t.bond_type[bonds]] = 1.0

        keep = i != j
        offset = node_ptr[:-1][pair_graph[keep]]
        edge_index = torch.stack([i[keep] + offset, j[keep] + offset])
        pos = t.pos[atoms]
        distance = (pos[edge_index[0]] - pos[edge_index[1]]).norm(p=2, dim=-1).view(-1, 1)
        return Batch(
            x=t.x[atoms], pos=pos, edge_index=edge_index, edge_attr=torch.cat([bond_attr[keep], distance], dim=-1),
            y=self.targets[rows], batch=batch, ptr=node_ptr,
        )
