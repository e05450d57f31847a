"""Peak memory of one training step on the CPU, and how much of it the per-task Jacobian is.

Issue 3 asks that methods needing only the T x T Gramian of the task gradients not keep the
full T x d Jacobian *when that saves memory*. This measures whether it would: for each model of
``bench/step_time.py`` it runs one step of EW and of a Gramian-only method (MGDA by default)
with the per-task gradients batched, looped, and on the representation, each in a fresh
process, and reports the step's peak resident memory above what the process held before the
step, next to the Jacobian's own size (T x d x 4 bytes).

How: Linux resets a process's peak RSS (VmHWM) when "5" is written to /proc/self/clear_refs;
with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) every tensor buffer
is its own mapping, returned to the system when freed, so RSS follows the live tensors. One
warm-up step comes first (optimizer state, lazy inits), then the peak is reset and one step
measured. The GPU path of ``bench/step_time.py`` reads ``torch.cuda.max_memory_allocated``.

    python bench/step_memory.py --model resnet18 --batch 8
    python bench/step_memory.py --model qm9net --batch 48 --methods ew,mgda,nash_mtl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(model: str, method: str, variant: str, batch: int) -> dict:
    """In this process: one warm-up step, reset the peak, one measured step."""
    import torch

    from step_time import make_trainer

    torch.manual_seed(0)
    trainer = make_trainer(model, method, variant, batch, {})
    trainer.model.train()
    inputs, targets = next(iter(trainer.splits.train))
    trainer.train_step(inputs, targets)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_kib("VmRSS")
    trainer.train_step(inputs, targets)
    peak = rss_kib("VmHWM")
    d = sum(p.numel() for p in trainer.shared)
    return {"model": model, "method": method, "variant": variant, "tasks": len(trainer.tasks), "shared_params": d,
            "step_peak_mib": (peak - before) / 1024, "jacobian_mib": len(trainer.tasks) * d * 4 / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("lenet", "resnet18", "qm9net"), default="resnet18")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--methods", default="ew,mgda")
    ap.add_argument("--variants", default="batched,loop,feature", help="for gradient methods")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "VARIANT", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, variant, batch = args.child
        print(json.dumps(measure(args.model, method, variant, int(batch))))
        return
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("bench/step_memory.py needs Linux's /proc/self/clear_refs")
    from trainables.methods import METHODS

    batch = args.batch or {"lenet": 256, "resnet18": 8, "qm9net": 48}[args.model]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONWARNINGS": "ignore"}
    rows = []
    for method in args.methods.split(","):
        gradient = METHODS.get(method).kind == "gradient"
        for variant in args.variants.split(",") if gradient else ["default"]:
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", method, variant, str(batch)],
                                 env=env, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    ew = next((r["step_peak_mib"] for r in rows if r["method"] == "ew"), None)
    first = rows[0]
    print(f"{args.model}, batch {batch}, T = {first['tasks']}, d = {first['shared_params']:,} shared parameters, "
          f"Jacobian T x d x 4 B = {first['jacobian_mib']:.1f} MiB")
    print("| method | per-task gradients | step peak above baseline (MiB) | x EW | Jacobian / step peak |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['step_peak_mib'] / ew:.2f}" if ew else "-"
        holds_g = r["method"] != "ew" and r["variant"] not in ("feature", "gramian", "gramian_loop")
        share = f"{r['jacobian_mib'] / r['step_peak_mib']:.2f}" if holds_g else "-"
        print(f"| {r['method']} | {r['variant'] if r['method'] != 'ew' else '-'} | {r['step_peak_mib']:.1f} | {ratio} | {share} |")


if __name__ == "__main__":
    main()
