"""Which way finds the best fixed task weights for the compute spent (issue 16)?

Six ways to pick the fixed weights of ``--methods fixed``, each given the SAME discovery budget
in trial-epochs (the fairness rule: the sum over the way's trials of the epochs each trained,
counted from each trial's logged epochs, so a PBT trial that skipped epochs by an exploit counts
only the epochs it trained):

(a) ``smto-ema``: a small search of an SMTO (``--smto``, default UW), its best trial's EMA weights
    (``analysis.extract``, `002` §3.5's extraction: per-epoch mean, the paper's EMA);
(b) ``fixed-tpe``: ``--methods fixed --search tpe`` (or ``--fixed-search nsga2``) over the simplex;
(c) ``fixed-pbt``: ``--methods fixed --scheduler pbt`` (Ray's PBT, ``searcher.pbt``), the
    population's best (``analysis.extract.population_best``), its last applied weights;
(c') ``fixed-pb2``: the same with ``--scheduler pb2`` (Ray's PB2 over the simplex coordinates;
    ``--no-pb2`` leaves it out);
(d) ``simplex-grid``: the lattice `002` would search (``spaces.simplex.simplex_grid``: steps of
    1/10, every task weighted; 9 points for 2 tasks), every point once;
(e) ``ew``: equal weights, nothing spent.

Every way's chosen weights are then retrained ``--seeds`` times through ``searcher.rerun`` (the same
seeds for every way, the same epochs: ``--seeds`` x ``--max-epochs`` more trial-epochs each,
listed apart), and each way reports the test Δm of those retrains (`002` eq. 1, % against the
problem's nominal single-task references, ``Problem.score``, at each run's best validation epoch):
mean and 95% t-interval over seeds (``analysis.uncertainty.summarize``). The common
hyperparameters are fixed (``--param``, default Adam, lr 0.001, dropout 0.1) so that the ways
differ only in their weights.

    python bench/weight_discovery.py --quick                 # ~4 min on 2 CPUs: tiny budgets
    python bench/weight_discovery.py                         # mnist_cl_rr, 9 trials x 10 epochs per way, 5 seeds
    python bench/weight_discovery.py --space mnist_rl_rr --plot weights.png

Prints a markdown table to stdout and writes a PNG (Δm against discovery trial-epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SEARCHER_OFFLINE", "1")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from analysis.extract import population_best  # noqa: E402
from analysis.uncertainty import summarize  # noqa: E402
from searcher.launch import quiet_ray_env  # noqa: E402
from searcher.rerun import plan_rerun, run_reruns  # noqa: E402
from searcher.pbt import default_interval  # noqa: E402
from searcher.search import SearchOptions, run_search  # noqa: E402
from searcher.session import open_session  # noqa: E402
from spaces.simplex import GRID_STEPS, simplex_lattice  # noqa: E402

SPACES = ("mnist_cl_rr", "mnist_cl_cr", "mnist_rl_rr")
WAYS = ("smto-ema", "fixed-tpe", "fixed-pbt", "fixed-pb2", "simplex-grid", "ew")


@dataclass
class Way:
    """One way's result: what it spent, the weights it chose, and their retrains' test Δm."""

    name: str
    how: str
    trial_epochs: int = 0
    trials: int = 0
    source_run: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    delta_m: list[float] = field(default_factory=list)
    seconds: float = 0.0


def trained_epochs(client: MlflowClient, experiment: str) -> tuple[int, list[Any]]:
    """(trial-epochs actually trained, the trial runs) of a search: one logged ``epoch`` value per
    epoch trained (a PBT trial that jumped ahead by an exploit did not train the skipped epochs)."""
    found = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([found.experiment_id], max_results=10_000)
            if r.data.tags.get("searcher.role") != "search"]
    return sum(len(client.get_metric_history(r.info.run_id, "epoch")) for r in runs), runs


def best_run(runs: list[Any]) -> str:
    """The trial with the best validation score over its epochs (``best/val_score``, the search metric)."""
    scored = [(r.data.metrics.get("best/val_score", float("-inf")), r.info.run_id) for r in runs]
    return max(scored)[1]


def test_delta_m(metrics: dict[str, Any], problem: Any, tasks: list[str]) -> float:
    """Test Δm (`002` eq. 1, nominal references) of a run's best validation epoch."""
    test = {t: {m.name: float(metrics[f"best/test/{t}/{m.name}"]) for m in spec.metrics}
            for t, spec in zip(tasks, problem.tasks)}
    return float(problem.score(test, tasks))


def draw(rows: list[tuple[Way, Any]], path: str, title: str) -> None:
    """The PNG: each way's test Δm (mean, 95% interval over seeds) against its discovery trial-epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    spread = 0.015 * max(1, max(way.trial_epochs for way, _ in rows))  # ways at one budget side by side
    searched = [way.name for way, _ in rows if way.trial_epochs > 0]
    for (way, s), marker in zip(rows, "osDP^v"):
        err = [[s.mean - s.low], [s.high - s.mean]] if s.n > 1 else None
        x = way.trial_epochs + (searched.index(way.name) - (len(searched) - 1) / 2) * spread if way.name in searched else 0
        ax.errorbar([x], [s.mean], yerr=err, fmt=marker, capsize=4, label=f"{way.name} ({way.trial_epochs})")
    ax.set_xlabel("discovery trial-epochs (side by side at one budget)")
    ax.set_ylabel("test Δm (%), mean, 95% interval over seeds")
    ax.set_title(title)
    ax.legend(fontsize=8, title="way (trial-epochs)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mnist_cl_rr", choices=SPACES)
    ap.add_argument("--quick", action="store_true", help="tiny budgets (3 trials x 2 epochs per way, 3 seeds): a check")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials per way (default 9: the 2-task simplex grid's points; --quick 3)")
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="epochs per trial (default: the space's, 10 on Multi-MNIST; --quick 2)")
    ap.add_argument("--pbt-interval", type=int, default=None,
                    help="epochs between PBT/PB2 steps (default max(1, max_epochs // 5), as tune)")
    ap.add_argument("--no-pb2", action="store_true", help="leave out way (c') PB2")
    ap.add_argument("--seeds", type=int, default=None, help="retrains of each way's weights (default 5; --quick 3)")
    ap.add_argument("--smto", default="uw", help="the SMTO whose EMA weights way (a) extracts (default uw)")
    ap.add_argument("--fixed-search", default="tpe", choices=("tpe", "nsga2", "random"), help="way (b)'s sampler")
    ap.add_argument("--param", action="append", default=None,
                    help="fixed common values (default optimizer=adam lr=0.001 dropout=0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=None, help="PNG path (default: in the work folder)")
    args = ap.parse_args()
    trials = args.trials or (3 if args.quick else 9)
    epochs = args.max_epochs or (2 if args.quick else open_session(args.space, ["ew"], [], None, None).settings.max_epochs)
    interval = args.pbt_interval or default_interval(epochs)
    seeds = args.seeds or (3 if args.quick else 5)
    params = args.param or ["optimizer=adam", "lr=0.001", "dropout=0.1"]
    if trials < 2:
        raise SystemExit("weight_discovery: --trials must be at least 2 (PBT needs a population)")

    quiet_ray_env()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    work = tempfile.mkdtemp(prefix="bench-weights-")
    uri = f"sqlite:///{work}/mlflow.db"
    storage = f"{work}/ray"
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    start_all = time.perf_counter()

    fixed = open_session(args.space, ["fixed"], params, None, epochs)
    problem, tasks = fixed.problem, fixed.problem.task_names
    grid_points = len(simplex_lattice(len(tasks), GRID_STEPS))
    ways: list[Way] = []

    def search(name: str, how: str, methods: list[str], options: SearchOptions, pick=best_run) -> Way:
        t0 = time.perf_counter()
        session = open_session(args.space, methods, params, None, epochs)
        run_search(session, options, uri, name)
        spent, runs = trained_epochs(client, name)
        way = Way(name, how, spent, len(runs), pick(runs))
        way.seconds = time.perf_counter() - t0
        print(f"{name}: {len(runs)} trials, {spent} trial-epochs, {way.seconds:.0f} s", flush=True)
        return way

    common = dict(seed=args.seed, storage=storage, scheduler="fifo")
    ways.append(search("smto-ema", f"best of {trials} {args.smto} trials, its EMA weights", [args.smto],
                       SearchOptions(num_samples=trials, name="smto-ema", search="tpe", **common)))
    ways.append(search("fixed-tpe", f"fixed, {args.fixed_search} over the simplex, best trial", ["fixed"],
                       SearchOptions(num_samples=trials, name="fixed-tpe", search=args.fixed_search, **common)))
    for kind, what in (("pbt", "PBT"), ("pb2", "PB2")):
        if kind == "pb2" and args.no_pb2:
            continue
        ways.append(search(f"fixed-{kind}", f"fixed, {what} (interval {interval} epoch(s)) over a population of "
                           f"{trials}, population best", ["fixed"],
                           SearchOptions(num_samples=trials, name=f"fixed-{kind}", search="random", seed=args.seed,
                                         storage=storage, scheduler=kind, pbt_interval=interval),
                           pick=lambda runs: population_best(client, runs[0].info.run_id)))
    grid_n = min(trials, grid_points)
    ways.append(search("simplex-grid", f"{grid_n} of the {grid_points} points of `002`'s 1/{GRID_STEPS} simplex lattice"
                       + ("" if grid_n == grid_points else " (seeded order)"), ["fixed"],
                       SearchOptions(num_samples=grid_n, name="simplex-grid", search="grid", **common)))
    ways.append(Way("ew", "equal weights, no search", source_run=ways[0].source_run))

    # every way's weights, retrained on the same seeds (plan_rerun's --seed) for the same epochs
    for way in ways:
        t0 = time.perf_counter()
        weights_file = None
        if way.name == "ew":
            weights_file = os.path.join(work, "ew.json")
            with open(weights_file, "w") as f:
                json.dump({"weights": {t: 1.0 for t in tasks}, "method": "ew"}, f)
        plan = plan_rerun(uri, way.source_run, weights_file=weights_file, max_epochs=epochs, experiment="retrain",
                          seed=args.seed + 1)
        way.weights = {t: w / sum(plan.weights) for t, w in zip(tasks, plan.weights)}
        done = run_reruns(plan, uri, seeds, SearchOptions(storage=storage, name=f"retrain-{way.name}"))
        way.delta_m = [test_delta_m(m, problem, tasks) for _, m in done if "error" not in m]
        way.seconds += time.perf_counter() - t0
        print(f"retrained {way.name}: Δm {[round(d, 2) for d in way.delta_m]}", flush=True)
    ray.shutdown()

    print(f"\n{args.space} ({fixed.settings.data.get('digit_source', '-')} digits), {os.cpu_count()} CPUs, "
          f"{time.perf_counter() - start_all:.0f} s in all{' (--quick)' if args.quick else ''}.")
    print(f"Fairness: every searching way gets {trials} trials x {epochs} epochs = {trials * epochs} trial-epochs "
          f"(counted as trained); every way's weights are then retrained {seeds} x {epochs} = {seeds * epochs} "
          f"trial-epochs on the same seeds. Common values fixed: {' '.join(params)}. Test Δm in % against the "
          "nominal single-task references (higher is better), mean and 95% t-interval over the retrain seeds.\n")
    header = ["way", "how the weights were found", "discovery trial-epochs", "retrain trial-epochs",
              "weights (" + ", ".join(tasks) + ")", "test Δm mean", "95% interval", "seeds"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows = []
    for way in ways:
        s = summarize(way.delta_m)
        rows.append((way, s))
        print(f"| {way.name} | {way.how} | {way.trial_epochs} | {seeds * epochs} | "
              f"{', '.join(f'{way.weights[t]:.3f}' for t in tasks)} | {s.mean:.2f} | [{s.low:.2f}, {s.high:.2f}] | {s.n} |")

    plot = args.plot or os.path.join(work, "weight_discovery.png")
    draw(rows, plot, f"Fixed-weight discovery on {args.space}{' (--quick)' if args.quick else ''}")
    print(f"\nplot: {plot}; runs kept in {uri}")


if __name__ == "__main__":
    main()
