"""What pruning buys: the paper's full grid with FIFO against TPE + ASHA, side by side in one run.

Both searches run the same methods on the same space (default ``mnist_cl_rr`` with EW and
Adam: `002` §3.1's grid of 7 learning rates x 6 dropouts = 42 configurations, 10 epochs each)
on one Ray instance, one after the other. For each we record the total trial-epochs spent
(the sum over trials of the epochs each trained: the compute), the best validation score
reached (`Problem.score`, Δm in % against the nominal references), and that best trial's test
Δm at its best validation epoch, per method (each method has its own sampler and its own
ASHA, issue 12). With ``--search grid`` the pruned search trains the same grid points with
the same seeds as the FIFO grid (the grid sampler's seeded order gives each point the same run
index), so it shows exactly whether per-method ASHA stops a method's grid best. Target (issue 4): TPE + ASHA reaches the grid's best
validation score within noise for at most a quarter of the grid's epochs.

    python bench/pruning.py                                # mnist_cl_rr, EW, Adam
    python bench/pruning.py --methods ew,cagrad --samples 60
    python bench/pruning.py --skip-grid --samples 15 --grace-period 1   # ASHA settings only

Noise: "within noise" is measured, not assumed. After the searches, each one's best
configuration is retrained with ``--noise-seeds`` new seeds (``searcher confirm``'s repeats).
The standard deviation of a configuration's retrained best validation scores is the seed
noise of one training; the mean is what the configuration is worth, free of the luck that
made it the best of many draws. Both are printed, and the difference between the searches'
retrained means in units of the grid's seed noise and of its standard error. The spread of
the grid's top 5 configurations is printed too.

``--search random`` runs the pruned search with Optuna's random sampler instead of TPE, and
``--search grid`` runs the paper's whole grid with ASHA stopping its losers: ASHA's pruning
assumes trials of spread quality, which TPE's focus on good regions removes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import mlflow
import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SEARCHER_OFFLINE", "1")

from searcher.confirm import plan_confirm, run_confirm  # noqa: E402
from searcher.launch import quiet_ray_env  # noqa: E402
from searcher.search import SearchOptions, run_search  # noqa: E402
from searcher.session import open_session  # noqa: E402


def arm_of(run: pd.Series) -> str:
    method = str(run["params.method"])
    task = run.get("tags.searcher.task")
    return f"{method}[{task}]" if method == "single_task" and isinstance(task, str) else method


def config_key(run: pd.Series) -> tuple:
    """What tells a configuration apart in these searches: the common values and the method's own."""
    method = str(run["params.method"])
    return tuple(sorted((k[len("params."):], v) for k, v in run.items() if isinstance(v, str) and (
        k in ("params.lr", "params.dropout", "params.optimizer", "params.weight_decay")
        or k.startswith(f"params.{method}."))))


def summarize(uri: str, experiment: str, problem, tasks) -> dict[str, dict]:
    """Per arm (each method; single_task per task): trials, trial-epochs, its best trial."""
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment])
    trials = runs[runs["tags.searcher.role"] != "search"].copy()
    trials["arm"] = trials.apply(arm_of, axis=1)
    out = {}
    for arm, group in trials.groupby("arm", sort=False):
        best = group.sort_values("metrics.best/val_score", ascending=False).iloc[0]
        test = {t: {m.name: float(best[f"metrics.best/test/{t}/{m.name}"]) for m in spec.metrics}
                for t, spec in zip(tasks, problem.tasks) if f"metrics.best/test/{t}/{spec.metrics[0].name}" in best}
        key = config_key(best)
        out[arm] = {
            "trials": len(group),
            "trial_epochs": int(group["metrics.epoch"].sum()),
            "best_val_score": round(float(best["metrics.best/val_score"]), 2),
            "best_test_delta_m": round(problem.score(test, tasks), 2),
            "best_config": " ".join(f"{k}={v}" for k, v in key),
            "top5_val_scores": group["metrics.best/val_score"].sort_values(ascending=False).head(5).round(2).tolist(),
            "best_run_id": best["run_id"],
            "_key": key,
            "_full": {config_key(r): int(r["metrics.epoch"]) for _, r in group.iterrows()},
        }
    return out


def seed_noise(uri: str, experiment: str, best_runs: dict[str, str], seeds: int, storage: str) -> dict[str, dict]:
    """Retrain each arm's best run of ``experiment`` with ``seeds`` new seeds (``searcher
    confirm``); per arm, the spread of their best validation scores (sample std, ddof 1) is one
    training's seed noise at that configuration, their mean the configuration's worth."""
    plan = plan_confirm(uri, experiment, top=1, repeats=seeds, data_dir=None)
    assert sorted(s.run_id for s in plan.sources) == sorted(best_runs.values()), "confirm picked other best runs"
    run_confirm(plan, uri, SearchOptions(storage=storage, name=f"{experiment}-noise"))
    runs = mlflow.search_runs(experiment_names=[experiment])
    out = {}
    for arm, run_id in best_runs.items():
        scores = runs.loc[runs.get("tags.searcher.confirm_of") == run_id, "metrics.best/val_score"].astype(float)
        out[arm] = {"seeds": len(scores), "mean": float(scores.mean()), "std": float(scores.std(ddof=1)),
                    "scores": np.round(scores.to_numpy(), 2).tolist()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mnist_cl_rr")
    ap.add_argument("--methods", default="ew")
    ap.add_argument("--param", action="append", default=["optimizer=adam"], help="fixed values (default optimizer=adam, as `002`)")
    ap.add_argument("--samples", type=int, default=30, help="trials of the pruned search, per method")
    ap.add_argument("--search", choices=("tpe", "random", "grid"), default="tpe",
                    help="sampler of the pruned search (grid: every grid point once, --samples ignored)")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--grace-period", type=int, default=None, help="ASHA's first rung (default: max_epochs // 5, as tune)")
    ap.add_argument("--reduction-factor", type=int, default=3, help="ASHA's eta: keep the top 1/eta of each rung")
    ap.add_argument("--noise-seeds", type=int, default=4,
                    help="retrain each search's best configuration with this many new seeds (below 2: skip)")
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
    results: dict[str, dict[str, dict]] = {}
    pruned = f"{args.search.upper() if args.search == 'tpe' else args.search} + ASHA"
    searches = [
        ("grid + FIFO", SearchOptions(search="grid", scheduler="fifo", seed=args.seed, storage=f"{work}/ray", name="grid")),
        (pruned, SearchOptions(search=args.search, scheduler="asha", seed=args.seed,
                               num_samples=None if args.search == "grid" else args.samples,
                               grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                               storage=f"{work}/ray", name="pruned")),
    ]
    for label, options in searches[1:] if args.skip_grid else searches:
        start = time.perf_counter()
        run_search(session, options, uri, options.name)
        results[label] = summarize(uri, options.name, session.problem, tasks)
        print(f"{label}: {round(time.perf_counter() - start)} s", flush=True)
    noise = {}
    if args.noise_seeds > 1:
        for label, options in searches:
            if label in results:
                noise[label] = seed_noise(uri, options.name, {a: r["best_run_id"] for a, r in results[label].items()},
                                          args.noise_seeds, f"{work}/ray")
    print(f"\n{args.space}, methods {args.methods}, fixed {args.param}, {session.settings.max_epochs} epochs, "
          f"{os.cpu_count()} CPUs, data {session.settings.data.get('digit_source', '-')}; ASHA per method")
    rows = []
    for label, arms in results.items():
        for arm, r in arms.items():
            row = {"search": label, "arm": arm, **{k: v for k, v in r.items() if not k.startswith("_") and k != "best_run_id"}}
            if label != "grid + FIFO" and "grid + FIFO" in results and arm in results["grid + FIFO"]:
                grid = results["grid + FIFO"][arm]
                row["epochs_of_grid"] = round(r["trial_epochs"] / grid["trial_epochs"], 3)
                row["minus_grid_best"] = round(r["best_val_score"] - grid["best_val_score"], 2)
                # the grid's best configuration: did the pruned search train it to the last epoch?
                epochs = r["_full"].get(grid["_key"])
                row["grid_best_trained"] = "not sampled" if epochs is None else (
                    "to the end" if epochs == session.settings.max_epochs else f"stopped at {epochs}")
            if label in noise and arm in noise[label]:
                n = noise[label][arm]
                row["retrained_mean"], row["retrained_std"] = round(n["mean"], 2), round(n["std"], 2)
            rows.append(row)
    with pd.option_context("display.width", 250, "display.max_colwidth", 60, "display.max_columns", 30):
        print(pd.DataFrame(rows).to_string(index=False))
    print(f"ASHA grace period {args.grace_period or 'default'}, reduction factor {args.reduction_factor}, "
          f"{'the whole grid' if args.search == 'grid' else f'{args.samples} samples'}, {args.search} sampler")
    print(f"runs kept in {uri} (python bench/asha_replay.py --tracking-uri {uri} --noise STD replays ASHA on the "
          "grid's curves)")
    ray.shutdown()


if __name__ == "__main__":
    main()
