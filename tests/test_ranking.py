"""Δm over a table (`002` eq. 1) and mean rank MR (`002` eq. 2), on hand-worked numbers and the papers' tables."""

from __future__ import annotations

import math

import pytest

from analysis.ranking import check_reference, delta_m_table, mean_rank, metric_ranks, relative_changes
from trainables.errors import ConfigError

# --------------------------------------------------------------------------- MR by hand

HIB = {"A": {"acc": True, "err": False}, "B": {"mse": False}}
TABLE = {
    "m1": {"A": {"acc": 0.9, "err": 0.3}, "B": {"mse": 0.5}},
    "m2": {"A": {"acc": 0.8, "err": 0.1}, "B": {"mse": math.nan}},
    "m3": {"A": {"acc": 0.8, "err": 0.2}, "B": {"mse": 0.4}},
}


def test_mean_rank_by_hand_with_a_tie_and_a_missing_value():
    """A/acc: m1 0.9 -> 1; m2 and m3 tie at 0.8 -> (2 + 3) / 2 = 2.5 each.
    A/err (lower better): m2 0.1 -> 1, m3 0.2 -> 2, m1 0.3 -> 3. Task A: m1 2, m2 1.75, m3 2.25.
    B/mse: m3 0.4 -> 1, m1 0.5 -> 2, m2 missing -> last, 3.
    MR = mean over tasks: m1 (2 + 2)/2 = 2, m2 (1.75 + 3)/2 = 2.375, m3 (2.25 + 1)/2 = 1.625.
    (A flat mean over the three metrics would give 2, 2.167, 1.833: the task average matters.)
    """
    ranks = metric_ranks(TABLE, HIB)
    assert ranks.loc["m2", "A/acc"] == ranks.loc["m3", "A/acc"] == 2.5
    assert ranks["A/err"].to_dict() == {"m1": 3.0, "m2": 1.0, "m3": 2.0}
    assert ranks.loc["m2", "B/mse"] == 3.0
    mr = mean_rank(TABLE, HIB)
    assert mr == pytest.approx({"m1": 2.0, "m2": 2.375, "m3": 1.625})
    assert sum(mr.values()) == pytest.approx(3 * 4 / 2)  # K methods: ranks average (K + 1) / 2
    assert mean_rank(TABLE, HIB, ["B"]) == pytest.approx({"m1": 2.0, "m2": 3.0, "m3": 1.0})
    assert mean_rank({}, HIB) == {}
    assert mean_rank({"only": TABLE["m1"]}, HIB) == {"only": 1.0}


def test_equal_methods_share_the_mean_rank():
    table = {"a": {"T": {"m": 1.0}}, "b": {"T": {"m": 1.0}}, "c": {"T": {"m": 1.0}}}
    assert mean_rank(table, {"T": {"m": True}}) == {"a": 2.0, "b": 2.0, "c": 2.0}


# --------------------------------------------------------------------------- `002` Table 4 (Cityscapes 19C)

CITYSCAPES = {"segmentation": {"acc": True, "miou": True}, "disparity": {"l1_abs": False, "l1_rel": False},
              "instance": {"l1_abs": False}}
# Per-metric relative changes (%) of `002` Table 4 (Appendix A.2.2), columns Acc, mIoU, L1 abs, L1 rel, inst. L1 abs;
# every column is already signed so that higher is better.
TABLE_4 = {
    "Unit. Scal.": [-2.120, -16.78, -8.542, -11.41, 3.492],
    "Auto-Lambda": [-1.922, -15.02, -8.546, -9.317, 3.657],
    "CAGrad": [-0.977, -7.647, -6.709, -10.06, 3.325],
    "CDTT": [-0.948, -8.954, 2.043, -0.224, 0.472],
    "EDM": [-0.225, -3.174, 0.990, -1.051, 2.468],
    "FAMO": [-0.274, -3.268, 0.755, -2.212, 2.339],
    "IMTL": [-0.224, -2.759, 3.017, 0.993, 1.195],
    "Nash-MTL": [-0.290, -3.275, 0.297, -0.227, 1.409],
    "RotoGrad": [-0.453, -4.484, 0.303, -3.493, -1.659],
}
TABLE_4_AVG = {"Auto-Lambda": -4.582, "CAGrad": -3.124, "Nash-MTL": -0.113}  # the others: tests/test_metrics.py


def table_4_metrics():
    """Metric values whose relative changes to a reference of 1.0 are Table 4's columns."""
    table = {}
    for method, changes in TABLE_4.items():
        values = iter(changes)
        table[method] = {t: {m: 1.0 + next(values) / 100.0 * (1 if higher else -1) for m, higher in ms.items()}
                         for t, ms in CITYSCAPES.items()}
    return table


REFERENCE_ONE = {t: {m: 1.0 for m in ms} for t, ms in CITYSCAPES.items()}


def test_delta_m_table_reproduces_002_table_4_avg():
    """Δm of each row against the reference (within a task first: Seg and Disp have two metrics each)."""
    table = table_4_metrics()
    dm = delta_m_table(table, REFERENCE_ONE, CITYSCAPES)
    for method, avg in TABLE_4_AVG.items():
        assert dm[method] == pytest.approx(avg, abs=1e-3)
    changes = relative_changes(table["CAGrad"], REFERENCE_ONE, CITYSCAPES)
    assert changes["disparity"] == pytest.approx({"l1_abs": -6.709, "l1_rel": -10.06})
    # `002` Table 2, City 19C: the best SMTO is IMTL with 0.570 and Unit. Scal. has -5.312.
    best = max((m for m in dm if m != "Unit. Scal."), key=dm.get)
    assert best == "IMTL" and dm[best] == pytest.approx(0.570, abs=1e-3)
    assert dm["Unit. Scal."] == pytest.approx(-5.312, abs=1e-3)


TABLE_4_MR = {  # worked out in test_mean_rank_of_002_table_4_by_hand
    "Unit. Scal.": (9 + 8.5 + 2) / 3, "Auto-Lambda": (8 + 8 + 1) / 3, "CAGrad": (6.5 + 7.5 + 3) / 3,
    "CDTT": (6.5 + 2 + 8) / 3, "EDM": (2 + 3.5 + 4) / 3, "FAMO": (3 + 4.5 + 5) / 3, "IMTL": (1 + 1 + 7) / 3,
    "Nash-MTL": (4 + 4.5 + 6) / 3, "RotoGrad": (5 + 5.5 + 9) / 3,
}


def test_mean_rank_of_002_table_4_by_hand():
    """Ranks per column (1 = best; Table 4 has no ties):
    Acc:  IMTL 1, EDM 2, FAMO 3, Nash 4, Roto 5, CDTT 6, CAGrad 7, AutoL 8, US 9
    mIoU: IMTL 1, EDM 2, FAMO 3, Nash 4, Roto 5, CAGrad 6, CDTT 7, AutoL 8, US 9
    -> segmentation: IMTL 1, EDM 2, FAMO 3, Nash 4, Roto 5, CDTT 6.5, CAGrad 6.5, AutoL 8, US 9
    L1 abs: IMTL 1, CDTT 2, EDM 3, FAMO 4, Roto 5, Nash 6, CAGrad 7, US 8, AutoL 9
    L1 rel: IMTL 1, CDTT 2, Nash 3, EDM 4, FAMO 5, Roto 6, AutoL 7, CAGrad 8, US 9
    -> disparity: IMTL 1, CDTT 2, EDM 3.5, FAMO 4.5, Nash 4.5, Roto 5.5, CAGrad 7.5, AutoL 8, US 8.5
    instance: AutoL 1, US 2, CAGrad 3, EDM 4, FAMO 5, Nash 6, IMTL 7, CDTT 8, Roto 9
    MR = (seg + disp + inst) / 3.
    """
    expected = TABLE_4_MR
    mr = mean_rank(table_4_metrics(), CITYSCAPES)
    assert mr == pytest.approx(expected)
    assert sum(mr.values()) == pytest.approx(9 * 10 / 2)
    # ranking relative changes or the metric values themselves is the same thing
    scaled = {m: {t: {k: v * 7.0 for k, v in ms.items()} for t, ms in row.items()} for m, row in table_4_metrics().items()}
    assert mean_rank(scaled, CITYSCAPES) == pytest.approx(expected)


def test_002_table_1_mean_ranks_average_k_plus_1_over_2():
    """`002` Table 1 (QM9, 7 methods, 11 single-metric tasks) prints MR but not the per-task values; what can be
    checked is the identity every MR column obeys: the mean over K methods is (K + 1) / 2 = 4, and each MR
    is a multiple of 1/11 up to the printed rounding. Ours obeys the same identity on any table of 7 methods."""
    table_1 = {"Unit. Scal.": 4.45, "Auto-Lambda": 5.82, "CAGrad": 3.82, "CDTT": 5.45, "EDM": 4.00, "FAMO": 2.36,
               "Nash-MTL": 2.09}
    assert sum(table_1.values()) / 7 == pytest.approx(4.0, abs=0.005)
    assert all(abs(v * 11 - round(v * 11)) < 0.06 for v in table_1.values())
    import numpy as np

    rng = np.random.default_rng(0)
    tasks = {f"t{i}": {"mae": False} for i in range(11)}
    table = {m: {t: {"mae": float(rng.integers(0, 4))} for t in tasks} for m in table_1}  # many ties
    mr = mean_rank(table, tasks)
    assert sum(mr.values()) / 7 == pytest.approx(4.0)
    assert all(abs(v * 22 - round(v * 22)) < 1e-9 for v in mr.values())  # tie ranks are halves


# --------------------------------------------------------------------------- `002` Table 3 (Multi-MNIST CL_RR)

# CL accuracy and RR MSE changes (%) and the avg; rows tests/test_metrics.py does not already check.
TABLE_3 = {
    "Auto-Lambda": (-1.232, -7.186, -4.209), "CAGrad": (-1.685, -2.590, -2.137), "CDTT": (-1.546, -3.596, -2.571),
    "EDM": (-1.613, -2.993, -2.303), "GradDrop": (-1.076, -22.04, -11.56), "MGDA-UB": (-1.448, -11.26, -6.352),
    "Nash-MTL": (-1.695, -4.430, -3.063), "PCGrad": (-1.039, -15.36, -8.201), "RLW-Dirichlet": (-1.145, -19.48, -10.31),
    "RLW-Normal": (-1.100, -18.53, -9.817), "RotoGrad": (-2.705, -1.572, -2.139), "SI": (-0.962, -27.47, -14.21),
    "UW": (-1.109, -26.30, -13.70),
}


def test_delta_m_table_reproduces_002_table_3_and_its_best_smto():
    """Reference accuracy 0.95 and MSE 0.30 (any values do): the avg column is the mean of the two tasks'
    changes, up to the printed rounding; CAGrad is the best (`002` Table 2, MNIST: best SMTO -2.137)."""
    hib = {"CL": {"accuracy": True}, "RR": {"mse": False}}
    reference = {"CL": {"accuracy": 0.95}, "RR": {"mse": 0.30}}
    table = {m: {"CL": {"accuracy": 0.95 * (1 + cl / 100)}, "RR": {"mse": 0.30 * (1 - rr / 100)}}
             for m, (cl, rr, _) in TABLE_3.items()}
    dm = delta_m_table(table, reference, hib)
    for method, (_, _, avg) in TABLE_3.items():
        assert dm[method] == pytest.approx(avg, rel=1e-3, abs=1e-3)
    assert max(dm, key=dm.get) == "CAGrad"


# --------------------------------------------------------------------------- `003` Tables A3, A4: Δm from raw values

SEGNET_CITYSCAPES = {"Sem.Seg.": {"mIoU": True, "pixAcc": True}, "Depth": {"AbsErr": False, "RelErr": False}}
# (mIoU, pixAcc, AbsErr, RelErr, DeltaM) as printed; `003`'s DeltaM is lower-better, i.e. minus `002`'s Δm.
TABLE_A3 = {
    "STL": ("0.7122", "0.9221", "0.0134", "29.88", None),
    "EW adam": ("0.6898", "0.9165", "0.0196", "109.84", "79.43"),
    "EW sgd": ("0.6967", "0.9179", "0.0216", "113.82", "86.24"),
    "UW adam": ("0.7052", "0.9202", "0.0136", "35.69", "5.44"),
    "RLW adam": ("0.7013", "0.9196", "0.0197", "103.61", "73.91"),
    "IMTL adam": ("0.6963", "0.9170", "0.0148", "45.63", "16.55"),
    "PCGrad adam": ("0.6770", "0.9135", "0.0226", "103.88", "80.56"),
    "CAGrad adam": ("0.7088", "0.9208", "0.0162", "66.39", "35.81"),
}
TABLE_A4 = {  # DeepLabV3+
    "STL": ("0.7203", "0.9253", "0.0132", "47.37", None),
    "EW adam": ("0.7247", "0.9268", "0.0128", "47.73", "-0.80"),
    "EW sgd": ("0.7100", "0.9217", "0.0174", "120.34", "46.88"),
    "UW adam": ("0.7224", "0.9259", "0.0122", "44.37", "-3.65"),
    "IMTL adam": ("0.7226", "0.9259", "0.0121", "45.25", "-3.38"),
    "CAGrad adam": ("0.7245", "0.9264", "0.0124", "45.56", "-2.59"),
}


def half_ulp(text: str) -> float:
    """Half a unit in the last printed digit: how far the rounded number can be from the true one."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10.0 ** -decimals


@pytest.mark.parametrize("printed", [TABLE_A3, TABLE_A4], ids=["A3-SegNet", "A4-DeepLabV3"])
def test_delta_m_from_the_metric_values_of_003(printed):
    """Δm from the mean metrics and the STL row gives minus `003`'s DeltaM column (Δm is linear in the metrics, so
    the Δm of the seed means is the mean of the seeds' Δm). Both tasks have two metrics, so the task-first
    average of `002` eq. 1 equals `003`'s flat one. The tolerance is the rounding of the printed numbers
    propagated through eq. 1 (|dΔm/dM|·ulp/2 + |dΔm/dM_ref|·ulp/2 per metric), plus the DeltaM's own rounding."""
    names = [(t, m) for t, ms in SEGNET_CITYSCAPES.items() for m in ms]
    stl = printed["STL"]
    reference = {t: {m: float(stl[i]) for i, (tt, m) in enumerate(names) if tt == t} for t in SEGNET_CITYSCAPES}
    rows = {k: v for k, v in printed.items() if k != "STL"}
    table = {k: {t: {m: float(v[i]) for i, (tt, m) in enumerate(names) if tt == t} for t in SEGNET_CITYSCAPES}
             for k, v in rows.items()}
    dm = delta_m_table(table, reference, SEGNET_CITYSCAPES)
    for key, values in rows.items():
        bound = half_ulp(values[4])
        for i in range(4):
            value, ref = float(values[i]), float(stl[i])
            bound += 100.0 / 4 * (half_ulp(values[i]) / ref + abs(value) / ref**2 * half_ulp(stl[i]))
        assert -dm[key] == pytest.approx(float(values[4]), abs=bound), key
        assert bound < 0.3  # tight: a wrong sign, scale or reference would be off by points


def test_references_must_cover_every_metric():
    with pytest.raises(ConfigError, match="no single-task reference for B/mse"):
        delta_m_table(TABLE, {"A": {"acc": 1.0, "err": 1.0}}, HIB)
    with pytest.raises(ConfigError, match="A/err must be a finite non-zero number, got 0"):
        check_reference({"A": {"acc": 1.0, "err": 0}, "B": {"mse": 1.0}}, HIB)
    with pytest.raises(ConfigError, match="got 'x'"):
        check_reference({"A": {"acc": "x", "err": 1.0}, "B": {"mse": 1.0}}, HIB)
    # only the listed tasks need references
    dm = delta_m_table({"m": TABLE["m1"]}, {"A": {"acc": 0.9, "err": 0.6}}, HIB, ["A"])
    assert dm["m"] == pytest.approx((0.0 + 50.0) / 2)
