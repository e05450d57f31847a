"""The files of ``searcher report``: Markdown, CSV tables, figures, and the MLflow run that holds them.

``analysis.report`` computes the tables; this module only renders them: ``report.md`` (what
the command prints), one CSV per table (every row with its comparable group), the figures of
``analysis.report_plots`` per group, and a run ``report`` of the experiment (tag
``searcher.role=report``) with every file as an artifact and the headline numbers as metrics.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.report import GroupReport, Report
from analysis.uncertainty import MIN_SEEDS
from searcher.run_record import Role, Tag


def fmt(value: Any, std: Any = math.nan) -> str:
    """4 significant digits as `002`'s tables; '-' for a missing value; '± std' where there is one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not isinstance(value, (int, float, np.floating, np.integer)):
        return str(value)
    text = f"{float(value):.4g}"
    if std is not None and isinstance(std, (int, float, np.floating)) and not math.isnan(float(std)):
        text += f" ± {float(std):.2g}"
    return text


def fmt_ci(value: Any, std: Any, low: Any, high: Any) -> str:
    """``mean ± std [low, high]``: the 95% interval where there is one."""
    text = fmt(value, std)
    if text != "-" and isinstance(low, (int, float, np.floating)) and not math.isnan(float(low)):
        text += f" [{float(low):.3g}, {float(high):.3g}]"
    return text


def fmt_seconds(seconds: Any) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def short_weights(weights: str) -> str:
    """``f1=0.22507135987480903,f2=0.77...`` -> ``f1=0.2251, f2=0.7749``."""
    parts = []
    for item in str(weights).split(","):
        task, _, value = item.partition("=")
        try:
            parts.append(f"{task.strip()}={float(value):.4g}")
        except ValueError:
            parts.append(item.strip())
    return ", ".join(parts)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def seeds_cell(seeds: Any) -> str:
    """The seeds of a row, flagged when fewer than ``MIN_SEEDS``."""
    return f"{int(seeds)} ⚠" if int(seeds) < MIN_SEEDS else str(int(seeds))


def verdict_cell(row: Mapping[str, Any]) -> str:
    outcome = str(row.get("vs_ew") or "")
    p = row.get("vs_ew_p", math.nan)
    if outcome in ("", "baseline") or pd.isna(p):
        return outcome or "-"
    return f"{outcome} (p={float(p):.2g}, on {row.get('vs_ew_on')})"


def to_markdown(report: Report, figures: Mapping[str, str] | None = None) -> str:
    """The whole report as Markdown (what ``searcher report`` prints and logs as ``report.md``)."""
    figures = figures or {}
    counts = pd.Series([r.status for r in report.records]).value_counts()
    out = [f"# Report: experiment `{report.experiment}`", ""]
    out.append(f"Space {report.space} (problem {report.problem}; tasks {', '.join(report.directions)}); "
               f"{len(report.records)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")
    out.append("")
    if len(report.groups) > 1:
        out += [f"The runs fall into {len(report.groups)} groups that cannot be compared with each other (each "
                "group: the same problem options, data and epoch budget); every table below is one group's:", ""]
        out += [f"- group {g.index}: {g.describe} ({len(g.records)} runs)" for g in report.groups] + [""]
    out += ["Test metrics at each run's best validation epoch; mean ± sample std [95% t-interval] over the seeds of "
            "the best validation configuration of each method; ⚠: fewer than 3 seeds. Δm: `002` eq. 1 (%, higher is "
            "better); MR: `002` eq. 2 (mean rank among the multi-task methods, lower is better; its interval from "
            "seed resamples). vs EW: Welch's t-test against EW's best configuration at the 0.05 level. Diverged and "
            "failed runs are excluded from every mean (listed at the end).", ""]
    out += methods_section(report)
    for group in report.groups:
        out += group_section(report, group, figures)
    for note in report.notes:
        out.append(f"- {note}")
    if report.notes:
        out.append("")
    out += ["## Runs excluded from the means", ""]
    if report.excluded.empty:
        out.append("None: every run finished.")
    else:
        out.append(markdown_table(["run", "run id", "method", "status", "reason"],
                                  [[v or "-" for v in row] for row in report.excluded.values.tolist()]))
    return "\n".join(out) + "\n"


def methods_section(report: Report) -> list[str]:
    out = ["## Every method: trials and cost", "",
           "Planned: the trials the searches gave it; pruned: stopped early by the scheduler; cost: seconds of "
           "training per epoch and in all, over every run of the method (`001` reports s/epoch).", ""]
    headers = ["method", "group", "planned", "completed", "pruned", "diverged", "failed", "running", "s/epoch",
               "compute", "result"]
    rows = [[r["method"], r["group"], int(r["planned"]), int(r["completed"]), int(r["stopped_early"]),
             int(r["diverged"]), int(r["failed"]), int(r["running"]), fmt(r["s_per_epoch"]), fmt_seconds(r["compute_s"]),
             r["result"]] for _, r in report.methods.iterrows()]
    return out + [markdown_table(headers, rows), ""]


def group_section(report: Report, group: GroupReport, figures: Mapping[str, str]) -> list[str]:
    arrows = {c: "↑" if h else "↓" for c, h in zip(report.columns, report.column_directions)}
    arrows = {c: f"{a} ({report.unit(c)[1]})" if report.unit(c)[1] else a for c, a in arrows.items()}
    title = f"Group {group.index}: {group.describe}" if len(report.groups) > 1 else f"Group: {group.describe}"
    out = [f"## {title}", ""]
    refs = group.references
    out.append(f"Single-task references: {refs.source}.")
    if refs.values is not None:
        out.append("Reference values: " + ", ".join(f"{t}/{m} = {fmt(report.shown(f'{t}/{m}', v)[0])}"
                                                    for t, ms in refs.values.items() for m, v in ms.items()) + ".")
    if refs.refused:
        out += ["", "Refused as references for this group (trained on something else):", ""]
        out += [f"- {line}" for line in refs.refused]
    out.append("")

    out += [f"### Verdict: best configuration per method ({group.name})", ""]
    if group.summary.empty:
        out.append("No finished run.")
    else:
        headers = (["method", "configuration", "seeds", "val score"] + [f"{c} {arrows[c]}" for c in report.columns]
                   + ["Δm % ↑ [95% CI]", "vs EW", "MR ↓ [95%]", "s/epoch", "compute"])
        rows = []
        for _, r in group.summary.iterrows():
            rows.append([r["method"], r["configuration"] or "-", seeds_cell(r["seeds"]),
                         fmt(r["val_score"], r["val_score_std"])]
                        + [fmt(*report.shown(c, r[c], r[f"{c} std"])) for c in report.columns]
                        + [fmt_ci(r["delta_m"], r["delta_m_std"], r["delta_m_ci_low"], r["delta_m_ci_high"]),
                           verdict_cell(r), fmt_ci(r["mean_rank"], math.nan, r["mean_rank_ci_low"], r["mean_rank_ci_high"]),
                           fmt(r["s_per_epoch"]), fmt_seconds(r["compute_s"])])
        out.append(markdown_table(headers, rows))
    out.append("")

    if not group.budget.empty:
        out += [f"### Budget curves ({group.name})", "",
                "Expected best validation score, and the test Δm of that best, after n trials of each method "
                "(Dodge et al. 2019: the expected maximum over n trials drawn from the method's own; band ± std). "
                "A curve still rising at its last trial means more tuning would still pay: a method ahead only at "
                "a larger n won by its budget.", ""]
        last = group.budget.groupby("method", sort=False).tail(1)  # each method's n = N row
        out.append(markdown_table(["method", "trials", "expected best val score", "expected test Δm % of that best"],
                                  [[r["method"], int(r["trials"]), fmt(r["expected_best_val"], r["expected_best_val_std"]),
                                    fmt(r["expected_test_delta_m"], r["expected_test_delta_m_std"])]
                                   for _, r in last.iterrows()]))
        out.append("")
        if f"budget{group.suffix}" in figures:
            out += [f"![budget curves]({figures[f'budget{group.suffix}']})", ""]

    if not group.fixed.empty:
        out += [f"### Fixed weights from SMTOs (`002` §3.5, Table 2; {group.name})", "",
                "Δm of the fixed-weight reruns beside their source SMTO's configuration and the best EW; weights from: "
                "the run (and method) they were extracted from, the EMA β and the epoch used.", ""]
        headers = ["rerun", "weights from", "configuration of", "weights", "seeds", "EW Δm %", "fixed weights Δm % [95% CI]",
                   "vs EW", "source SMTO Δm %", "best SMTO"] + [f"{c} {arrows[c]}" for c in report.columns]
        rows = [[r["method"], r["weights_from"], f"{r['source_run']} ({r['source_configuration'] or '-'})",
                 short_weights(r["weights"]), seeds_cell(r["seeds"]), fmt(r["ew_delta_m"], r["ew_delta_m_std"]),
                 fmt_ci(r["fixed_delta_m"], r["fixed_delta_m_std"], r["fixed_delta_m_ci_low"], r["fixed_delta_m_ci_high"]),
                 verdict_cell({"vs_ew": r["vs_ew"], "vs_ew_p": r["vs_ew_p"], "vs_ew_on": "Δm"}),
                 fmt(r["source_delta_m"], r["source_delta_m_std"]),
                 f"{r['best_smto']} ({fmt(r['best_smto_delta_m'])})" if r["best_smto"] else "-"]
                + [fmt(*report.shown(c, r[c], r[f"{c} std"])) for c in report.columns] for _, r in group.fixed.iterrows()]
        out += [markdown_table(headers, rows), ""]

    frame = group.pareto_configs
    valid = frame[frame["comparable"]] if not frame.empty else frame
    front = valid[valid["pareto_optimal"]] if not valid.empty else valid
    pruned = int(frame["pruned_runs"].sum()) if not frame.empty else 0
    out += [f"### Pareto front over configurations (`003` Tables 2 and A2; {group.name})", "",
            f"Over the test metrics ({', '.join(f'{c} {arrows[c]}' for c in report.columns)}) of the {len(valid)} "
            "multi-task configurations with a completed run, each the mean of its completed seeds; "
            f"Pareto-optimal: {len(front)}. Left out: {pruned} run(s) stopped early by the scheduler "
            "(a smaller budget) and the single-task runs.", ""]
    if not group.pareto_methods.empty:
        out += [markdown_table(["method", "configurations", "Pareto-optimal", "pruned runs (left out)"],
                               group.pareto_methods[["method", "configurations", "pareto_optimal", "pruned_runs"]].values.tolist()), ""]
        out += [markdown_table(["optimizer", "configurations", "PO (full)", "PO w.r.t. other optimizers"],
                               group.pareto_optimizers.values.tolist()), ""]
        out += [markdown_table(["method", "configuration", "optimizer", "seeds"] + [f"{c} {arrows[c]}" for c in report.columns],
                               [[r["label"], r["configuration"] or "-", r["optimizer"], int(r["runs"])]
                                + [fmt(*report.shown(c, r[c], r[f"{c} std"])) for c in report.columns] for _, r in front.iterrows()]), ""]
    if f"pareto{group.suffix}" in figures:
        out += [f"![Pareto front]({figures[f'pareto{group.suffix}']})", ""]
    if group.weights:
        out += [f"### Weight trajectories ({group.name})", "", "Per-epoch task weights (normalized to sum 1) of each SMTO's "
                "best run: " + ", ".join(f"{m} ({h['run_name']})" for m, h in group.weights.items()) + ".", ""]
        if f"weights{group.suffix}" in figures:
            out += [f"![weight trajectories]({figures[f'weights{group.suffix}']})", ""]
    return out + views_section(group, figures)


def views_section(group: GroupReport, figures: Mapping[str, str]) -> list[str]:
    """The gradient diagnostics over epochs, their ranking similarity, and Adam vs SGD of one group."""
    from analysis.diagnostic_curves import TAIL_FRACTION, end_value_table
    from analysis.optimizer_view import better_optimizer
    from analysis.ranking_similarity import DELTA_M

    curves = group.diagnostics
    out = [f"### Gradient diagnostics over epochs (`003` Figure 3, `004` Figures 3-5; {group.name})", ""]
    if curves.empty:
        out += ["No gradient diagnostics logged by the best configurations of this group (train with `--param "
                "diagnostics_every=K`): no curves, no ranking similarity.", ""]
    else:
        out += ["Per method, the mean over the seeds of its best configuration (the one selected above) of each "
                "measure's per-epoch value (band: ± std over the seeds). Left: between the tasks' gradients "
                "(multi-task methods); right: between samples of one task, averaged over tasks (`003` §4.2: the "
                "single-task setting; single-task rows dashed), on the same y axis. GDS: `004` eq. 5b, GMS: eq. 6b, "
                "FD: eq. 8; conflicts: `003` §4.2.", ""]
        if curves.without:
            out += [f"No diagnostics logged by: {', '.join(curves.without)}.", ""]
        if curves.unreadable:
            out += [f"Diagnostic histories MLflow could not read (left out): {'; '.join(curves.unreadable)}.", ""]
        for level in curves.levels:
            stem = f"diagnostics-{level}{group.suffix}"
            if stem in figures:
                out += [f"![gradient diagnostics, {level} level]({figures[stem]})", ""]
            headers, rows = end_value_table(curves, level)
            out += [f"End of training ({level} level): per run the mean over its last ⌈n/{round(1 / TAIL_FRACTION)}⌉ "
                    "of its n epochs (`004` §5.5 takes the last 50 of about 300 points), then over the seeds:", "",
                    markdown_table(headers, [[r[0]] + [fmt(v) for v in r[1:]] for r in rows]), ""]
        out += similarity_section(group, DELTA_M)
    out += [f"### Adam vs SGD: best configuration per method and optimizer (`003` §4.1, Tables A3-A6; {group.name})", ""]
    if group.optimizers_note:
        out += [group.optimizers_note[0].upper() + group.optimizers_note[1:] + ".", ""]
    else:
        out += ["Each method's best configuration chosen within each optimizer's trials alone (the same rule as above: "
                "highest mean validation score); Δm over its seeds against this group's single-task references; "
                "MR over every method x optimizer row.", ""]
        frame = group.optimizers
        out += [markdown_table(["method", "optimizer", "trials", "configuration", "seeds", "val score",
                                "Δm % ↑ [95% CI]", "MR ↓"],
                               [[r["method"], r["optimizer"], int(r["trials"]), r["configuration"] or "-",
                                 seeds_cell(r["seeds"]), fmt(r["val_score"]),
                                 fmt_ci(r["delta_m"], r["delta_m_std"], r["delta_m_ci_low"], r["delta_m_ci_high"]),
                                 fmt(r["mean_rank"])] for _, r in frame.iterrows()]), ""]
        better = better_optimizer(frame)
        if better:
            counts = pd.Series(list(better.values())).value_counts()
            out += ["Higher Δm: " + ", ".join(f"{o} for {n} method(s)" for o, n in counts.items()) + " ("
                    + ", ".join(f"{m}: {o}" for m, o in better.items()) + ").", ""]
    return out


def similarity_section(group: GroupReport, delta_m: str) -> list[str]:
    """`004` eq. 9 of each measure against Δm (the brief's table), and against each test metric (as `004` Tables 5-7)."""
    frame = group.similarity
    out = [f"### Ranking similarity of the diagnostics (`004` eq. 9; {group.name})", ""]
    if frame.empty:
        return out + ["None of GDS, GMS, FD was logged between tasks by the multi-task methods: nothing to rank.", ""]
    out += ["S: the fraction of ordered method pairs that a measure's end-of-training value and the test performance "
            "(larger is better) order alike (`004` eq. 9); S > 0.5: a larger measure goes with better performance, "
            "S < 0.5: with worse; `004` reads |S − 0.5| (reversing one ranking gives 1 − S).", ""]
    against = frame[frame["against"] == delta_m]
    if against.empty:
        out += ["No Δm (no single-task references): ranked against each test metric only.", ""]
    else:
        out += [markdown_table(["measure", "level", "S", "|S − 0.5|", "methods"],
                               [[r["measure"], r["level"], fmt(r["S"]), fmt(r["abs_S_minus_half"]), int(r["methods"])]
                                for _, r in against.iterrows()]), ""]
    metrics = [a for a in dict.fromkeys(frame["against"]) if a != delta_m]
    if metrics:
        pivot = frame[frame["against"] != delta_m]
        rows = []
        for (measure, level), sub in pivot.groupby(["measure", "level"], sort=False):
            by = dict(zip(sub["against"], sub["S"]))
            rows.append([measure, level] + [fmt(by.get(m, math.nan)) for m in metrics])
        out += ["S against each test metric (as `004` Tables 5-7):", "",
                markdown_table(["measure", "level", *metrics], rows), ""]
    return out


@dataclass
class WrittenReport:
    directory: Path
    files: list[Path]
    markdown: str


def write_report(report: Report, out: str | Path) -> WrittenReport:
    """Write the CSV tables, the figures and ``report.md`` into ``out``."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def csv(frame: pd.DataFrame, name: str) -> None:
        path = directory / name
        frame.to_csv(path, index=False)
        files.append(path)

    csv(report.table("summary"), "summary.csv")
    csv(report.methods, "methods.csv")
    if any(not g.fixed.empty for g in report.groups):
        csv(report.table("fixed"), "fixed_weights.csv")
    if any(not g.budget.empty for g in report.groups):
        csv(report.table("budget"), "budget_curves.csv")
    csv(report.table("pareto_configs"), "pareto_configurations.csv")
    csv(report.table("pareto_methods"), "pareto_by_method.csv")
    csv(report.table("pareto_optimizers"), "pareto_by_optimizer.csv")
    group_of = {r.run_id: g.index for g in report.groups for r in g.records}
    csv(pd.DataFrame([{"run": r.run_name, "run_id": r.run_id, "group": group_of.get(r.run_id), "method": r.label,
                       "status": r.status, "optimizer": r.optimizer, "val_score": r.val_score, "epochs": r.epochs,
                       "seconds": r.seconds, **{f"{t}/{m}": r.test(t, m) for t, ms in report.directions.items() for m in ms}}
                      for r in report.records]), "runs.csv")
    csv(report.excluded, "excluded_runs.csv")
    views_csvs(report, csv)

    figures: dict[str, str] = {}
    for group in report.groups:
        files += group_figures(report, group, directory, figures)
    text = to_markdown(report, figures)
    path = directory / "report.md"
    path.write_text(text)
    files.append(path)
    return WrittenReport(directory, files, text)


def views_csvs(report: Report, csv: Callable[[pd.DataFrame, str], None]) -> None:
    """The tables of the views, where a group has them: curves and end values of the diagnostics,
    their ranking similarity, the best configuration per method and optimizer."""
    def with_group(frames: list[tuple[GroupReport, pd.DataFrame]]) -> pd.DataFrame:
        frames = [(g, f) for g, f in frames if not f.empty]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat([f.assign(group=g.index, group_key=g.describe) for g, f in frames], ignore_index=True)
        return frame[["group", "group_key", *[c for c in frame.columns if c not in ("group", "group_key")]]]

    for name, frame in (("diagnostic_curves.csv", with_group([(g, g.diagnostics.frame()) for g in report.groups])),
                        ("diagnostic_end_values.csv", with_group([(g, g.diagnostics.end_values()) for g in report.groups])),
                        ("ranking_similarity.csv", with_group([(g, g.similarity) for g in report.groups])),
                        ("optimizers.csv", with_group([(g, g.optimizers) for g in report.groups]))):
        if not frame.empty:
            csv(frame, name)


def group_figures(report: Report, group: GroupReport, directory: Path, figures: dict[str, str]) -> list[Path]:
    """The Pareto figure, budget curves and weight trajectories of one group (names suffixed after the first)."""
    from analysis import report_plots

    made: list[Path] = []
    where = f" ({group.name})" if len(report.groups) > 1 else ""
    frame = group.pareto_configs
    valid = frame[frame["comparable"]] if not frame.empty else frame
    if len(valid):
        points = valid.assign(run_name=valid["configuration"].replace("", "-"), run_id=valid["run_ids"].str.split().str[0])
        title = (f"{report.experiment}{where}: {len(valid)} configurations (mean ± std over seeds), "
                 f"{int(valid['pareto_optimal'].sum())} Pareto-optimal")
        stem = f"pareto{group.suffix}"
        if len(report.columns) == 2:
            refs = group.references.values
            values = {c: refs[c.split("/", 1)[0]][c.split("/", 1)[1]] for c in report.columns} if refs else {}
            made += report_plots.pareto_scatter(points, report.columns, report.column_directions, values, title,
                                                directory / f"{stem}.png", directory / f"{stem}.html")
        else:
            made += report_plots.parallel_coordinates(points, report.columns, report.column_directions, title,
                                                      directory / f"{stem}.png", directory / f"{stem}.html")
        figures[stem] = f"{stem}.png"
    if not group.budget.empty:
        stem = f"budget{group.suffix}"
        made += report_plots.budget_curves(group.budget, f"{report.experiment}{where}: expected best after n trials",
                                           directory / f"{stem}.png", directory / f"{stem}.html",
                                           has_test=group.references.values is not None)
        figures[stem] = f"{stem}.png"
    if group.weights:
        stem = f"weights{group.suffix}"
        made += report_plots.weight_trajectories(group.weights, f"{report.experiment}{where}: task weights of each SMTO's best run",
                                                 directory / f"{stem}.png", directory / f"{stem}.html")
        figures[stem] = f"{stem}.png"
    for level in group.diagnostics.levels:
        stem = f"diagnostics-{level}{group.suffix}"
        made += report_plots.diagnostic_figure(group.diagnostics, level, f"{report.experiment}{where}: gradient "
                                               f"diagnostics ({level} level), best configuration of each method",
                                               directory / f"{stem}.png", directory / f"{stem}.html")
        figures[stem] = f"{stem}.png"
    return made


def metric_key(label: str) -> str:
    """A label as an MLflow metric-name part (``single_task[f1]`` -> ``single_task_f1_``)."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in label)


def log_report(report: Report, written: WrittenReport) -> str:
    """Log the report as a run ``report`` of the experiment (tag ``searcher.role=report``); return its id.

    Metrics: ``delta_m/<method>``, ``mean_rank/<method>``, ``pareto_optimal/<method>`` and
    ``ranking_similarity/<level>/<measure>`` (S against Δm) of the first group; ``g<k>/...`` for group k > 1.
    """
    client = MlflowClient(report.uri)
    tags = {Tag.ROLE: Role.REPORT, Tag.SPACE: report.space.split(", ")[0], Tag.PROBLEM: report.problem,
            Tag.REFERENCES: report.reference_source[:5000]}
    run = client.create_run(report.experiment_id, run_name="report", tags=tags)
    run_id = run.info.run_id
    try:
        params = {"experiment": report.experiment, "runs": len(report.records),
                  "finished_runs": sum(r.finished for r in report.records), "groups": len(report.groups),
                  "references": "file" if report.stl is not None else
                  ("single_task runs" if report.references is not None else "none")}
        now = int(time.time() * 1000)
        metrics = []
        for group in report.groups:
            prefix = "" if group.index == 1 else f"g{group.index}/"
            for _, row in group.summary.iterrows():
                for name in ("delta_m", "mean_rank"):
                    if pd.notna(row[name]):
                        metrics.append(Metric(f"{prefix}{name}/{metric_key(row['method'])}", float(row[name]), now, 0))
            for _, row in group.pareto_methods.iterrows():
                metrics.append(Metric(f"{prefix}pareto_optimal/{metric_key(row['method'])}", float(row["pareto_optimal"]), now, 0))
            for _, row in group.similarity.iterrows():  # `004` eq. 9 against Δm
                if row["against"] == "Δm" and pd.notna(row["S"]):
                    metrics.append(Metric(f"{prefix}ranking_similarity/{row['level']}/{row['measure']}", float(row["S"]), now, 0))
        client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        for path in written.files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id
