"""What pruning buys: the paper's full grid with FIFO against TPE + ASHA, side by side in one run.

Both searches run the same method(s) on the same space (default ``mnist_cl_rr`` with EW and
Adam: `002` §3.1's grid of 7 learning rates x 6 dropouts = 42 configurations, 10 epochs each)
on one Ray instance, one after the other. For each we record the total trial-epochs spent
(the sum over trials of the epochs each trained: the compute), the best validation score
reached (`Problem.score`, Δm in % against the nominal references), and that best trial's test
Δm at its best validation epoch. Target (issue 4): TPE + ASHA reaches the grid's best
validation score within noise for at most a quarter of the grid's epochs.

    python bench/pruning.py                                # mnist_cl_rr, EW, Adam
    python bench/pruning.py --methods ew,cagrad --samples 60
    python bench/pruning.py --skip-grid --samples 15 --grace-period 1   # ASHA settings only

Noise: the spread of the grid's validation scores around its best is printed too (the best 5
configurations' scores), as a scale for "within noise".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import mlflow
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SEARCHER_OFFLINE", "1")

from searcher.search import SearchOptions, quiet_ray_env, run_search  # noqa: E402
from searcher.session import open_session  # noqa: E402


def summarize(uri: str, experiment: str, problem, tasks) -> dict:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment])
    trials = runs[runs["tags.searcher.role"] != "search"]
    best = trials.sort_values("metrics.best/val_score", ascending=False).iloc[0]
    test = {t: {m.name: float(best[f"metrics.best/test/{t}/{m.name}"]) for m in spec.metrics}
            for t, spec in zip(tasks, problem.tasks)}
    top5 = trials["metrics.best/val_score"].sort_values(ascending=False).head(5).round(2).tolist()
    return {
        "trials": len(trials),
        "trial_epochs": int(trials["metrics.epoch"].sum()),
        "best_val_score": float(best["metrics.best/val_score"]),
        "best_test_delta_m": problem.score(test, tasks),
        "best_config": f"{best['params.method']} lr={best['params.lr']} dropout={best['params.dropout']}",
        "top5_val_scores": top5,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mnist_cl_rr")
    ap.add_argument("--methods", default="ew")
    ap.add_argument("--param", action="append", default=["optimizer=adam"], help="fixed values (default optimizer=adam, as `002`)")
    ap.add_argument("--samples", type=int, default=30, help="TPE + ASHA trials")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--grace-period", type=int, default=None, help="ASHA's first rung (default: max_epochs // 5, as tune)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-grid", action="store_true",
                    help="only TPE + ASHA (the grid's trial-epochs are a count: 42 x 10 = 420 by default)")
    args = ap.parse_args()

    quiet_ray_env()
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    work = tempfile.mkdtemp(prefix="bench-pruning-")
    uri = f"sqlite:///{work}/mlflow.db"
    methods = args.methods.split(",")
    session = open_session(args.space, methods, args.param, None, args.max_epochs)
    tasks = session.problem.task_names
    results = {}
    searches = [
        ("grid + FIFO", SearchOptions(search="grid", scheduler="fifo", seed=args.seed, storage=f"{work}/ray", name="grid")),
        ("TPE + ASHA", SearchOptions(search="tpe", scheduler="asha", num_samples=args.samples, seed=args.seed,
                                     grace_period=args.grace_period, storage=f"{work}/ray", name="tpe")),
    ]
    for label, options in searches[1:] if args.skip_grid else searches:
        start = time.perf_counter()
        run_search(session, options, uri, options.name)
        results[label] = {**summarize(uri, options.name, session.problem, tasks), "wall_s": round(time.perf_counter() - start)}
    table = pd.DataFrame(results).T
    print(f"\n{args.space}, methods {args.methods}, fixed {args.param}, {session.settings.max_epochs} epochs, "
          f"{os.cpu_count()} CPUs, data {session.settings.data.get('digit_source', '-')}")
    with pd.option_context("display.width", 220, "display.max_colwidth", 60):
        print(table.to_string())
    if "grid + FIFO" in results:
        grid, tpe = results["grid + FIFO"], results["TPE + ASHA"]
        print(f"epochs ratio TPE+ASHA / grid: {tpe['trial_epochs'] / grid['trial_epochs']:.3f}; "
              f"best validation score difference (TPE+ASHA - grid): {tpe['best_val_score'] - grid['best_val_score']:+.2f} points")
    print(f"ASHA grace period {args.grace_period or 'default'}, {args.samples} TPE samples")
    ray.shutdown()


if __name__ == "__main__":
    main()
