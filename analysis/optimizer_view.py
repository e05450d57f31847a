"""Adam vs SGD (`003` §4.1, Tables A3-A6): each method's best configuration within each optimizer's trials.

When the searches drew the ``optimizer`` hyperparameter (``spaces.base.OPTIMIZERS``), the same
methods were searched with each optimizer. `003` reports, per MTO method and optimizer, "the
mean test performance over three seeds for the best learning rate w.r.t. the validation data"
(Table A3). Here, per method and optimizer, the best configuration is chosen among that
optimizer's configurations only, by the report's own rule (``analysis.report.best_configurations``:
the highest mean validation score over its search runs); its Δm (`002` eq. 1, against the
group's single-task references, whatever optimizer those trained with) is the mean over all
its finished runs, with the 95% t-interval, and MR (`002` eq. 2) ranks every method x optimizer
row together. Single-task runs and fixed-weight reruns are left out.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from analysis import ranking, uncertainty

COLUMNS = ["method", "optimizer", "trials", "configuration", "seeds", "val_score", "delta_m", "delta_m_std",
           "delta_m_ci_low", "delta_m_ci_high", "mean_rank", "best_run_id", "run_ids"]


def optimizer_table(configurations: Sequence[Any], directions: Mapping[str, Mapping[str, bool]],
                    references: Mapping[str, Mapping[str, float]] | None, varying: set[str]) -> tuple[pd.DataFrame, str]:
    """(the table, a one-line note): one row per multi-task method x optimizer it was trained with;
    the note says why there is no table (one optimizer only), else it is empty.

    ``configurations``: the group's ``analysis.report.Configuration`` list."""
    from analysis.report import best_configurations, describe_configuration, run_delta_m

    multi = [c for c in configurations if c.finished and not c.first.is_single_task and not c.first.is_rerun]
    optimizers = sorted({c.first.optimizer for c in multi})
    if len(optimizers) < 2:
        seen = optimizers[0] if optimizers else "none"
        return pd.DataFrame(columns=COLUMNS), (f"one optimizer only ({seen}) among the multi-task runs: no Adam-vs-SGD "
                                               "comparison (search the optimizer hyperparameter, `003` §4.1)")
    rows: list[dict[str, Any]] = []
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label in dict.fromkeys(c.label for c in multi):
        for optimizer in optimizers:
            mine = [c for c in multi if c.label == label and c.first.optimizer == optimizer]
            best = best_configurations(mine).get(label)
            if best is None:
                continue
            dms = [run_delta_m(r, references, directions) for r in best.finished] if references is not None else []
            dm = uncertainty.summarize(dms)
            key = f"{label}\t{optimizer}"
            table[key] = {t: {m: best.mean_std(t, m)[0] for m in ms} for t, ms in directions.items()}
            rows.append({"method": label, "optimizer": optimizer,
                         "trials": sum(r.confirm_of is None for c in mine for r in c.runs),
                         "configuration": describe_configuration(best, varying), "seeds": len(best.finished),
                         "val_score": best.val_score, "delta_m": dm.mean, "delta_m_std": dm.std,
                         "delta_m_ci_low": dm.low, "delta_m_ci_high": dm.high, "_key": key,
                         "best_run_id": best.best_run.run_id, "run_ids": " ".join(r.run_id for r in best.finished)})
    ranks = ranking.mean_rank(table, directions) if len(table) > 1 else {}
    for row in rows:
        row["mean_rank"] = ranks.get(row.pop("_key"), math.nan)
    return pd.DataFrame(rows, columns=COLUMNS), ""


def better_optimizer(table: pd.DataFrame) -> dict[str, str]:
    """Per method trained with two or more optimizers, the one whose best configuration has the higher Δm
    ("tie" when equal, absent without Δm)."""
    out: dict[str, str] = {}
    for method, rows in table.groupby("method", sort=False):
        rows = rows[rows["delta_m"].notna()]
        if len(rows) < 2:
            continue
        ordered = rows.sort_values("delta_m", ascending=False)
        first, second = ordered.iloc[0], ordered.iloc[1]
        out[str(method)] = "tie" if first["delta_m"] == second["delta_m"] else str(first["optimizer"])
    return out
