"""The hyperparameters every trial has, and how a flat trial config splits up.

A trial config is one flat dict, as Ray Tune and MLflow want it: the method name, the
common hyperparameters below, and the method's own parameters as ``<method>.<param>``.
Defaults are layered: these < the problem's < the space's constants < the trial's values.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainables.errors import ConfigError
from trainables.methods.base import Hyperparameter

OPTIMIZERS = ("adam", "adamw", "sgd")
BATCHED = {"auto": None, "true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
GRAD_LEVELS = ("param", "feature")
GRAD_MEMORY = ("auto", "jacobian", "gramian")
LR_SCHEDULES = ("exponential", "plateau")

COMMON: dict[str, Hyperparameter] = {
    "lr": Hyperparameter(1e-3, float, "learning rate", low=0.0, open_low=True),
    "dropout": Hyperparameter(0.0, float, "dropout probability p of the encoder and heads", low=0.0, high=1.0, open_high=True),
    "weight_decay": Hyperparameter(0.0, float, "weight decay", low=0.0),
    "optimizer": Hyperparameter("adam", str, "adam, adamw or sgd (with momentum)", choices=OPTIMIZERS),
    "momentum": Hyperparameter(0.9, float, "momentum of sgd", low=0.0, high=1.0),
    "batch_size": Hyperparameter(256, int, "training batch size", low=1),
    "lr_decay": Hyperparameter(
        1.0, float, "ExponentialLR gamma per epoch (1 = constant); with lr_step_every, StepLR's gamma", low=0.0, open_low=True
    ),
    "lr_step_every": Hyperparameter(
        0, int, "0: decay the lr every epoch (ExponentialLR); N > 0: multiply it by lr_decay every N epochs (StepLR, "
        "e.g. MTAN's NYUv2 schedule: lr_decay=0.5, lr_step_every=100)", low=0
    ),
    "lr_schedule": Hyperparameter(
        "exponential", str, "exponential: lr_decay every epoch (or every lr_step_every epochs); plateau: "
        "ReduceLROnPlateau on the validation score, lr *= plateau_factor after plateau_patience epochs without "
        "improvement, down to plateau_min_lr (Nash-MTL's and `002`'s QM9 schedule)", choices=LR_SCHEDULES
    ),
    "plateau_factor": Hyperparameter(0.7, float, "lr_schedule=plateau: factor of each reduction", low=0.0, high=1.0,
                                     open_low=True, open_high=True),
    "plateau_patience": Hyperparameter(5, int, "lr_schedule=plateau: epochs without improvement before a reduction",
                                       low=0),
    "plateau_min_lr": Hyperparameter(1e-5, float, "lr_schedule=plateau: the lr is never reduced below this", low=0.0),
    "diagnostics_every": Hyperparameter(
        0, int, "every K-th training step, the gradient diagnostics between the trained tasks (GDS, GMS, conflicting "
        "pairs and components, FD; `003` §4.2, `004` §5) on the shared parameters and on z, logged per epoch as "
        "diag/...; 0 = off",
        low=0
    ),
    "diagnostics_samples": Hyperparameter(
        0, int, "with diagnostics_every: also compare the per-sample gradients of each trained task on this many "
        "samples of the batch (`003` §4.2's between-samples, single-task setting; `003` A3 takes 8 on the best EW "
        "configuration, not during a search); costs one backward pass per sample and trained task on a diagnostic "
        "step; 0 = between tasks only", low=0
    ),
    "grad_level": Hyperparameter(
        "param", str, "gradient methods: 'param' (shared parameters) or 'feature' (representation)", choices=GRAD_LEVELS
    ),
    "batched_grads": Hyperparameter(
        "auto", str, "per-task gradients in one batched pass (true), a loop (false), or auto: batched on a GPU, "
        "the loop on the CPU, where it measured faster (docs/benchmarks.md)"
    ),
    "grad_chunk": Hyperparameter(
        0, int, "batched per-task gradients: at most this many tasks per batched backward (0 = all); the batched "
        "pass holds every task's activation gradients at once, a chunk of k holds k", low=0
    ),
    "grad_memory": Hyperparameter(
        "auto", str, "methods that need only the Gramian GGᵀ of the per-task gradients (MGDA, CAGrad, IMTL, Nash-MTL, "
        "...) at parameter level: 'jacobian' holds the T x d gradients; 'gramian' builds GGᵀ stage by stage through "
        "the encoder (holding T x the largest stage) and takes the direction by one more plain backward; auto: "
        "gramian on a GPU when the Jacobian would fill an eighth of its free memory and the stages at least halve "
        "it, else jacobian", choices=GRAD_MEMORY
    ),
    "keep_model": Hyperparameter(
        True, bool, "keep the model of the best validation epoch (a CPU copy on each improvement) and log it to the "
        "run as model/best.pt, what `searcher robustness` evaluates; false for big searches on big models (a "
        "ResNet-50 is ~100 MB per trial)"
    ),
    "seed": Hyperparameter(0, int, "base seed; a run's seed is seed + its run index"),
    "run_index": Hyperparameter(0, int, "index of the run in its search (seeds derive from it)", low=0),
    "device": Hyperparameter("auto", str, "auto, cpu or cuda"),
}


#: A configuration's repeats (``confirm``, ``rerun``) add multiples of this to its base seed;
#: run indices stay below it, so no repeat shares a seed with any trial of its search.
REPEAT_SEED_OFFSET = 100_000


def run_seed(config: Mapping[str, Any]) -> int:
    """The seed a run trains with: its base seed plus its run index (trials of a search differ
    by their index; every arm's k-th trial has the same seed, so no method gets luckier seeds)."""
    return int(config["seed"]) + int(config["run_index"])


def repeat_seed(seed: int, repeat: int) -> int:
    """Base seed of repeat ``repeat`` (0, 1, ...) of a configuration first trained with base seed
    ``seed``; the run index is kept. One scheme for ``confirm``'s repeats and ``rerun``'s runs:
    new for every repeat, the same on every call (a repeat can be redone exactly), and the same
    for repeat k of a method and the k-th fixed-weight rerun of that method's run, so the two
    are paired (same initialization, same data order)."""
    return int(seed) + REPEAT_SEED_OFFSET * (int(repeat) + 1)


def method_params(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The method's own parameters from ``<method>.<param>`` keys."""
    prefix = method + "."
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def option_schema(default: Any) -> Hyperparameter | None:
    """How a problem option is read: as the type of its default (bool, int, float); None for
    text, which stays text (the problem checks its own choices, e.g. a data source, when it
    prepares the data)."""
    if isinstance(default, (bool, int, float)):
        return Hyperparameter(default, type(default), f"an option of the problem, default {default!r}")
    return None


def option_value(key: str, raw: Any, default: Any) -> Any:
    """A problem option read through its schema (``option_schema``)."""
    schema = option_schema(default)
    return raw if schema is None else schema.parse("", key, raw)


def resolve(config: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Common defaults, then the problem's ``options`` (its defaults), then ``config``; common
    values are type-checked, and problem options typed as their defaults."""
    options = options or {}
    merged: dict[str, Any] = {k: hp.default for k, hp in COMMON.items()}
    merged.update(options)
    merged.update(config)
    for key, hp in COMMON.items():
        merged[key] = hp.parse("", key, merged[key])
    for key, default in options.items():
        if key not in COMMON:
            merged[key] = option_value(key, merged[key], default)
    if str(merged["batched_grads"]).lower() not in BATCHED:
        raise ConfigError(f"batched_grads must be auto, true or false, got {merged['batched_grads']!r}")
    merged["batched_grads"] = str(merged["batched_grads"]).lower()
    if merged["lr_schedule"] == "plateau" and (merged["lr_decay"] != 1.0 or merged["lr_step_every"] != 0):
        raise ConfigError(f"lr_schedule=plateau reduces the lr on the validation score; lr_decay "
                          f"({merged['lr_decay']}) and lr_step_every ({merged['lr_step_every']}) are for "
                          "lr_schedule=exponential: leave them at 1.0 and 0, or set plateau_factor / plateau_patience")
    if "method" not in merged:
        raise ConfigError("the config names no method")
    return merged


#: Keys a launch adds to a trial's config that are not part of any configuration (the grid
#: sampler's index into a planned list): not logged.
LAUNCH_KEYS = ("grid_point",)


def run_params(config: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a run records as its params: the resolved, typed config (``resolve``) with every own
    parameter of its method, given or default, as ``<method>.<param>``; other methods' keys are
    dropped. ``searcher train`` and a Ray trial of the same configuration record the same."""
    from trainables.methods import METHODS

    resolved = resolve(config, options)
    method = str(resolved["method"])
    own = METHODS.get(method).resolve_params(method_params(resolved, method))
    params = {k: v for k, v in resolved.items() if "." not in k and k not in LAUNCH_KEYS}
    params.update({f"{method}.{k}": v for k, v in own.items()})
    return params
