"""Fingerprints of every method's training, for a refactor that must not change any number.

Each registered method (and each way of forming its per-task gradients that applies: the
default, ``feature``, ``gramian``, and the gradient diagnostics ``diag2s4``) trains ``--steps``
steps of Multi-MNIST CL_RR (LeNet, the offline digits) with a fixed seed. The fingerprint is the
SHA-256 of every step's losses and weights and of the final model, method and optimizer state,
bit for bit. Run it before and after a change and compare:

    python bench/method_fingerprints.py --out /tmp/before.json
    python bench/method_fingerprints.py --out /tmp/after.json --compare /tmp/before.json

It exits 1 when a fingerprint differs or a method is missing from one of the two files. Same
machine, same torch, same thread count: bitwise equality is only promised there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from step_time import make_trainer  # noqa: E402
from trainables.methods import METHODS, GradientAggregator  # noqa: E402


def variants(method: str) -> list[str]:
    """The gradient-forming variants that apply to ``method`` (a loss weighting forms none)."""
    cls = METHODS.get(method)
    out = ["default", "diag2s4"]
    if issubclass(cls, GradientAggregator):
        out.append("feature")
        # (the flag before issue 15's capabilities, the kind after: the same variants either way)
        if getattr(cls, "gramian_only", False) or any(b.__name__ == "GramianWeighting" for b in cls.__mro__):
            out.append("gramian")
    return out


def _feed(digest: Any, value: Any) -> None:
    """Feed tensors (their raw bytes, dtype and shape) and plain values into ``digest``."""
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            digest.update(str(k).encode())
            _feed(digest, value[k])
    elif isinstance(value, (list, tuple)):
        for v in value:
            _feed(digest, v)
    else:
        digest.update(repr(value).encode())


def fingerprint(method: str, variant: str, steps: int, batch: int) -> dict[str, Any]:
    """Train ``steps`` steps; return the digest and the last step's losses (for a readable diff)."""
    trainer = make_trainer("lenet", method, variant, batch, {})
    trainer.model.train()
    digest = hashlib.sha256()
    losses = weights = None
    batches = iter(trainer.splits.train)
    for _ in range(steps):
        inputs, targets = trainer.to_device(next(batches))
        losses, weights = trainer.train_step(inputs, targets)
        _feed(digest, [losses, weights])
    trainer.method.end_epoch(losses)
    _feed(digest, trainer.method.epoch_diagnostics())
    _feed(digest, [trainer.model.state_dict(), trainer.method.state_dict(), trainer.optimizer.state_dict()["state"]])
    return {"sha256": digest.hexdigest(), "last_losses": [float(v) for v in losses],
            "last_weights": None if weights is None else [float(v) for v in weights]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", required=True, help="where to write the fingerprints (JSON)")
    parser.add_argument("--compare", default=None, help="fingerprints of an earlier run (JSON) to compare with")
    args = parser.parse_args()
    torch.set_num_threads(1)  # bitwise equality needs the same reduction order
    methods = METHODS.names() if args.methods == "all" else args.methods.split(",")
    result = {f"{m}/{v}": fingerprint(m, v, args.steps, args.batch) for m in methods for v in variants(m)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"{len(result)} fingerprints written to {args.out}")
    if args.compare is None:
        return 0
    with open(args.compare) as f:
        before = json.load(f)
    if args.methods != "all":
        before = {k: v for k, v in before.items() if k.split("/")[0] in methods}
    differ = sorted(k for k in set(before) & set(result) if before[k]["sha256"] != result[k]["sha256"])
    missing = sorted(set(before) ^ set(result))
    for key in differ:
        print(f"DIFFERS {key}: last losses {before[key]['last_losses']} -> {result[key]['last_losses']}")
    for key in missing:
        print(f"MISSING {key}: in only one of the two files")
    print(f"{len(set(before) & set(result)) - len(differ)} identical, {len(differ)} differ, {len(missing)} missing")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
