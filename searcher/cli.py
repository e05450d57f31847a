"""The ``searcher`` command line: spaces, methods, train, tune, confirm, extract-weights, rerun, report, robustness.

Bad input (unknown space or method, malformed ``--param``, missing data) ends with one line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from trainables.errors import ConfigError

DEFAULT_STORE_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in this folder)"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True,
                   help="a named space (see `searcher spaces`) or a space file, path/to/space.yaml or .py")
    p.add_argument("--max-epochs", type=int, default=None, help="epochs per run (default: the space's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a hyperparameter (lr=0.001, c=0.5 or cagrad.c=0.5); repeatable")
    p.add_argument("--seed", type=int, default=0, help="base seed; a run's seed is seed + its run index")
    p.add_argument("--data-dir", default=None, help="where the problem's data lives (MNIST: <dir>/MNIST/raw)")
    p.add_argument("--tracking-uri", default=None, help=DEFAULT_STORE_HELP)
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the space's name)")


def _add_launch(p: argparse.ArgumentParser, default_name: str) -> None:
    """Where and how the runs of ``confirm`` and ``rerun`` train: on Ray, as ``tune``'s trials."""
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--storage", default=None,
                   help="Ray's experiment storage; default: ray_results/ beside a SQLite mlflow.db, else ~/ray_results")
    p.add_argument("--name", default=None, help=f"name of the launch in Ray's storage and MLflow (default {default_name})")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster")


def _launch_options(args: argparse.Namespace) -> Any:
    from searcher.launch import SearchOptions

    return SearchOptions(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                         max_concurrent=args.max_concurrent, storage=args.storage, name=args.name, address=args.address)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="searcher", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("spaces", help="list the named search spaces")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--show", metavar="NAME", help="print one space's ranges (a name or a space file)")

    p = sub.add_parser("methods", help="list the multi-task methods, their needs and hyperparameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--markdown", action="store_true", help="the README's table of methods")

    p = sub.add_parser("train", help="one training run without Ray, logged to MLflow")
    _add_common(p)
    p.add_argument("--method", required=True, help="a method (see `searcher methods`)")

    p = sub.add_parser("tune", help="a Ray Tune search (OptunaSearch + ASHA), one MLflow run per trial")
    _add_common(p)
    p.add_argument("--methods", default=None, help="comma-separated methods (default: the space's)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="trials per method, and per task for single_task (default 3; with --search grid, every "
                        "point of each method's grid); each method has its own sampler and its own ASHA")
    p.add_argument("--search", choices=("tpe", "random", "grid", "nsga2"), default="tpe",
                   help="Optuna sampler: tpe (default), random, grid (the paper's grid, every point once) "
                        "or nsga2 (multi-objective over the per-task validation metrics)")
    p.add_argument("--scheduler", choices=("asha", "fifo", "pbt", "pb2"), default="asha",
                   help="asha (per method, default), fifo, or pbt: population-based training of method fixed's "
                        "task weights (Ray's PopulationBasedTraining in the fixed arm only; other methods keep ASHA); "
                        "pb2: the same with Ray's PB2 (a GP bandit picks the new weights)")
    p.add_argument("--pbt-interval", type=int, default=None, metavar="EPOCHS",
                   help="pbt, pb2: epochs between exploit/explore steps (default max(1, max_epochs // 5))")
    p.add_argument("--pbt-lr", action="store_true", help="pbt: mutate lr too (x0.8 or x1.2), not only the weights")
    p.add_argument("--grace-period", type=int, default=None, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--verbose", action="store_true", help="Ray's per-trial output (default: one progress line per trial)")
    p.add_argument("--prune-references", action="store_true",
                   help="let ASHA stop single-task references too (by default they run every epoch: every delta_m "
                        "divides by them)")
    p.add_argument("--reduction-factor", type=int, default=3,
                   help="ASHA: keep the top 1/N of each rung; rungs at grace * N^k epochs (default 3)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions share a GPU, e.g. 0.25")
    p.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    p.add_argument("--storage", default=None,
                   help="Ray's experiment storage (a shared path or bucket on a cluster); default: ray_results/ "
                        "beside a SQLite mlflow.db, else ~/ray_results")
    p.add_argument("--name", default=None,
                   help="name of the search (Ray's experiment folder under --storage; default <space>-<date>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search --name (same --storage): finished trials are kept, "
                        "unfinished ones resume from their last checkpoint, MLflow runs are reused")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster (e.g. auto or host:6379)")

    p = sub.add_parser("confirm", help="retrain each method's best configuration with new seeds (`002`'s protocol)")
    p.add_argument("--experiment", required=True, help="the MLflow experiment of the search")
    p.add_argument("--top", type=int, default=1, help="configurations per method (default 1: the best)")
    p.add_argument("--repeats", type=int, default=2, help="new seeds per configuration (default 2)")
    p.add_argument("--data-dir", default=None, help="where the problem's data lives")
    p.add_argument("--tracking-uri", default=None, help=DEFAULT_STORE_HELP)
    _add_launch(p, "confirm-<experiment>-<time>")

    p = sub.add_parser("extract-weights", help="fixed task weights from a run's logged weights (EMA, `002` §3.5)")
    p.add_argument("run_id", metavar="RUN_ID", help="the MLflow run of a method that defines weights")
    p.add_argument("--beta", type=float, default=0.9, help="EMA factor: ema = beta*ema + (1-beta)*w_epoch (default 0.9)")
    p.add_argument("--epoch", type=int, default=None, metavar="N",
                   help="take the EMA at epoch N (default: the last logged; e.g. for a run ASHA stopped)")
    p.add_argument("--per-epoch", choices=("mean", "median"), default="mean",
                   help="per-epoch statistic of the applied weights: mean (weight/<task>, `002`'s; default) or "
                        "median (weight_median/<task>, robust to a few spiking steps)")
    p.add_argument("--ema", choices=("paper", "debiased"), default="paper",
                   help="paper: the EMA starts at the first epoch (`002`'s code; default); debiased: starts at 0, "
                        "bias-corrected as Adam's (Kingma & Ba 2015), so the first epoch does not dominate short runs")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="JSON file to write (default: weights-<run id[:8]>.json here, -median/-debiased added "
                        "for those options)")
    p.add_argument("--population-best", action="store_true",
                   help="RUN_ID is a fixed trial of a search (e.g. --scheduler pbt): take the weights of the search's "
                        "fixed trial with the best last validation score instead")
    p.add_argument("--tracking-uri", default=None, help=DEFAULT_STORE_HELP)

    p = sub.add_parser("rerun", help="retrain a run's configuration with fixed weights, one MLflow run per repeat")
    p.add_argument("run_id", metavar="RUN_ID", help="the MLflow run whose hyperparameters (and weights) to use")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="a JSON file from extract-weights (default: extract from RUN_ID now)")
    p.add_argument("--repeats", type=int, default=1, metavar="K", help="number of runs, run index 0..K-1 (default 1)")
    p.add_argument("--max-epochs", type=int, default=None, help="epochs per run (default: the source run's)")
    p.add_argument("--beta", type=float, default=None, help="EMA factor when extracting now (default 0.9)")
    p.add_argument("--per-epoch", choices=("mean", "median"), default=None,
                   help="per-epoch statistic when extracting now (default mean; see extract-weights)")
    p.add_argument("--ema", choices=("paper", "debiased"), default=None,
                   help="EMA when extracting now (default paper; see extract-weights)")
    p.add_argument("--seed", type=int, default=None,
                   help="base seed in place of the source run's: run k trains with seed + 100000*(k+1) + the source's "
                        "run index, the seed of the source's k-th confirm repeat (default: the source run's seed)")
    p.add_argument("--data-dir", default=None, help="where the problem's data lives (MNIST: <dir>/MNIST/raw)")
    p.add_argument("--tracking-uri", default=None, help=DEFAULT_STORE_HELP)
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the source run's)")
    _add_launch(p, "rerun-<run id>-<time>")

    p = sub.add_parser("report", help="Δm, mean rank, fixed weights and Pareto front of an experiment, logged to MLflow")
    p.add_argument("--experiment", required=True, help="the MLflow experiment to report on (e.g. the space's name)")
    p.add_argument("--stl", default=None, metavar="FILE",
                   help="single-task references as JSON {task: {metric: value}, \"measured_on\": {problem, data_source, "
                        "max_epochs, options}} (default: each group's own single_task runs)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the files (default: report-<experiment>/)")
    p.add_argument("--tracking-uri", default=None, help=DEFAULT_STORE_HELP)

    p = sub.add_parser("robustness", help="corruption robustness of MTL runs vs their single-task references (`003` §4.3)")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID",
                   help="MLflow runs of multi-task methods (with model/best.pt: keep_model=true, the default); "
                        "several are averaged, as `003` averages seeds")
    p.add_argument("--corruptions", default=None, metavar="NAME,...",
                   help="comma-separated corruptions (default: all 14: gaussian_noise, shot_noise, impulse_noise, "
                        "defocus_blur, glass_blur, motion_blur, zoom_blur, snow, fog, brightness, contrast, "
                        "elastic_transform, pixelate, jpeg_compression; frost is not available)")
    p.add_argument("--severities", default="1-5", help="severities, e.g. 1-5 (default) or 1,3,5")
    p.add_argument("--table", choices=("auto", "imagenet", "cifar"), default="auto",
                   help="severity constants: ImageNet-C's or CIFAR-10-C's; auto: CIFAR-10-C's for images under 100 "
                        "pixels a side (Multi-MNIST), else ImageNet-C's")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions' random draws (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-dir", default=None, help="where the problem's data lives")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the files (default: robustness-<run id>/)")
    p.add_argument("--tracking-uri", "--store", default=None, help=DEFAULT_STORE_HELP)
    return parser


def cmd_spaces(args: argparse.Namespace) -> int:
    from spaces import SPACES, get_space
    from trainables.problems import build_problem
    from trainables.search_range import SearchRange

    names = [args.show] if args.show else SPACES.names()
    described = []
    for name in names:
        space = get_space(name)
        tasks = build_problem(space.problem, space.problem_options).task_names
        described.append({**space.describe(tasks=tasks), "tasks": tasks})
    if args.json:
        print(json.dumps(described if not args.show else described[0], indent=2))
    elif args.show:
        d = described[0]
        print(f"{d['name']}: {d['description']}")
        print(f"  problem: {d['problem']} {d['problem_options']}  tasks: {', '.join(d['tasks'])}  epochs: {d['max_epochs']}")
        if d["reproduces"]:
            print(f"  reproduces: {d['reproduces']}")
        for deviation in d["deviations"]:
            print(f"  deviation: {deviation}")
        # tpe/random/nsga2 draw from the intervals, --search grid trains the grids
        for k, r in d["ranges"]["common"].items():
            print(f"  {k}: {SearchRange.of(r).describe()}")
        for k, v in d["constants"].items():
            print(f"  {k} = {v}")
        for m, ranges in d["ranges"]["methods"].items():
            print(f"  method {m}: " + ("; ".join(f"{p} {SearchRange.of(r).describe()}" for p, r in ranges.items())
                                       or "(no searched parameters)"))
    else:
        for d in described:
            print(f"{d['name']:<14} {d['problem']:<12} tasks {','.join(d['tasks']):<8} {d['description']}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from trainables.methods import METHODS
    from trainables.methods.base import core
    from trainables.methods.capabilities import declared
    from trainables.search_range import SearchRange

    rows: list[dict[str, Any]] = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        rows.append({
            "name": name,
            "kind": cls.kind,
            "needs": cls.needs(),
            "core": core(cls).__name__,
            "capabilities": [c.__name__ for c in declared(cls)],
            "properties": sorted(p.value for p in cls.properties),
            "defines_weights": cls.defines_weights,
            "summary": cls.summary,
            "paper": cls.paper,
            # "searched": the grid of --search grid; "search": the declared range in full
            "hyperparameters": {k: {"default": hp.default, "type": hp.type.__name__, "help": hp.help,
                                    "searched": list(hp.search.grid) if hp.search else [],
                                    "search": hp.search.to_json() if hp.search else None}
                                for k, hp in cls.hyperparameters.items()},
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        print(methods_markdown(rows))
        return 0
    for r in rows:
        weights = "weights" if r["defines_weights"] else "no weights"
        print(f"{r['name']:<12} {r['kind']:<8} {weights:<10} {r['summary']}")
        print(f"{'':<12} needs: {r['needs']}")
        if r["properties"]:
            print(f"{'':<12} properties: {', '.join(r['properties'])}")
        for k, hp in r["hyperparameters"].items():
            searched = f", searched {SearchRange.of(hp['search']).describe()}" if hp["search"] else ""
            print(f"{'':<12} {k} ({hp['type']}, default {hp['default']!r}{searched}): {hp['help']}")
    return 0


def methods_markdown(rows: list[dict[str, Any]]) -> str:
    """The README's table of methods from ``cmd_methods``' rows: what each method module declares
    (core, weights, capabilities, properties, own hyperparameters with their searched ranges, paper), so the
    README never drifts from the code (``tests/test_cli.py`` compares the two)."""
    from trainables.search_range import SearchRange

    lines = ["| name | core | weights | capabilities | properties | own hyperparameters: default (searched range) "
             "| reference |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        params = []
        for k, hp in r["hyperparameters"].items():
            searched = f" (searched {SearchRange.of(hp['search']).describe()})" if hp["search"] else ""
            params.append(f"{k}={hp['default']!r}{searched}")
        cells = [f"`{r['name']}`", r["core"], "yes" if r["defines_weights"] else "no",
                 ", ".join(r["capabilities"]) or "-", ", ".join(r["properties"]) or "-", "; ".join(params) or "-",
                 r["paper"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from searcher import tracking
    from searcher.session import data_source, open_session
    from searcher.train import train_once

    session = open_session(args.space, [args.method], args.param, args.data_dir, args.max_epochs)
    uri = tracking.tracking_uri(args.tracking_uri)
    experiment = args.experiment or session.space.name
    print(f"searcher: training {args.method} on {session.space.name} ({session.problem.name}, "
          f"data: {data_source(session)}); MLflow: {uri}, experiment {experiment}")
    run_id, last = train_once(session, uri, experiment, args.seed)
    print(f"run {run_id}: {_best(last)}")
    for key, value in last.items():
        if key.startswith("best/test/"):
            print(f"  test {key[len('best/test/'):]}: {value:.4f}")
    return 1 if last.get("diverged") else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from searcher import tracking
    from searcher.launch import storage_path
    from searcher.search import DEFAULT_SAMPLES, SearchOptions, first_error, pbt_interval, plan_search, run_search
    from searcher.session import data_source, open_session

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    session = open_session(args.space, methods, args.param, args.data_dir, args.max_epochs)
    uri = tracking.tracking_uri(args.tracking_uri)
    experiment = args.experiment or session.space.name
    options = SearchOptions(
        num_samples=args.num_samples, scheduler=args.scheduler, seed=args.seed,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, storage=args.storage, name=args.name,
        address=args.address, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, search=args.search, resume=args.resume,
        prune_references=args.prune_references, verbose=args.verbose,
        pbt_interval=args.pbt_interval, pbt_lr=args.pbt_lr,
    )
    if args.resume and not args.name:
        raise ConfigError("--resume needs the --name of the search to continue")
    plan = plan_search(session, options, options.num_samples)  # checks the budget on the driver
    per_arm = ("every point of its grid" if args.search == "grid" and args.num_samples is None
               else f"{args.num_samples or DEFAULT_SAMPLES} trials")
    print(f"searcher: {'resuming ' + args.name + ': ' if args.resume else ''}{per_arm} ({args.search}) for each of "
          f"{', '.join(plan.budgets)} on {session.space.name} (data: {data_source(session)}), {plan.num_samples} in all; "
          f"{args.scheduler}{' per method' if args.scheduler == 'asha' else ''}"
          f"{' in the fixed arm (every ' + str(pbt_interval(options, session.settings.max_epochs)) + ' epochs)' if args.scheduler in ('pbt', 'pb2') else ''}"
          f"{', references unpruned' if args.scheduler == 'asha' and not args.prune_references else ''}, "
          f"up to {session.settings.max_epochs} epochs; MLflow: {uri}, experiment {experiment}; "
          f"Ray's state: {storage_path(options, uri)}")
    table = run_search(session, options, uri, experiment, plan)
    print_outcome(table)
    print(f"\nBrowse: mlflow ui --backend-store-uri {uri}")
    failure = first_error(table)
    if failure:
        print(f"searcher: error: every trial of the search failed; {failure}", file=sys.stderr)
        return 1
    return 0


def print_outcome(table: Any) -> None:
    """The end table of a search: the methods ranked, then the single-task references apart."""
    import pandas as pd

    if table.empty:
        print("\n  no trial reported a result")
        return
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 80):
        for role, title in (("method", "Methods, ranked by their best validation score (test metrics at that epoch)"),
                            ("reference", "Single-task references (each scores one task: not ranked with the methods)")):
            rows = table[table["role"] == role].drop(columns="role").replace("", None).dropna(axis=1, how="all")
            if not rows.empty:
                print(f"\n{title}:")
                print(rows.to_string(index=False, na_rep="-"))


def cmd_confirm(args: argparse.Namespace) -> int:
    import pandas as pd

    from searcher import tracking
    from searcher.confirm import plan_confirm, run_confirm

    uri = tracking.tracking_uri(args.tracking_uri)
    plan = plan_confirm(uri, args.experiment, args.top, args.repeats, args.data_dir)
    print(f"searcher: confirming {len(plan.sources)} configuration(s) of experiment {args.experiment} "
          f"with {args.repeats} new seed(s) each ({len(plan.configs)} runs, "
          f"{plan.session.settings.max_epochs} epochs); MLflow: {uri}")
    for source in plan.sources:
        print(f"  {source.label:<20} run {source.run_id[:8]}  best validation score {source.val_score:.3f}")
    table = run_confirm(plan, uri, _launch_options(args))
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print("\nTest metrics at the best validation epoch, mean and std over the new seeds:")
        print(table.to_string(index=False) if not table.empty else "  no run reported a result")
    return 0


def cmd_extract_weights(args: argparse.Namespace) -> int:
    from analysis.extract import extract_weights
    from searcher import tracking

    uri = tracking.tracking_uri(args.tracking_uri)
    record, path, artifacts = extract_weights(uri, args.run_id, args.beta, args.epoch, args.out, args.per_epoch, args.ema,
                                              args.population_best)
    last = record["epochs"][-1]
    run_id = record["source_run_id"]
    if args.population_best:
        print(f"the best fixed trial of run {args.run_id}'s search (by its last validation score): run {run_id}")
    options = "" if (args.per_epoch, args.ema) == ("mean", "paper") else f", per-epoch {args.per_epoch}, {args.ema} EMA"
    rule = ("the weights applied" if record.get("weights_rule") == "last"
            else f"EMA (beta {args.beta:g}{options})")
    print(f"run {run_id} ({record['method']} on {record['space']}): fixed weights = {rule} "
          f"at epoch {record['epoch']}" + (f" of {last}" if record["epoch"] != last else " (the last logged)") + ", sum 1")
    for task, weight in record["weights"].items():
        print(f"  {task}={weight:.6g}")
    if any(w < 0 for w in record["weights"].values()):
        print("searcher: note: some weights are negative; the fixed method accepts non-negative weights only",
              file=sys.stderr)
    print(f"wrote {path}; logged {', '.join(artifacts)} to run {run_id}")
    print(f"Retrain with them: searcher rerun {run_id} --weights {path}")
    for warning in record["warnings"]:  # advice, on stderr as the note above: stdout stays the result
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    from searcher import tracking
    from searcher.rerun import plan_rerun, run_reruns

    uri = tracking.tracking_uri(args.tracking_uri)
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {args.repeats}")
    plan = plan_rerun(uri, args.run_id, args.weights, args.beta, args.max_epochs, args.experiment, args.data_dir, args.seed,
                      args.per_epoch, args.ema)
    tasks = plan.session.problem.task_names
    origin = f"from {args.weights}" if args.weights else f"extracted now (beta {plan.weights_record['beta']:g})"
    for warning in plan.weights_record.get("warnings", []) if not args.weights else []:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"searcher: {args.repeats} run(s) of fixed weights "
          + ", ".join(f"{t}={w:.4g}" for t, w in zip(tasks, plan.weights))
          + f" ({origin}) with the hyperparameters of {plan.method} run {args.run_id}; "
          f"{plan.session.settings.max_epochs} epochs; MLflow: {uri}, experiment {plan.experiment}")
    runs = run_reruns(plan, uri, args.repeats, _launch_options(args))
    source = plan.source.data.metrics.get("best/val_score")
    print(f"\nsource {plan.method} run {args.run_id}: best validation score "
          + ("-" if source is None else f"{source:.3f}"))
    for k, (run_id, last) in enumerate(runs):
        tests = ", ".join(f"{m[len('best/test/'):]} {v:.4f}" for m, v in last.items() if m.startswith("best/test/"))
        print(f"rerun {k + 1}/{len(runs)} (run {run_id or '-'}, seed {last['seed']}): "
              + (f"failed: {last['error']}" if last.get("error") else _best(last) + (f"; test {tests}" if tests else "")))
    return 1 if any(last.get("diverged") or last.get("error") for _, last in runs) else 0


def _best(last: dict[str, Any]) -> str:
    """A run's outcome in words: its best validation score and epoch, or that it diverged."""
    from trainables.trial import DIVERGED_SCORE

    score = last.get("best/val_score", float("nan"))
    if last.get("diverged") and (score is None or score <= DIVERGED_SCORE):
        return f"diverged before any valid epoch ({last.get('diverged_reason', 'NaN loss')})"
    text = f"best validation score {score:.3f} at epoch {int(last.get('best/epoch', 0))}"
    return text + (f" (then diverged: {last.get('diverged_reason')})" if last.get("diverged") else "")


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import run_report
    from searcher import tracking

    uri = tracking.tracking_uri(args.tracking_uri)
    report, written, run_id = run_report(uri, args.experiment, args.stl, args.out)
    print(written.markdown)
    print(f"wrote {', '.join(p.name for p in written.files)} to {written.directory}/")
    print(f"logged as run {run_id} ('report', tag searcher.role=report) of experiment {args.experiment}; "
          f"browse: mlflow ui --backend-store-uri {uri}")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    import pandas as pd

    from analysis.robustness import CONVENTION
    from searcher import tracking
    from searcher.robustness import ARTIFACT_DIR, run_robustness

    uri = tracking.tracking_uri(args.tracking_uri)
    result = run_robustness(uri, args.run_ids, args.corruptions, args.severities, args.out, args.data_dir, args.device,
                            args.seed, args.table, progress=lambda text: print(f"searcher: {text}", flush=True))
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.max_rows", 500):
        print(f"\n{CONVENTION}")
        table = result.corruptions.pivot_table(index=["task", "metric"], columns="corruption", values="delta",
                                               observed=True, sort=False)
        print("\nδ per corruption (mean over severities and runs):")
        print(table.round(4).to_string())
        print("\nδ_t (mean over corruptions and severities, `003` eq. 6):")
        print(result.summary.round(4).to_string(index=False))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(p.name for p in result.files)} to {result.files[0].parent}/; logged under {ARTIFACT_DIR}/ "
          f"of run(s) {', '.join(args.run_ids)}")
    return 0


COMMANDS = {
    "spaces": cmd_spaces,
    "methods": cmd_methods,
    "train": cmd_train,
    "tune": cmd_tune,
    "confirm": cmd_confirm,
    "extract-weights": cmd_extract_weights,
    "rerun": cmd_rerun,
    "report": cmd_report,
    "robustness": cmd_robustness,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"searcher: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("searcher: interrupted; runs logged so far are kept in MLflow", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
