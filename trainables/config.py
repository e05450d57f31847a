"""The hyperparameters every trial has, and how a flat trial config splits up.

A trial config is one flat dict, as Ray Tune and MLflow want it: the method name, the
common hyperparameters below, and the method's own parameters as ``<method>.<param>``.
Defaults are layered: these < the problem's < the space's constants < the trial's values.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainables.errors import ConfigError
from trainables.methods.base import Hyperparameter

COMMON: dict[str, Hyperparameter] = {
    "lr": Hyperparameter(1e-3, float, "learning rate"),
    "dropout": Hyperparameter(0.0, float, "dropout probability p of the encoder and heads"),
    "weight_decay": Hyperparameter(0.0, float, "weight decay"),
    "optimizer": Hyperparameter("adam", str, "adam, adamw or sgd (with momentum)"),
    "momentum": Hyperparameter(0.9, float, "momentum of sgd"),
    "batch_size": Hyperparameter(256, int, "training batch size"),
    "lr_decay": Hyperparameter(1.0, float, "ExponentialLR gamma per epoch (1 = constant); with lr_step_every, StepLR's gamma"),
    "lr_step_every": Hyperparameter(
        0, int, "0: decay the lr every epoch (ExponentialLR); N > 0: multiply it by lr_decay every N epochs (StepLR, "
        "e.g. MTAN's NYUv2 schedule: lr_decay=0.5, lr_step_every=100)"
    ),
    "grad_level": Hyperparameter("param", str, "gradient methods: 'param' (shared parameters) or 'feature' (representation)"),
    "batched_grads": Hyperparameter(
        "auto", str, "per-task gradients in one batched pass (true), a loop (false), or auto: batched on a GPU, "
        "the loop on the CPU, where it measured faster (docs/benchmarks.md)"
    ),
    "grad_chunk": Hyperparameter(
        0, int, "batched per-task gradients: at most this many tasks per batched backward (0 = all); the batched "
        "pass holds every task's activation gradients at once, a chunk of k holds k"
    ),
    "grad_memory": Hyperparameter(
        "auto", str, "methods that need only the Gramian GGᵀ of the per-task gradients (MGDA, CAGrad, IMTL, Nash-MTL, "
        "...) at parameter level: 'jacobian' holds the T x d gradients; 'gramian' builds GGᵀ stage by stage through "
        "the encoder (holding T x the largest stage) and takes the direction by one more plain backward; auto: "
        "gramian on a GPU when the Jacobian would fill an eighth of its free memory and the stages at least halve "
        "it, else jacobian"
    ),
    "seed": Hyperparameter(0, int, "base seed; a run's seed is seed + its run index"),
    "run_index": Hyperparameter(0, int, "index of the run in its search (seeds derive from it)"),
    "device": Hyperparameter("auto", str, "auto, cpu or cuda"),
}
OPTIMIZERS = ("adam", "adamw", "sgd")
BATCHED = {"auto": None, "true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
GRAD_LEVELS = ("param", "feature")
GRAD_MEMORY = ("auto", "jacobian", "gramian")


def method_params(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The method's own parameters from ``<method>.<param>`` keys."""
    prefix = method + "."
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def resolve(config: Mapping[str, Any], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Common defaults, then each layer, then ``config``; common values are type-checked."""
    merged: dict[str, Any] = {k: hp.default for k, hp in COMMON.items()}
    for layer in (*layers, config):
        merged.update(layer)
    for key, hp in COMMON.items():
        merged[key] = hp.parse("common", key, merged[key])
    if merged["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {merged['optimizer']!r} (known: {', '.join(OPTIMIZERS)})")
    if str(merged["batched_grads"]).lower() not in BATCHED:
        raise ConfigError(f"batched_grads must be auto, true or false, got {merged['batched_grads']!r}")
    merged["batched_grads"] = str(merged["batched_grads"]).lower()
    if merged["grad_chunk"] < 0:
        raise ConfigError(f"grad_chunk must be 0 (all tasks at once) or a positive number of tasks, got {merged['grad_chunk']}")
    if merged["grad_level"] not in GRAD_LEVELS:
        raise ConfigError(f"grad_level must be one of {', '.join(GRAD_LEVELS)}, got {merged['grad_level']!r}")
    if merged["grad_memory"] not in GRAD_MEMORY:
        raise ConfigError(f"grad_memory must be one of {', '.join(GRAD_MEMORY)}, got {merged['grad_memory']!r}")
    if "method" not in merged:
        raise ConfigError("the config names no method")
    return merged
