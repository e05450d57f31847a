"""Wall time of one training epoch of a real benchmark (issue 6), through ``searcher train``'s path.

An epoch here is what the trainer counts in ``time/epoch_s``: the training pass over the train
split, the validation pass, and the test pass (run whenever validation improves: always on the
first epoch). Each pass is timed on its own, with the number of training steps, so that a
per-step figure and an extrapolation to a larger set can be read off.

    python bench/epoch_time.py --space qm9 --param subset=2000
    python bench/epoch_time.py --space cityscapes_r18 --synthetic --param pretrained=false  # offline: no ImageNet weights
    python bench/epoch_time.py --space cityscapes_r18 --data-dir ~/data/cityscapes   # real data

``--synthetic`` writes a Cityscapes set of the real size in MTAN's preprocessed ``.npy`` layout
(2975 train / 500 val samples of 128x256, random pixels and labels) into a temporary folder
and trains on it: an epoch's cost depends on the sample count and resolution, not on the
pixel values, so this measures the epoch where the real data is not at hand. The folder is
deleted afterwards. ``--train-samples`` shrinks it (the per-step figure stays comparable).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SEARCHER_OFFLINE", "1")

from searcher.session import open_session, run_config  # noqa: E402
from trainables.trainer import Trainer  # noqa: E402


def write_synthetic_cityscapes(root: Path, n_train: int, n_val: int, height: int = 128, width: int = 256) -> None:
    """MTAN's layout: ``{train,val}/{image,label_7,label_19,depth}/{i}.npy`` (labels -1 = ignore)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for kind in ("image", "label_7", "label_19", "depth"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((height, width, 3), dtype=np.float32))
            np.save(root / split / "label_7" / f"{i}.npy", rng.integers(-1, 7, (height, width)).astype(np.float32))
            np.save(root / split / "label_19" / f"{i}.npy", rng.integers(-1, 19, (height, width)).astype(np.float32))
            np.save(root / split / "depth" / f"{i}.npy", rng.random((height, width, 1), dtype=np.float32) * 80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="qm9")
    ap.add_argument("--method", default="ew")
    ap.add_argument("--param", action="append", default=[], help="fixed values, as `searcher train --param`")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--synthetic", action="store_true", help="Cityscapes only: a synthetic set of the real size (npy layout)")
    ap.add_argument("--train-samples", type=int, default=2975, help="with --synthetic (Cityscapes train: 2975)")
    ap.add_argument("--val-samples", type=int, default=500, help="with --synthetic (Cityscapes val, our test set: 500)")
    args = ap.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-epoch-"))
    try:
        data_dir = args.data_dir
        if args.synthetic:
            start = time.perf_counter()
            write_synthetic_cityscapes(work / "cityscapes", args.train_samples, args.val_samples)
            data_dir = str(work / "cityscapes")
            print(f"wrote {args.train_samples} + {args.val_samples} synthetic samples in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        session = open_session(args.space, [args.method], args.param, data_dir, max_epochs=1)
        trainer = Trainer(session.problem, run_config(session, args.method, seed=0), session.settings.data)
        prepare_s = time.perf_counter() - start
        times = {}
        for part, run in (("train", trainer.train_epoch), ("val", lambda: trainer.evaluate("val")),
                          ("test", lambda: trainer.evaluate("test"))):
            start = time.perf_counter()
            run()
            times[part] = time.perf_counter() - start
        steps = len(trainer.splits.train)
        print(f"{args.space} {args.method} {' '.join(args.param)}: {trainer.splits.sizes} samples ({trainer.splits.source}), {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}")
        print(f"data + model set-up: {prepare_s:.1f} s")
        print(f"train pass: {times['train']:.1f} s ({steps} steps, {times['train'] / max(steps, 1):.2f} s per step); "
              f"val pass: {times['val']:.1f} s; test pass: {times['test']:.1f} s; epoch: {sum(times.values()):.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
