"""What a search prints while it runs: one line per finished trial, per arm.

Ray's own per-trial boxes (hundreds of lines for a small search) stay behind ``--verbose``;
this callback runs on the driver and prints, each time a trial ends, how far every arm is
(done of its budget, running, stopped early by ASHA), the best score so far of each, and the
elapsed and expected time.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, TextIO

from ray.tune import Callback

from searcher.arms import arm_of_config
from trainables.trial import DIVERGED_SCORE, SEARCH_METRIC


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class ProgressLine(Callback):
    """Prints ``[done/total] ew 3/3 (1 pruned, best -12.1) | cagrad 2/3 ... | 2 running | 0:45, ~0:20 left``."""

    def __init__(self, budgets: Mapping[str, int], max_epochs: int, stream: TextIO | None = None) -> None:
        self.budgets = dict(budgets)
        self.max_epochs = max_epochs
        self.stream = stream
        self.start = time.monotonic()
        self.done = {arm: 0 for arm in self.budgets}
        self.pruned = {arm: 0 for arm in self.budgets}
        self.failed = {arm: 0 for arm in self.budgets}
        self.best: dict[str, float] = {}
        self.running: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks with the run config
        state = self.__dict__.copy()
        state["stream"] = None
        return state

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=True)

    def _end(self, trial: Any, failed: bool) -> None:
        self.running.discard(trial.trial_id)
        arm = arm_of_config(trial.config)
        self.done[arm] = self.done.get(arm, 0) + 1
        last = trial.last_result or {}
        if failed:
            self.failed[arm] = self.failed.get(arm, 0) + 1
        elif int(last.get("epoch", self.max_epochs)) < self.max_epochs and not last.get("diverged"):
            self.pruned[arm] = self.pruned.get(arm, 0) + 1
        score = last.get(SEARCH_METRIC)
        if not failed and isinstance(score, (int, float)) and score > DIVERGED_SCORE:
            self.best[arm] = max(self.best.get(arm, -float("inf")), float(score))
        print(self.line(), file=self.stream or sys.stdout, flush=True)

    def line(self) -> str:
        total, finished = sum(self.budgets.values()), sum(self.done.values())
        parts = []
        for arm, budget in self.budgets.items():
            extra = [f"{n} {what}" for n, what in ((self.pruned.get(arm, 0), "pruned"), (self.failed.get(arm, 0), "failed")) if n]
            if arm in self.best:
                extra.append(f"best {self.best[arm]:.2f}")
            parts.append(f"{arm} {self.done.get(arm, 0)}/{budget}" + (f" ({', '.join(extra)})" if extra else ""))
        elapsed = time.monotonic() - self.start
        eta = f", ~{clock(elapsed / finished * (total - finished))} left" if 0 < finished < total else ""
        return (f"searcher: [{finished}/{total}] " + " | ".join(parts)
                + f" | {len(self.running)} running | {clock(elapsed)}{eta}")
