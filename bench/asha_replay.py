"""Replay ASHA's stopping rule on a finished grid's learning curves: what would it have cost?

``bench/pruning.py`` trains real searches, minutes each, and one run is one draw of the order in
which trials arrive. This reads the per-epoch ``val/score`` curves of every trial of a finished
FIFO grid (e.g. the ``grid`` experiment that ``bench/pruning.py`` leaves in its MLflow store)
and replays, for each (grace period, reduction factor), over many random arrival orders:

* asynchronous ASHA as Ray Tune's ``ASHAScheduler`` decides it (``AsyncHyperBandScheduler``,
  Li et al. 2020): rungs at grace x eta^k below ``max_t``; a trial reaching a rung is stopped
  when its score (here the best validation score so far, what our searches optimize) is below
  the (1 - 1/eta) quantile of the scores recorded at that rung so far (none recorded: it goes
  on). Trials arrive one at a time (concurrency 1, where Ray's cutoffs see the most results);
* synchronous successive halving over the whole grid (one bracket of Jamieson & Talwalkar
  2016; Ray's ``HyperBandScheduler`` runs several brackets), as the lower bound of what
  pruning at these rungs can save.

It prints the mean trial-epochs as a share of the grid's and how often the replay keeps a
configuration within ``--noise`` points (one training's seed noise) of the grid's best. The
curves are the grid's own seeds: a real search draws new ones, so this ranks settings, it does
not replace ``bench/pruning.py``.

    python bench/asha_replay.py --tracking-uri sqlite:////tmp/bench-pruning-XXXX/mlflow.db --noise 1.82
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_curves(uri: str, experiment: str, metric: str = "val/score") -> np.ndarray:
    """(trials, epochs) per-epoch curves of the experiment's trial runs (not confirmations)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.tracking.MlflowClient()
    runs = mlflow.search_runs(experiment_names=[experiment])
    runs = runs[runs["tags.searcher.role"] != "search"]
    if "tags.searcher.confirm_of" in runs:
        runs = runs[runs["tags.searcher.confirm_of"].isna()]
    curves = []
    for run_id in runs["run_id"]:
        history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
        curves.append([m.value for m in history])
    lengths = {len(c) for c in curves}
    if len(lengths) != 1:
        sys.exit(f"{experiment}: trials ran {sorted(lengths)} epochs; replay needs a FIFO grid run to the end")
    return np.array(curves)


def rungs(grace: int, eta: int, max_t: int) -> list[int]:
    out, r = [], grace
    while r < max_t:
        out.append(r)
        r *= eta
    return out


def replay_async(curves: np.ndarray, order: np.ndarray, grace: int, eta: int) -> tuple[int, list[int]]:
    """Ray's asynchronous ASHA on trials arriving in ``order``: (trial-epochs, trials run to max_t)."""
    max_t = curves.shape[1]
    recorded: dict[int, list[float]] = {r: [] for r in rungs(grace, eta, max_t)}
    epochs, finished = 0, []
    for trial in order:
        for rung, scores in recorded.items():
            score = float(curves[trial, :rung].max())
            cutoff = np.nanpercentile(scores, (1 - 1 / eta) * 100) if scores else None
            scores.append(score)
            if cutoff is not None and score < cutoff:
                epochs += rung
                break
        else:
            epochs += max_t
            finished.append(int(trial))
    return epochs, finished


def replay_sync(curves: np.ndarray, grace: int, eta: int) -> tuple[int, list[int]]:
    """Successive halving over every trial at once: keep the top 1/eta at each rung."""
    max_t = curves.shape[1]
    alive, epochs, done = list(range(len(curves))), 0, 0
    for rung in rungs(grace, eta, max_t):
        epochs += len(alive) * (rung - done)
        done = rung
        scores = curves[alive, :rung].max(1)
        alive = [alive[i] for i in np.argsort(-scores)[: max(1, len(alive) // eta)]]
    return epochs + len(alive) * (max_t - done), alive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--experiment", default="grid")
    ap.add_argument("--noise", type=float, required=True, help="one training's seed noise (std of the best val score)")
    ap.add_argument("--graces", default="1,2,3")
    ap.add_argument("--etas", default="2,3,4")
    ap.add_argument("--orders", type=int, default=500, help="random arrival orders per setting")
    args = ap.parse_args()
    curves = load_curves(args.tracking_uri, args.experiment)
    final = curves.max(1)
    full = curves.size
    print(f"{args.experiment}: {len(curves)} trials x {curves.shape[1]} epochs = {full} trial-epochs; "
          f"best {final.max():.2f}; noise {args.noise}")
    print("| grace | eta | async ASHA epochs (x grid) | P(within noise) | sync SH epochs (x grid) | within noise |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    rng = np.random.default_rng(0)
    for grace in map(int, args.graces.split(",")):
        for eta in map(int, args.etas.split(",")):
            if not rungs(grace, eta, curves.shape[1]):
                continue
            runs = [replay_async(curves, rng.permutation(len(curves)), grace, eta) for _ in range(args.orders)]
            spent = np.mean([e for e, _ in runs])
            kept = np.mean([final[f].max() >= final.max() - args.noise for _, f in runs])
            sync_epochs, alive = replay_sync(curves, grace, eta)
            ok = "yes" if final[alive].max() >= final.max() - args.noise else "no"
            print(f"| {grace} | {eta} | {spent:.0f} ({spent / full:.3f}) | {kept:.2f} | {sync_epochs} ({sync_epochs / full:.3f}) | {ok} |")


if __name__ == "__main__":
    main()
