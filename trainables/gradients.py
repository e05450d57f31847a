"""Per-task gradients without T full backward passes.

The model is split at the shared representation z = encoder(x). The per-task gradients
with respect to z come from the (cheap) heads, all T at once; the per-task gradients with
respect to the shared parameters are then one batched vector-Jacobian product through the
encoder (``torch.autograd.grad(..., is_grads_batched=True)``, vmap over the backward). A plain
loop over tasks is kept as a fallback for ops that vmap does not cover; tests check both agree.

The batched pass holds every task's activation gradients at once: T times what one backward
holds (6.2x EW's step memory for QM9's network at T = 11, bench/step_memory.py), which can
exceed the per-task Jacobian itself by far. ``chunk`` bounds it: at most that many tasks per
batched pass, at the price of more, smaller passes.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn


def feature_grads(losses: torch.Tensor, z: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """d L_t / d z for every task t at once: (T, *z.shape). ``z`` must be a leaf of the heads' graph.

    ``create_graph`` keeps the graph of the gradients themselves (for penalties on them).
    """
    eye = torch.eye(losses.numel(), dtype=losses.dtype, device=losses.device)
    (grads,) = torch.autograd.grad(
        losses, z, grad_outputs=eye, is_grads_batched=True, retain_graph=True, create_graph=create_graph
    )
    return grads


def task_vjps(
    output: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    grads: torch.Tensor,
    batched: bool = True,
    create_graph: bool = False,
    chunk: int = 0,
) -> list[tuple[tuple[torch.Tensor | None, ...], int]]:
    """Per-task vector-Jacobian products of ``output`` with each of ``inputs``, pass by pass.

    ``grads`` (T, *output.shape) holds one gradient on ``output`` per task. Returns one entry per
    backward pass: the gradients of every input with a leading task axis (None where an input
    is unused) and how many tasks the pass covered. ``batched``: vmapped passes over at most
    ``chunk`` tasks each (0: all at once); otherwise, or when an op has no batching rule, one
    plain backward per task. The graph is retained.
    """
    if batched:
        try:
            return [
                (torch.autograd.grad(output, inputs, grad_outputs=part, is_grads_batched=True, retain_graph=True,
                                     allow_unused=True, create_graph=create_graph), part.shape[0])
                for part in grads.split(chunk if chunk > 0 else grads.shape[0])
            ]
        except RuntimeError as err:  # an op without a batching rule: fall back to the loop
            warnings.warn(f"batched per-task gradients failed ({err}); using a loop over tasks", stacklevel=3)
    passes: list[tuple[tuple[torch.Tensor | None, ...], int]] = []
    for g in grads:
        row = torch.autograd.grad(output, inputs, grad_outputs=g, retain_graph=True, allow_unused=True,
                                  create_graph=create_graph)
        passes.append((tuple(None if x is None else x.unsqueeze(0) for x in row), 1))
    return passes


def param_grads(
    z: torch.Tensor,
    params: list[nn.Parameter],
    z_grads: torch.Tensor,
    batched: bool = True,
    create_graph: bool = False,
    chunk: int = 0,
) -> torch.Tensor:
    """Per-task gradients on the shared parameters, (T, d), from the per-task gradients on z.

    ``batched``: vmapped backward passes over at most ``chunk`` tasks each (0: all at once);
    otherwise one plain backward per task (``task_vjps``).
    """
    passes = task_vjps(z, params, z_grads, batched, create_graph, chunk)
    rows = []
    while passes:  # flatten pass by pass, dropping each pass's unflattened gradients as we go
        grads, n = passes.pop(0)
        rows.append(_flatten(grads, params, n))
    return torch.cat(rows)


def _flatten(grads: tuple, params: list[nn.Parameter], n: int) -> torch.Tensor:
    parts = [
        (torch.zeros(n, p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(n, -1))
        for g, p in zip(grads, params)
    ]
    return torch.cat(parts, dim=1)


def write_grads(params: list[nn.Parameter], direction: torch.Tensor) -> None:
    """Add each parameter's slice of the flat direction (d,) to its ``.grad`` (set when None)."""
    offset = 0
    for p in params:
        n = p.numel()
        g = direction[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


def gramian64(grads: torch.Tensor) -> np.ndarray:
    """GGᵀ as a float64 numpy array (computed in the gradients' dtype, on their device)."""
    g = grads.detach()
    return (g @ g.T).double().cpu().numpy()
