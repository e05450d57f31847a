"""Trial-epochs per minute of a search, against the floor of the same epochs run back to back.

The search is the README's main job (``mnist_cl_rr``, its default methods, 3 trials per arm,
ASHA), run through Ray twice in one process: with a worker per trial (``reuse_actors`` off:
every trial starts a Python, imports torch and builds its data) and with workers kept from
trial to trial (on, the default). The floor is the same trials' epochs (each trial's config,
for the epochs it trained) run one after the other in this process on one thread (a trial's
CPU), with no Ray: what the epochs themselves cost. Target (issue 12): the search's rate at least 0.8 x the floor's rate
x the number of concurrent trials.

    python bench/search_throughput.py                     # mnist_cl_rr, 3 per arm, 2 concurrent
    python bench/search_throughput.py --samples 2 --max-epochs 5
    python bench/search_throughput.py --checkpoint-cost   # what the per-epoch checkpoint costs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SEARCHER_OFFLINE", "1")

import mlflow  # noqa: E402

from searcher.launch import quiet_ray_env  # noqa: E402
from searcher.search import SearchOptions, run_search  # noqa: E402
from searcher.session import open_session  # noqa: E402
from trainables.trainer import Trainer  # noqa: E402


def trials_of(uri: str, experiment: str) -> list[tuple[dict, int]]:
    """Each finished trial's config (as MLflow holds its params) and the epochs it trained."""
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment])
    runs = runs[runs["tags.searcher.role"] != "search"]
    out = []
    for _, run in runs.iterrows():
        config = {k[len("params."):]: v for k, v in run.items() if k.startswith("params.") and isinstance(v, str)}
        out.append((config, int(run["metrics.epoch"])))
    return out


def floor(session, trials: list[tuple[dict, int]]) -> float:
    """Seconds to train every trial's epochs back to back in this process (set-up included),
    on one thread, as a trial gets it from Ray (1 CPU per trial: Ray sets OMP_NUM_THREADS=1)."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    for config, epochs in trials:
        keep = {k: v for k, v in config.items() if k not in ("space", "max_epochs", "data_source")}
        trainer = Trainer(session.problem, keep, session.settings.data)
        for _ in trainer.fit(epochs):
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="mnist_cl_rr")
    parser.add_argument("--methods", default=None)
    parser.add_argument("--samples", type=int, default=3, help="trials per arm")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (1 CPU each)")
    parser.add_argument("--checkpoint-cost", action="store_true",
                        help="also run the reused-worker search with a checkpoint at each trial's last epoch only")
    args = parser.parse_args()

    quiet_ray_env()
    import ray

    ray.init(num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False)
    methods = args.methods.split(",") if args.methods else None
    session = open_session(args.space, methods, [], None, args.max_epochs)
    work = tempfile.mkdtemp(prefix="throughput-")
    uri = f"sqlite:///{work}/mlflow.db"
    rows = []
    every_epoch = session.settings
    last_only = dataclasses.replace(every_epoch, checkpoint_every=every_epoch.max_epochs)
    variants = [("a worker per trial", False, every_epoch, "fresh"), ("workers reused", True, every_epoch, "reuse")]
    if args.checkpoint_cost:
        variants.append(("workers reused, checkpoint at the last epoch only", True, last_only, "last-only"))
    for label, reuse, settings, name in variants:
        session.settings = settings
        options = SearchOptions(num_samples=args.samples, storage=f"{work}/ray", name=name, reuse_actors=reuse)
        start = time.perf_counter()
        run_search(session, options, uri, name)
        wall = time.perf_counter() - start
        trials = trials_of(uri, name)
        epochs = sum(e for _, e in trials)
        rows.append((label, len(trials), epochs, wall))
    session.settings = every_epoch
    trials = trials_of(uri, "reuse")
    floor_s = floor(session, trials)
    floor_epochs = sum(e for _, e in trials)
    floor_rate = floor_epochs / floor_s * 60
    print(f"\n{args.space}, {args.samples} trials per arm, {args.concurrent} concurrent, work folder {work}")
    print(f"floor: {floor_epochs} trial-epochs back to back in one process in {floor_s:.1f} s = {floor_rate:.1f} per minute")
    print("| search | trials | trial-epochs | wall | trial-epochs/min | / (floor x concurrent) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, n, epochs, wall in rows:
        rate = epochs / wall * 60
        print(f"| {label} | {n} | {epochs} | {wall:.1f} s | {rate:.1f} | {rate / (floor_rate * args.concurrent):.2f} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
