"""The gradient diagnostics of a report's methods over epochs: one curve per method and measure.

Training runs with ``diagnostics_every=K`` log, per epoch (step = epoch), the means over the
epoch's sampled steps of the measures of ``trainables.diagnostics``, read back here through
``searcher.run_record.diag_histories`` (names parsed by ``run_record.diag_name``, nowhere else):

- between tasks (MTL runs): GDS (`004` eq. 5b), GMS (`004` eq. 6b), the fraction of task pairs
  in conflict and of gradient components of opposite sign (`003` §4.2), FD (`004` eqs. 7-8);
- between samples of one task (`003` §4.2's single-task setting, both STL and MTL runs), the
  mean over tasks: ``diag/<level>/sample/<measure>``.

Per row of the report (a method, ``single_task[<task>]``, a rerun) the curve is the **mean over
the finished runs (seeds) of the row's best configuration**, the configuration the report
selects (``analysis.report.best_configurations``: the highest mean validation score), at each
epoch over the runs that reached it, with the std over those runs. `004` §5.4 plots curves
relative to the baseline, smoothed over a tenth of the trajectory; we plot the values as logged
(each already a mean over an epoch's sampled steps), as `003` Figure 3 does per epoch.

``end_values`` is the value a ranking of the methods reads (`004` §5.5: "the mean of the last 50
elements" of a trajectory of about 300 points, App. 8): per run, the mean over the last
``TAIL_FRACTION`` (50/300) of its epochs, at least one; then the mean over the row's runs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from searcher.run_record import DIAG_LEVELS, DiagName, RunRecord, diag_histories

#: The measures drawn, in this order (rows of the figure); others a run logs follow them.
MEASURES = ("gds", "gms", "conflict_pairs", "conflict_params", "fd")
#: What each measure is, for axis labels and the report.
DESCRIPTIONS = {
    "gds": "GDS: mean cosine similarity (004 eq. 5b)",
    "gms": "GMS: mean magnitude similarity (004 eq. 6b)",
    "conflict_pairs": "pairs in conflict (cos < 0, 003 §4.2)",
    "conflict_params": "components of opposite sign (003 Fig. 3)",
    "fd": "FD: feature disentanglement (004 eq. 8)",
}
#: `004` §5.5 and App. 8: the last 50 of about 300 points of a trajectory make its end value.
TAIL_FRACTION = 50 / 300
BETWEEN = ("tasks", "samples")


def tail_length(epochs: int, fraction: float = TAIL_FRACTION) -> int:
    """How many of the last epochs make a run's end value: ceil(fraction x epochs), at least 1."""
    return max(1, math.ceil(fraction * epochs - 1e-9)) if epochs > 0 else 0


@dataclass
class Series:
    """One curve: a row's mean over its runs of one measure, per epoch."""

    label: str
    single_task: bool
    level: str
    between: str
    measure: str
    epochs: list[int]
    mean: list[float]
    std: list[float]
    #: Runs that reached each epoch.
    runs: list[int]


@dataclass
class DiagnosticCurves:
    """The curves of one comparable group, and what had none."""

    series: list[Series] = field(default_factory=list)
    #: Per row, per measure: each of its runs' history ``[(epoch, value), ...]``.
    histories: dict[str, dict[DiagName, list[list[tuple[int, float]]]]] = field(default_factory=dict)
    #: Rows whose best configuration's runs logged no diagnostic.
    without: list[str] = field(default_factory=list)
    #: Runs whose histories MLflow could not give, one line each (left out of the curves).
    unreadable: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.series

    @property
    def levels(self) -> list[str]:
        """The levels with a curve: the shared parameters first, then the representation."""
        found = {s.level for s in self.series}
        return [level for level in DIAG_LEVELS if level in found]

    def measures(self, level: str) -> list[str]:
        """The measures with a curve at ``level``, in ``MEASURES`` order first."""
        found = {s.measure for s in self.series if s.level == level}
        return [m for m in MEASURES if m in found] + sorted(found - set(MEASURES))

    def find(self, label: str, level: str, measure: str, between: str = "tasks") -> Series | None:
        return next((s for s in self.series if (s.label, s.level, s.measure, s.between) == (label, level, measure, between)), None)

    def select(self, level: str, measure: str, between: str) -> list[Series]:
        return [s for s in self.series if (s.level, s.measure, s.between) == (level, measure, between)]

    def frame(self) -> pd.DataFrame:
        """Every curve, one row per point (what ``diagnostic_curves.csv`` holds)."""
        rows = [{"label": s.label, "kind": "single-task" if s.single_task else "multi-task", "level": s.level,
                 "between": s.between, "measure": s.measure, "epoch": e, "mean": m, "std": sd, "runs": n}
                for s in self.series for e, m, sd, n in zip(s.epochs, s.mean, s.std, s.runs)]
        return pd.DataFrame(rows, columns=["label", "kind", "level", "between", "measure", "epoch", "mean", "std", "runs"])

    def end_values(self, fraction: float = TAIL_FRACTION) -> pd.DataFrame:
        """Per row and measure, the end-of-training value (`004` §5.5): each run's mean over its last
        ``tail_length`` epochs, averaged over the row's runs; ``epochs_used`` is the longest tail."""
        rows = []
        for label, measures in self.histories.items():
            for name, runs in measures.items():
                tails = [[v for _, v in points[-tail_length(len(points), fraction):]] for points in runs if points]
                if not tails:
                    continue
                rows.append({"label": label, "level": name.level, "between": name.between, "measure": name.measure,
                             "value": statistics.fmean(statistics.fmean(t) for t in tails),
                             "epochs_used": max(len(t) for t in tails), "runs": len(tails)})
        return pd.DataFrame(rows, columns=["label", "level", "between", "measure", "value", "epochs_used", "runs"])


def mean_curve(runs: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[int]]:
    """Per epoch, the mean, sample std (NaN for one run) and number of the runs that logged it."""
    by_epoch: dict[int, list[float]] = {}
    for points in runs:
        for epoch, value in points:
            by_epoch.setdefault(int(epoch), []).append(float(value))
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else math.nan for e in epochs]
    return epochs, means, stds, [len(by_epoch[e]) for e in epochs]


def collect(client: MlflowClient, rows: Mapping[str, Sequence[RunRecord]]) -> DiagnosticCurves:
    """The curves of each row from its runs (``{label: the finished runs of its best configuration}``).

    Only the measures over all pairs are read (not the per-pair or per-task ones); a run without
    diagnostics costs no MLflow call."""
    out = DiagnosticCurves()
    for label, runs in rows.items():
        measures: dict[DiagName, list[list[tuple[int, float]]]] = {}
        for record in runs:
            if not record.diagnostics:
                continue
            try:
                histories = diag_histories(client, record)
            except MlflowException as err:  # one run's history lost must not sink the report
                out.unreadable.append(f"{label} run {record.run_name}: {str(err).splitlines()[0]}")
                continue
            for name, points in histories.items():
                measures.setdefault(name, []).append(points)
        if not measures:
            out.without.append(label)
            continue
        out.histories[label] = measures
        single = bool(runs) and runs[0].is_single_task
        for name in sorted(measures, key=_order):
            epochs, mean, std, counts = mean_curve(measures[name])
            out.series.append(Series(label, single, name.level, name.between, name.measure, epochs, mean, std, counts))
    return out


def _order(name: DiagName) -> tuple:
    rank = MEASURES.index(name.measure) if name.measure in MEASURES else len(MEASURES)
    return (DIAG_LEVELS.index(name.level), BETWEEN.index(name.between), rank, name.measure)


def end_value_table(curves: DiagnosticCurves, level: str) -> tuple[list[str], list[list[object]]]:
    """Headers and rows of the report's table of end values at ``level``: one row per method,
    one column per measure between tasks, then per measure between samples."""
    values = curves.end_values()
    values = values[values["level"] == level]
    columns = [(b, m) for b in BETWEEN for m in curves.measures(level) if not values[(values["between"] == b)
                                                                                    & (values["measure"] == m)].empty]
    headers = ["method"] + [m if b == "tasks" else f"{m} (samples)" for b, m in columns]
    table = []
    for label in dict.fromkeys(values["label"]):
        mine = values[values["label"] == label].set_index(["between", "measure"])["value"]
        table.append([label] + [float(mine[(b, m)]) if (b, m) in mine.index else math.nan for b, m in columns])
    return headers, table
