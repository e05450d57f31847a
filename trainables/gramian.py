"""The Gramian GGᵀ of the per-task gradients without the full T x d Jacobian G.

Methods that are a weighting of the task gradients (MGDA, CAGrad, IMTL-G, Nash-MTL, ...) need
only GGᵀ (T x T) to choose their weights w, and their direction wᵀG is the gradient of
Σ_t w_t L_t: one plain backward once w is known. Holding G costs T x d floats (128 MiB for
ResNet-18 at T = 3, about a third of such a step's peak, docs/benchmarks.md).

Here G is never whole. The encoder is read as a chain of stages (``encoder_stages``: the
modules an encoder lists in ``stages()``, ``nn.Sequential`` containers expanded); forward hooks
record the tensors between stages. The per-task gradients then travel back one stage at a
time, batched over the tasks as in ``trainables.gradients``: from the gradients on a stage's
output, one vector-Jacobian product gives that stage's own rows G_k (T x d_k) and the
gradients on its input. GGᵀ = Σ_k G_k G_kᵀ, and G_k is dropped before the next stage: the
largest block held is T x max_k d_k. This is the layer-wise Gramian of TorchJD's ``autogram``
engine (Algorithm 3 of Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
2024), taken at the granularity of the encoder's stages.

A chain is only used when the forward ran through it as declared: every stage called once,
in order, each one's input the previous one's output, the shared parameters split exactly
among the stages, and no boundary changed in place afterwards. A path around a stage (a skip
from an early stage to the output) would escape these checks, so the first Gramian of a run
is also checked against one plain backward along a random combination of the tasks; any
failure falls back to the full Jacobian, with a warning, for the rest of the run.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from trainables.gradients import task_vjps


#: ``grad_memory=auto`` stages the Gramian on a GPU when the Jacobian would take at least this
#: share of the free device memory (and the stages at least halve it): the staged path costs
#: one more plain backward, worth paying only where memory is short.
AUTO_SHARE = 1 / 8


def auto_stages(on_gpu: bool, jacobian_bytes: int, free_bytes: int, largest: int, d: int) -> bool:
    """What ``grad_memory=auto`` picks: True to build GGᵀ stage by stage, False to hold G.

    On the CPU time comes first (memory is plentiful and the extra backward is not free);
    on a GPU staging pays when G is a large share of the free memory and the largest stage is
    at most half of the shared parameters (otherwise little is saved).
    """
    return on_gpu and 2 * largest <= d and jacobian_bytes >= AUTO_SHARE * free_bytes


def encoder_stages(encoder: nn.Module) -> list[nn.Module]:
    """The encoder as a chain of modules: its ``stages()`` if it lists them, else itself;
    ``nn.Sequential`` containers are expanded into their children, recursively."""
    stages = getattr(encoder, "stages", None)
    top = list(stages()) if callable(stages) else [encoder]
    chain: list[nn.Module] = []

    def expand(module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for child in module:
                expand(child)
        else:
            chain.append(module)

    for module in top:
        expand(module)
    return chain


class StagedGramian:
    """Records an encoder's stage boundaries during a forward pass and builds GGᵀ from them.

    Use: ``with staged.recording(): z = model.encode(x)``, then ``staged.gramian(z, z_grads)``.
    ``usable`` is False when the encoder is one stage or its stages do not split the shared
    parameters; ``gramian`` returns None whenever the chain cannot be trusted.
    """

    def __init__(self, encoder: nn.Module, shared: list[nn.Parameter]) -> None:
        self.stages = encoder_stages(encoder)
        self.stage_params = [[p for p in s.parameters() if p.requires_grad] for s in self.stages]
        owned = [id(p) for params in self.stage_params for p in params]
        split = len(owned) == len(set(owned)) and set(owned) == {id(p) for p in shared}
        self.d = sum(p.numel() for p in shared)
        self.largest = max((sum(p.numel() for p in ps) for ps in self.stage_params), default=0)
        self.usable = split and sum(1 for ps in self.stage_params if ps) >= 2
        self.verified = False
        self._records: list[tuple[nn.Module, Any, Any, int]] | None = None
        self._chain: list[tuple[nn.Module, Any, Any, int]] | None = None
        self._handles = [s.register_forward_hook(self._record) for s in self.stages] if self.usable else []

    def _record(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._records is not None:
            version = output._version if isinstance(output, torch.Tensor) else -1
            self._records.append((module, args[0] if len(args) == 1 else None, output, version))

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Context in which the encoder's forward records its stage boundaries."""
        self._records = []
        try:
            yield
        finally:
            self._chain, self._records = self._records, None

    def _boundaries(self) -> list[torch.Tensor | None] | None:
        """Input tensor of each stage (None for the first), or None if the chain broke."""
        chain = self._chain
        if not chain or len(chain) != len(self.stages):
            return None
        inputs: list[torch.Tensor | None] = [None]
        for i, (module, inp, out, _) in enumerate(chain):
            if module is not self.stages[i] or not isinstance(out, torch.Tensor):
                return None
            if i > 0:
                if inp is not chain[i - 1][2]:
                    return None
                # a boundary the backward starts from must not have changed in place since
                if self.stage_params[i] and inp._version != chain[i - 1][3]:
                    return None
                inputs.append(inp)
        return inputs

    def gramian(
        self, z: torch.Tensor, z_grads: torch.Tensor, batched: bool = True, chunk: int = 0
    ) -> torch.Tensor | None:
        """GGᵀ (T x T) of the per-task gradients on the shared parameters, or None when the
        recorded chain cannot give it (the caller then forms G itself).

        ``z_grads`` (T, *z.shape) are the per-task gradients on z; ``batched`` and ``chunk``
        as in ``trainables.gradients.param_grads``. The graph is retained.
        """
        inputs = self._boundaries() if self.usable else None
        self._chain = None
        if inputs is None:
            return None
        probe = None
        if not self.verified:  # drawn from its own generator: the run's random streams stay as they are
            probe = torch.randn(z_grads.shape[0], generator=torch.Generator().manual_seed(0), dtype=z_grads.dtype)
            probe = probe.to(z_grads.device)
        probe_rows: list[torch.Tensor] = []
        tasks = z_grads.shape[0]
        gram = torch.zeros(tasks, tasks, dtype=z_grads.dtype, device=z_grads.device)
        frontier, frontier_grads = z, z_grads
        first = next(i for i, ps in enumerate(self.stage_params) if ps)
        for i in range(len(self.stages) - 1, first - 1, -1):
            params = self.stage_params[i]
            if not params:
                continue
            targets: list[torch.Tensor] = list(params)
            boundary = None
            if i != first:  # the stage's input, where the next (earlier) backward starts from
                boundary = inputs[i]
                assert boundary is not None  # only stage 0 has no recorded input, and i > first >= 0
                targets.append(boundary)
            passes = task_vjps(frontier, targets, frontier_grads, batched, chunk=chunk)
            sizes = [n for _, n in passes]
            grads = [_stack_parts([p[j] for p, _ in passes], x, sizes) for j, x in enumerate(targets)]
            del passes
            if boundary is not None:
                frontier, frontier_grads = boundary, grads.pop()
            while grads:  # fold each parameter's T x numel block into GGᵀ, then drop it
                rows = grads.pop(0).reshape(tasks, -1)
                gram += rows @ rows.T
                if probe is not None:
                    probe_rows.append(probe @ rows)
                del rows
        if probe is not None:
            self._verify(z, z_grads, probe, probe_rows)
            if not self.usable:
                return None
        return gram

    def _verify(self, z: torch.Tensor, z_grads: torch.Tensor, probe: torch.Tensor, rows: list[torch.Tensor]) -> None:
        """Compare the staged rows along ``probe`` with one plain backward along it."""
        params = [p for ps in reversed(self.stage_params) for p in ps]
        direction = (probe.view(-1, *[1] * (z_grads.dim() - 1)) * z_grads).sum(0)
        grads = torch.autograd.grad(z, params, grad_outputs=direction, retain_graph=True, allow_unused=True)
        plain = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
        staged = torch.cat(rows)
        scale = float(plain.abs().max()) if plain.numel() else 0.0
        if torch.allclose(staged, plain, rtol=1e-3, atol=1e-5 * max(scale, 1e-12)):
            self.verified = True
            return
        self.close()
        warnings.warn(
            "the encoder's stages do not give its gradients (a path around a stage?): grad_memory=gramian falls "
            "back to the full per-task Jacobian for this run", stacklevel=3,
        )

    def forget(self) -> None:
        """Drop the recorded boundaries (they keep activations alive past the step)."""
        self._chain = None

    def close(self) -> None:
        """Stop recording for good (remove the hooks)."""
        self.usable = False
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _stack_parts(parts: list[torch.Tensor | None], like: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate per-chunk gradients, zeros where autograd found the input unused."""
    if len(parts) == 1 and parts[0] is not None:
        return parts[0]
    return torch.cat([
        torch.zeros(n, *like.shape, dtype=like.dtype, device=like.device) if p is None else p
        for p, n in zip(parts, sizes)
    ])
