"""The epoch loop: train / validation / test, per-epoch metrics, best epoch by validation.

Knows nothing of any particular method or dataset: it asks the problem for data, model,
losses and metrics, and the method for how to combine losses or per-task gradients.
Every epoch yields one flat dict of metrics (the names are documented in ``METRIC_NAMES``);
the caller decides where it goes (MLflow directly, or Ray Tune's report).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from trainables import config as cfg
from trainables.errors import DivergedError
from trainables.methods import GradientAggregator, LossWeighting, build_method
from trainables.methods.base import GramianWeighting
from trainables.methods.capabilities import (
    ActsAfterStep,
    AddsHeadsLoss,
    LooksAhead,
    ObservesKPIs,
    PenalizesGradients,
    RepresentsTasks,
    ReusesWeights,
    StepContext,
)
from trainables.diagnostics import EpochDiagnostics, feature_disentanglement, pair_measures, sample_measures
from trainables.gradients import feature_grads, param_grads, write_grads
from trainables.gramian import StagedGramian, auto_stages
from trainables.problems.base import MTLModel, Problem

METRIC_NAMES = """\
train/<task>/loss        mean training loss of the epoch
val/<task>/<metric>      validation metrics of the epoch
val/score                validation score of the epoch (Delta_m vs the problem's references)
weight/<task>            mean over the epoch's steps of the weight the method applied
weight_median/<task>     median over the epoch's steps of that weight (robust to a few spiking
                         steps, e.g. CAGrad's weight for a task with a near-zero gradient)
method/<name>            per-epoch diagnostics of the method (e.g. IMTL's raw scales)
best/val_score           best validation score so far (what the search optimizes)
best/epoch               the epoch it was reached in
best/val/<task>/<metric> validation metrics of the best epoch
best/test/<task>/<metric> test metrics of the best validation epoch (what reports use)
diag/<level>/<measure>   with diagnostics_every=K: the mean over the epoch's sampled steps of the
                         gradient diagnostics between the trained tasks (level param or feature;
                         gds, gms, conflict_pairs, conflict_params, fd, and cos/mag/conflict per
                         pair a-b up to 6 tasks)
diag/<level>/sample/<task>/<measure>  the same between diagnostics_samples samples of one task
                         (`003` §4.2's single-task setting; gds, gms, conflict_pairs, conflict_params),
                         and diag/<level>/sample/<measure> their mean over the trained tasks
time/epoch_s             seconds of the epoch (train, validation, test)
time/total_s             seconds of every epoch so far, across resumes (what reports count as cost)
"""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Trains one configuration of one method on one problem."""

    def __init__(self, problem: Problem, config: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> None:
        self.problem = problem
        self.config = cfg.resolve(config, problem.defaults)
        self.seed = cfg.run_seed(self.config)
        seed_everything(self.seed)
        self.device = pick_device(self.config["device"])
        batched = cfg.BATCHED[self.config["batched_grads"]]
        self.batched_grads = self.device.type == "cuda" if batched is None else batched
        self.generator = torch.Generator().manual_seed(self.seed)
        self.splits = problem.load(data or {}, self.config, self.generator, self.device)
        self.tasks = problem.task_names
        self.model = problem.build_model(self.config).to(self.device)
        name = self.config["method"]
        self.method = build_method(name, problem.tasks, cfg.method_params(self.config, name)).to(self.device)
        self.method.configure(self.config)
        method = self.method
        # The kind of step, fixed here (``train_step``): a loss weighting's backward, or a gradient
        # method's; which of the gradient steps (reused weights, Gramian, per-task gradients) is
        # decided per step by the capabilities below and ``grad_memory``.
        if isinstance(method, LossWeighting):
            self._backward = self._loss_backward
        elif isinstance(method, GradientAggregator):
            self._backward = self._gradient_backward
        else:
            raise TypeError(f"{type(method).__name__} is neither a LossWeighting nor a GradientAggregator")
        #: Where per-task gradients are formed: a method's own level (MGDA-UB, RotoGrad) over the config's.
        self.grad_level = str(getattr(method, "forced_grad_level", None) or self.config["grad_level"])
        # The capabilities the method declares (``trainables.methods.capabilities``), asked once:
        # the method itself where it declares one, None where it does not.
        self._looks_ahead = method if isinstance(method, LooksAhead) else None
        self._represents = method if isinstance(method, RepresentsTasks) else None
        self._observes_kpis = method if isinstance(method, ObservesKPIs) else None
        self._reuses = method if isinstance(method, ReusesWeights) else None
        self._penalizes = method if isinstance(method, PenalizesGradients) else None
        self._heads_loss = method if isinstance(method, AddsHeadsLoss) else None
        self._after_step = method if isinstance(method, ActsAfterStep) else None
        self.shared = self.model.shared_parameters()
        self.staged = self._staged_gramian()
        self.optimizer = self._make_optimizer()
        gamma = self.config["lr_decay"]
        step_every = int(self.config["lr_step_every"])
        # A ReduceLROnPlateau steps on the epoch's validation score (after validation, ``run_epoch``),
        # the others once per epoch before it.
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
        if self.config["lr_schedule"] == "plateau":
            # Nash-MTL's QM9 trainer (experiments/quantum_chemistry/trainer.py): ReduceLROnPlateau(mode="min",
            # factor=0.7, patience=5, min_lr=1e-5) stepped on the validation Δm (lower is better). The score
            # here is -Δm, so it steps on -score with mode "min": the same relative threshold (1e-4) as theirs
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=self.config["plateau_factor"],
                patience=int(self.config["plateau_patience"]), min_lr=self.config["plateau_min_lr"])
        elif gamma == 1.0:
            self.scheduler = None
        elif step_every > 0:
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_every, gamma)
        else:
            self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)
        self.epoch = 0
        #: Seconds spent in ``run_epoch`` over the whole run (kept across a resume): ``time/total_s``.
        self.elapsed_s = 0.0
        #: Gradient diagnostics every ``diagnostics_every`` training steps of this trainer (0: off).
        self.diagnose_every = int(self.config["diagnostics_every"])
        self.diagnose_samples = int(self.config["diagnostics_samples"])
        self.diagnostics = EpochDiagnostics()
        self._steps = 0
        #: On a diagnostic step of a gradient method at parameter level, the z-gradients of the
        #: trained tasks waiting for the method's own per-task gradients (reused, not recomputed).
        self._pending_diagnosis: tuple[torch.Tensor, list[int]] | None = None
        self.best: dict[str, float] = {"best/val_score": -math.inf, "best/epoch": 0}
        #: With ``keep_model``: a CPU copy (``model_state``) of the model and method state of the best
        #: validation epoch, what ``searcher robustness`` evaluates; copied only when the best improves.
        #: None without ``keep_model``.
        self.keep_model = bool(self.config["keep_model"])
        self.best_state: dict[str, Any] | None = None
        self._val_cycle: Iterator[Any] | None = None

    # ----------------------------------------------------------------- set-up
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = list(self.model.parameters()) + list(self.method.parameters())
        if c["optimizer"] == "adam":
            return torch.optim.Adam(params, lr=c["lr"], weight_decay=c["weight_decay"])
        if c["optimizer"] == "adamw":
            return torch.optim.AdamW(params, lr=c["lr"], weight_decay=c["weight_decay"])
        return torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"])

    def _staged_gramian(self) -> StagedGramian | None:
        """The stage-by-stage Gramian when ``grad_memory`` asks for it and it applies (None: hold G)."""
        method, choice = self.method, self.config["grad_memory"]
        if choice == "jacobian" or not isinstance(method, GramianWeighting) or self.grad_level != "param":
            return None
        encoder = self.model.encoder if isinstance(self.model, MTLModel) else self.model
        staged = StagedGramian(encoder, self.shared)
        if not staged.usable:
            if choice == "gramian":
                warnings.warn(
                    "grad_memory=gramian: the encoder is one stage (it lists no stages() that split its parameters); "
                    "holding the full per-task Jacobian", stacklevel=3,
                )
            return None
        if choice == "auto":
            on_gpu = self.device.type == "cuda"
            free = torch.cuda.mem_get_info(self.device)[0] if on_gpu else 0
            jacobian = self.method.n_tasks * staged.d * self.shared[0].element_size()
            if not auto_stages(on_gpu, jacobian, free, staged.largest, staged.d):
                staged.close()
                return None
        return staged

    # ----------------------------------------------------------------- one step
    def train_step(self, inputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step. Returns the task losses (T,) and the weights applied (or None).

        Forward, losses, then the backward of the method's kind (``_loss_backward`` or
        ``_gradient_backward``), then the optimizer step; the method's declared capabilities
        hook in at their points (``trainables.methods.capabilities`` lists where).
        """
        if self._looks_ahead is not None:
            self._looks_ahead.before_step(
                StepContext(self.model, inputs, targets, self._next_val_batch, self.task_losses, self.optimizer)
            )
        with self.staged.recording() if self.staged is not None else contextlib.nullcontext():
            z = self.model.encode(inputs)
        z_leaf = z.detach().requires_grad_(True)
        outputs = self.model.decode(z_leaf, self._representations(z_leaf))
        losses = self._losses(outputs, targets)
        if not torch.isfinite(losses).all():
            raise DivergedError(self.epoch + 1, dict(zip(self.tasks, losses.tolist())))
        if self.diagnose_every and self._steps % self.diagnose_every == 0:
            self._diagnose(z, z_leaf, losses, outputs, targets)
        self._steps += 1
        if self._observes_kpis is not None:
            with torch.no_grad():
                kpis = [self.problem.kpi(t, outputs[t].detach(), targets[t]) for t in self.tasks]
            self._observes_kpis.observe_kpis(torch.tensor([math.nan if k is None else k for k in kpis], dtype=losses.dtype))
        self.optimizer.zero_grad(set_to_none=True)
        weights = self._backward(z, z_leaf, losses)
        if self.staged is not None:
            self.staged.forget()
        self.optimizer.step()
        if self._after_step is not None:
            with torch.no_grad():
                after = self.task_losses(self.model, inputs, targets)
            self._after_step.after_step(losses.detach(), after)
        return losses.detach(), None if weights is None else weights.detach()

    def _representations(self, z: torch.Tensor) -> list[torch.Tensor] | None:
        """The heads' per-task inputs from z where the method gives them (``RepresentsTasks``), else None."""
        return None if self._represents is None else self._represents.task_representations(z)

    def _loss_backward(self, z: torch.Tensor, z_leaf: torch.Tensor, losses: torch.Tensor) -> torch.Tensor | None:
        """A loss weighting's step: back-propagate its combined loss into the heads, then through z into the encoder."""
        assert isinstance(self.method, LossWeighting)
        total, weights = self.method.combine(losses)
        total.backward()
        z.backward(z_leaf.grad)
        return weights

    def _gradient_backward(self, z: torch.Tensor, z_leaf: torch.Tensor, losses: torch.Tensor) -> torch.Tensor | None:
        """A gradient method's step, one of three: weights reused without per-task gradients
        (``ReusesWeights``), weights from the Gramian built stage by stage (``grad_memory``), or
        the per-task gradients G aggregated into the direction. Writes the model's ``.grad``."""
        reused = self._reuses.reused_weights() if self._reuses is not None else None
        if reused is not None:
            return self._reused_backward(z, z_leaf, losses, reused)
        z_grads = feature_grads(losses, z_leaf, create_graph=self._penalizes is not None)
        if self.staged is not None:
            gramian = self.staged.gramian(z, z_grads.detach(), batched=self.batched_grads, chunk=self.config["grad_chunk"])
            if gramian is not None:
                return self._gramian_backward(z, z_grads, losses, gramian)
        return self._jacobian_backward(z, z_leaf, z_grads, losses)

    def _reused_backward(
        self, z: torch.Tensor, z_leaf: torch.Tensor, losses: torch.Tensor, reused: torch.Tensor
    ) -> torch.Tensor:
        """Weights applied without per-task gradients: Σ_t w_t g_t is the gradient of Σ_t w_t L_t,
        one plain backward (what EW's step costs)."""
        self._diagnose_pending(z)  # no per-task gradients this step to reuse
        weights = reused.to(losses)
        (encoder_grad,) = torch.autograd.grad((weights.detach() * losses).sum(), z_leaf, retain_graph=True)
        self._backward_heads(losses, weights)
        z.backward(encoder_grad)
        return weights

    def _gramian_backward(
        self, z: torch.Tensor, z_grads: torch.Tensor, losses: torch.Tensor, gramian: torch.Tensor
    ) -> torch.Tensor:
        """A Gramian weighting from GGᵀ alone: wᵀG is the gradient of Σ_t w_t L_t, one plain
        backward from z's side (G itself is never formed)."""
        assert isinstance(self.method, GramianWeighting)
        weights = self.method.weights_from_gramian(gramian, losses.detach())
        self._backward_heads(losses, weights)
        z.backward(torch.tensordot(weights.detach().to(z_grads), z_grads.detach(), dims=1))
        return weights

    def _diagnose(
        self,
        z: torch.Tensor,
        z_leaf: torch.Tensor,
        losses: torch.Tensor,
        outputs: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
    ) -> None:
        """This step's gradient diagnostics (``trainables.diagnostics``) into the epoch's means; the
        graph is kept for the step itself, which they never change.

        Between tasks: on z, and on the shared parameters. A gradient method at parameter level
        computes those per-task gradients itself this step: they are taken from it (no second
        set of T backward passes); loss-weighting methods pay for them on diagnostic steps only.
        Between samples: per-sample losses of each trained task on the first
        ``diagnostics_samples`` samples of the (shuffled) batch, `003` A3's "randomly select eight".
        """
        trained = [self.tasks.index(t) for t in self.method.trained_tasks()]
        if len(trained) > 1:
            z_grads = feature_grads(losses, z_leaf)[trained]
            self._add_task_measures("feature", z_grads, trained)
            if isinstance(self.method, GradientAggregator) and self.grad_level == "param" and self.staged is None:
                self._pending_diagnosis = (z_grads, trained)
            else:
                self._diagnose_params(z, z_grads, trained)
        if self.diagnose_samples > 1:
            self._diagnose_samples(z, z_leaf, outputs, targets, [self.tasks[i] for i in trained])

    def _add_task_measures(self, level: str, grads: torch.Tensor, trained: list[int]) -> None:
        measures = pair_measures(grads, [self.tasks[i] for i in trained])
        measures["fd"] = feature_disentanglement(grads)
        self.diagnostics.add(level, measures)

    def _diagnose_params(self, z: torch.Tensor, z_grads: torch.Tensor, trained: list[int]) -> None:
        grads = param_grads(z, self.shared, z_grads, batched=self.batched_grads, chunk=int(self.config["grad_chunk"]))
        self._add_task_measures("param", grads, trained)

    def _diagnose_pending(self, z: torch.Tensor, grads: torch.Tensor | None = None) -> None:
        """The parameter-level measures left pending by ``_diagnose``: from the method's own
        per-task gradients ``grads`` (T, d) when it computed them, else computed here."""
        if self._pending_diagnosis is None:
            return
        z_grads, trained = self._pending_diagnosis
        self._pending_diagnosis = None
        if grads is not None and grads.shape[0] == len(self.tasks):
            self._add_task_measures("param", grads.detach()[trained], trained)
        else:
            self._diagnose_params(z, z_grads, trained)

    def _diagnose_samples(
        self,
        z: torch.Tensor,
        z_leaf: torch.Tensor,
        outputs: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        tasks: list[str],
    ) -> None:
        """`003` §4.2's single-task setting: pairs of gradients of one task on different samples,
        on the shared parameters and, as the surrogate, on each sample's own representation z_i."""
        means: dict[str, dict[str, list[float]]] = {"feature": {}, "param": {}}
        for task in tasks:
            output, target = outputs[task], targets[task]
            if not (torch.is_tensor(output) and torch.is_tensor(target)) or output.dim() == 0 or target.dim() == 0:
                continue
            n = min(self.diagnose_samples, output.shape[0], target.shape[0])
            if n < 2:
                continue
            sample_losses = torch.stack([self.problem.loss(task, output[i:i + 1], target[i:i + 1]) for i in range(n)])
            keep = torch.isfinite(sample_losses.detach()).nonzero().flatten().tolist()  # e.g. all pixels ignored
            if len(keep) < 2:
                continue
            z_grads = feature_grads(sample_losses[keep], z_leaf)
            levels = {}
            if z_leaf.dim() > 0 and z_leaf.shape[0] == output.shape[0]:
                levels["feature"] = sample_measures(torch.stack([z_grads[k, i] for k, i in enumerate(keep)]))
            levels["param"] = sample_measures(
                param_grads(z, self.shared, z_grads, batched=self.batched_grads, chunk=int(self.config["grad_chunk"]))
            )
            for level, measures in levels.items():
                self.diagnostics.add(level, {f"sample/{task}/{k}": v for k, v in measures.items()})
                for k, v in measures.items():
                    means[level].setdefault(k, []).append(v)
        for level, values in means.items():
            finite = {k: [v for v in vs if not math.isnan(v)] for k, vs in values.items()}
            self.diagnostics.add(level, {f"sample/{k}": sum(vs) / len(vs) for k, vs in finite.items() if vs})

    def _jacobian_backward(
        self, z: torch.Tensor, z_leaf: torch.Tensor, z_grads: torch.Tensor, losses: torch.Tensor
    ) -> torch.Tensor | None:
        """Per-task gradients G (T x d) at ``grad_level``, the method's direction from them, and
        the backward that writes it into the model's ``.grad``; returns the weights applied (or None)."""
        assert isinstance(self.method, GradientAggregator)
        graph = self._penalizes is not None
        if self.grad_level == "param":
            grads = param_grads(z, self.shared, z_grads, batched=self.batched_grads, create_graph=graph,
                                chunk=self.config["grad_chunk"])
        else:
            grads = z_grads.flatten(1)
        self._diagnose_pending(z, grads if self.grad_level == "param" else None)
        direction, weights = self.method.aggregate(grads.detach(), losses.detach())
        penalty_z = self._backward_penalty(grads, z_leaf) if graph else None
        self._backward_heads(losses, weights)
        if self.grad_level == "param":
            write_grads(self.shared, direction)
            if penalty_z is not None:
                z.backward(penalty_z)
        else:
            z_direction = direction.view_as(z)
            z.backward(z_direction if penalty_z is None else z_direction + penalty_z)
        return weights

    def _backward_penalty(self, grads: torch.Tensor, z_leaf: torch.Tensor) -> torch.Tensor | None:
        """Back-propagate the method's penalty on the task gradients (double backward).

        It reaches the heads and, at parameter level, the encoder's parameters directly; its
        gradient on the detached representation is returned so the caller pushes it through
        the encoder. The z-gradient of the task losses themselves is not kept: the encoder
        gets the method's direction instead.
        """
        assert self._penalizes is not None
        penalty = self._penalizes.gradient_penalty(grads)
        if penalty is None:
            return None
        z_leaf.grad = None
        penalty.backward(retain_graph=True)
        penalty_z = z_leaf.grad
        z_leaf.grad = None
        return penalty_z

    def _backward_heads(self, losses: torch.Tensor, weights: torch.Tensor | None) -> None:
        """Back-propagate into the task heads (the graph stops at the detached representation):
        the weighted losses or their plain sum (``heads_use_weights``), plus the method's own
        loss where it adds one (``AddsHeadsLoss``)."""
        assert isinstance(self.method, GradientAggregator)
        use = weights if (weights is not None and self.method.heads_use_weights) else torch.ones_like(losses)
        heads_loss = (use.detach() * losses).sum()
        extra = None if self._heads_loss is None else self._heads_loss.extra_loss(losses)
        (heads_loss if extra is None else heads_loss + extra).backward()

    def task_losses(self, model: MTLModel, inputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The task losses (T,) of ``model`` (this trainer's or a copy of it) on one batch."""
        return self._losses(self.forward(model, inputs), targets)

    def _losses(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.problem.loss(t, outputs[t], targets[t]) for t in self.tasks])

    def forward(self, model: MTLModel, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs of ``model``, through the method's per-task representations if any."""
        z = model.encode(inputs)
        return model.decode(z, self._representations(z))

    def _next_val_batch(self) -> Any:
        # Walk the validation split batch by batch, restarting it when exhausted (not
        # itertools.cycle, which would keep every batch in memory).
        if self._val_cycle is not None:
            batch = next(self._val_cycle, None)
            if batch is not None:
                return self.to_device(batch)
        self._val_cycle = iter(self.splits.val)
        return self.to_device(next(self._val_cycle))

    def to_device(self, batch: Any) -> Any:
        """Move a batch ``(inputs, {task: target})`` to the trainer's device.

        A no-op for data already loaded into device memory; batches from a DataLoader with
        pinned memory are copied asynchronously. ``inputs`` may be any object with ``.to``
        (a tensor, or a torch_geometric ``Batch`` of graphs).
        """
        inputs, targets = batch
        blocking = {"non_blocking": self.device.type == "cuda"}
        return inputs.to(self.device, **blocking), {t: v.to(self.device, **blocking) for t, v in targets.items()}

    # ----------------------------------------------------------------- epochs
    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        loss_sum = torch.zeros(len(self.tasks), dtype=torch.float64)
        weight_sum = torch.zeros(len(self.tasks), dtype=torch.float64)
        # the weight vector of every weighted step (T floats each), for the per-epoch median
        step_weights: list[torch.Tensor] = []
        steps = 0
        for batch in self.splits.train:
            inputs, targets = self.to_device(batch)
            losses, weights = self.train_step(inputs, targets)
            loss_sum += losses.double().cpu()
            steps += 1
            if weights is not None:
                applied = weights.double().cpu()
                weight_sum += applied
                step_weights.append(applied)
        self.method.end_epoch((loss_sum / max(steps, 1)).float())
        metrics = {f"train/{t}/loss": float(loss_sum[i] / max(steps, 1)) for i, t in enumerate(self.tasks)}
        if step_weights:
            # the mean (`002` §3.5) and the usual median (the two middle values averaged for an even
            # count; torch.median would take the lower one) over the epoch's weighted steps
            median = torch.quantile(torch.stack(step_weights), 0.5, dim=0)
            metrics.update({f"weight/{t}": float(weight_sum[i] / len(step_weights)) for i, t in enumerate(self.tasks)})
            metrics.update({f"weight_median/{t}": float(median[i]) for i, t in enumerate(self.tasks)})
        metrics.update({f"method/{k}": float(v) for k, v in self.method.epoch_diagnostics().items()})
        metrics.update(self.diagnostics.result())
        return metrics

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, dict[str, float]]:
        """Metrics of every task on ``split`` ('val' or 'test')."""
        self.model.eval()
        acc = self.problem.new_metrics(self.config)
        for batch in getattr(self.splits, split):
            inputs, targets = self.to_device(batch)
            acc.update(self.forward(self.model, inputs), targets)
        return acc.compute()

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, validate, test when validation improves; return the epoch's metrics."""
        start = time.perf_counter()
        metrics: dict[str, float] = {"train/lr": self.optimizer.param_groups[0]["lr"]}
        metrics.update(self.train_epoch())
        self.epoch += 1
        if self.scheduler is not None and not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        val = self.evaluate("val")
        score = self.problem.score(val, self.method.trained_tasks())
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(-score)
        metrics.update(flatten("val", val))
        metrics["val/score"] = score
        if score > self.best["best/val_score"] or self.best["best/epoch"] == 0:
            test = self.evaluate("test")
            self.best = {"best/val_score": score, "best/epoch": self.epoch, **flatten("best/val", val), **flatten("best/test", test)}
            if self.keep_model:
                self.best_state = self.model_state()
        metrics.update(self.best)
        metrics["epoch"] = self.epoch
        metrics["time/epoch_s"] = time.perf_counter() - start
        self.elapsed_s += metrics["time/epoch_s"]
        metrics["time/total_s"] = self.elapsed_s
        return metrics

    def fit(self, max_epochs: int) -> Iterator[dict[str, float]]:
        """Run epochs up to ``max_epochs`` (resuming from ``self.epoch``), yielding each epoch's metrics."""
        while self.epoch < max_epochs:
            yield self.run_epoch()

    # ----------------------------------------------------------------- checkpoints
    def model_state(self) -> dict[str, Any]:
        """A CPU copy of what a trained model is: the model's and the method's state (a method may
        hold parameters that the forward pass uses, e.g. RotoGrad's rotations) and the epoch."""
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "method": {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v
                       for k, v in self.method.state_dict().items()},
            "epoch": self.epoch,
        }

    def load_model(self, state: Mapping[str, Any]) -> None:
        """Load a ``model_state`` (e.g. a run's ``model/best.pt``) into this trainer's model and method."""
        self.model.load_state_dict(state["model"])
        if state.get("method") is not None:
            self.method.load_state_dict(state["method"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "elapsed_s": self.elapsed_s,
            "best": dict(self.best),
            "best_model": self.best_state,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))  # checkpoints from before it was kept: 0
        self.best = dict(state["best"])
        self.best_state = state.get("best_model")  # checkpoints from before it was kept: None
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])


def flatten(prefix: str, metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{'CL': {'accuracy': .9}} -> {'<prefix>/CL/accuracy': .9}."""
    return {f"{prefix}/{t}/{m}": v for t, ms in metrics.items() for m, v in ms.items()}
