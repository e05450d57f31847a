"""QM9: featurization, targets and units, split, scaling and MAE, cache, model, both sources, CLI.

The molecules are real rows of qm9pack's ``qm9_part1.csv`` (GDB 1 methane, 3 water, 5 HCN,
105 bicyclo[1.1.1]pentane, 214 benzene), written by the tests in the package's exact format.
"""

from __future__ import annotations

import math
import re
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from trainables.errors import ConfigError, DataError
from trainables.problems import build_problem, qm9_data
from trainables.problems.graph_batches import CompleteGraphBatches, fits_on_device
from trainables.problems.qm9 import QM9, fit_scaling
from trainables.problems.qm9_data import (
    BOND_SOURCES,
    REPORT_SCALE,
    TARGETS,
    CompleteGraphs,
    featurize_qm9pack,
    load_molecules,
    read_qm9pack,
    split_rows,
    subset_split,
)
from trainables.trial import RunSettings

HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,"
    "RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,"
    "ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,"
    "Heatcapacity_Cv_cal_mol_K"
)
ROWS = {
    1: '"dsgdb9nsd_000001.xyz",1,"C","InChI=1S/CH4/h1H4",5,"[4,1,0,0,0]","[\'C\',\'H\',\'H\',\'H\',\'H\']","[[-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],[1.0117308433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,-0.8766437152],[-0.5238136345,1.4379326443,0.9063972942]]","[-0.535689,0.133921,0.133922,0.133923,0.133923]","[1341.307,1341.3284,1341.365,1562.6731,1562.7453,3038.3205,3151.6034,3151.6788,3151.7078]",157.7118,157.70997,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,-40.476062,-40.475117,-40.498597,6.469',  # noqa: E501
    3: '"dsgdb9nsd_000003.xyz",3,"O","InChI=1S/H2O/h1H2",3,"[2,0,0,1,0]","[\'O\',\'H\',\'H\']","[[-0.0343604951,0.9775395708,0.0076015923],[0.0647664923,0.0205721989,0.0015346341],[0.8717903737,1.3007924048,0.0006931336]]","[-0.589706,0.294853,0.294853]","[1671.4222,3803.6305,3907.698]",799.58812,437.90386,282.94545,1.8511,6.31,-0.2928,0.0687,0.3615,19.0002,0.021375,-76.404702,-76.401867,-76.400922,-76.422349,6.002',  # noqa: E501
    5: '"dsgdb9nsd_000005.xyz",5,"C#N","InChI=1S/CHN/c1-2/h1H",3,"[1,1,1,0,0]","[\'C\',\'N\',\'H\']","[[-0.0133239314,1.1324657151,0.0082758861],[0.0023107217,-0.0191585871,0.0019287305],[-0.0278026991,2.1989492963,0.0141537903]]","[-0.049656,-0.188473,0.238128]","[799.0101,799.0101,2198.4393,3490.3686]",0.,44.593883,44.593883,2.8937,12.99,-0.3604,0.0191,0.3796,48.7476,0.016601,-93.411888,-93.40937,-93.408425,-93.431246,6.278',  # noqa: E501
    105: '"dsgdb9nsd_000105.xyz",105,"C1C2CC1C2","InChI=1S/C5H8/c1-4-2-5(1)3-4/h4-5H,1-3H2",13,"[8,5,0,0,0]","[\'C\',\'C\',\'C\',\'C\',\'C\',\'H\',\'H\',\'H\',\'H\',\'H\',\'H\',\'H\',\'H\']","[[-0.0445774324,1.5704237601,0.0110417803],[1.4740896832,1.2298426501,-0.0067263896],[1.1682993117,0.1443109379,1.0663744852],[0.0391253719,0.0162093398,0.0024263012],[1.1462118991,0.1542190803,-1.0826776727],[-0.432979399,2.0365230932,0.9212539305],[-0.4522920887,2.0457291576,-0.8859162855],[2.3071156075,1.9344078755,-0.0121404539],[1.8734729739,-0.6889311545,1.1373305611],[0.8720963351,0.5020028465,2.0568232459],[-0.79393529,-0.6883164323,0.0076413099],[0.8299890169,0.5207143173,-2.063620376],[1.8497119208,-0.6782799316,-1.1756418065]]","[-0.201519,-0.023804,-0.201645,-0.023804,-0.201397,0.086486,0.086431,0.066707,0.086459,0.086492,0.066707,0.086423,0.086464]","[537.3037,539.3957,780.9946,783.2982,852.6095,905.5489,905.9442,906.6779,961.4726,999.2963,1027.1188,1027.6181,1115.7984,1116.0941,1120.9942,1147.5397,1147.8114,1209.302,1209.6503,1258.7241,1264.9234,1265.507,1498.6933,1500.1847,1551.1094,3041.8432,3042.2113,3047.7046,3096.7318,3103.3516,3103.7156,3109.4774,3109.9677]",7.20812,7.20681,6.22176,0.0002,49.82,-0.2974,0.1082,0.4056,328.2069,0.116844,-195.158734,-195.154774,-195.15383,-195.185188,15.584',  # noqa: E501
    214: '"dsgdb9nsd_000214.xyz",214,"C1=CC=CC=C1","InChI=1S/C6H6/c1-2-4-6-5-3-1/h1-6H",12,"[6,6,0,0,0]","[\'C\',\'C\',\'C\',\'C\',\'C\',\'C\',\'H\',\'H\',\'H\',\'H\',\'H\',\'H\']","[[-0.0263621144,1.3835086344,0.0103870267],[1.1708019283,2.0965810056,0.0023045827],[2.3868915311,1.4163752988,-0.0131380362],[2.4057296503,0.0230978461,-0.0205116117],[1.2085609122,-0.6899726756,-0.0124063764],[-0.0075247651,-0.0097718365,0.0030452239],[-0.9733414726,1.9132329519,0.0224498095],[1.1560436477,3.1816075197,0.0080224004],[3.3191394577,1.9717268815,-0.0194567412],[3.3527113702,-0.5066219591,-0.0325112361],[1.223326423,-1.7750001478,-0.0181456652],[-0.9397757183,-0.565118069,0.0093265237]]","[-0.094019,-0.093863,-0.093839,-0.09402,-0.093863,-0.093841,0.093897,0.093909,0.093916,0.093898,0.093909,0.093916]","[412.5667,413.0404,616.9983,617.2375,699.9485,722.1117,872.3705,872.6052,960.7668,961.1854,1009.2254,1014.6023,1016.5577,1062.0534,1062.5884,1173.8039,1198.1347,1198.3793,1339.2327,1362.2185,1511.6986,1512.226,1634.6709,1635.1643,3164.0651,3173.5699,3174.0247,3189.7281,3190.2356,3200.8167]",5.71227,5.71175,2.85601,0.,57.28,-0.2475,0.0029,0.2503,456.6788,0.100175,-232.164586,-232.160188,-232.159244,-232.192047,17.214',  # noqa: E501
}
HAR2EV = 27.211386246  # PyG's Hartree -> eV
KCALMOL2EV = 0.04336414  # PyG's kcal/mol -> eV
#: MoleculeNet's qm9.csv row of gdb_1 (methane), what PyG's QM9 processes: A, B, C, mu, alpha,
#: homo, lumo, gap, r2, zpve, u0, u298, h298, g298, cv (Hartree) and the atomization energies
#: u0_atom, u298_atom, h298_atom, g298_atom in kcal/mol.
MOLECULENET_METHANE = [157.7118, 157.70997, 157.70699, 0.0, 13.21, -0.3877, 0.1171, 0.5048, 35.3641, 0.044749,
                       -40.47893, -40.476062, -40.475117, -40.498597, 6.469,
                       -395.999595, -398.643290, -401.014647, -372.471772]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the network."""
    monkeypatch.setenv("SEARCHER_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)


def variant(index: int, line: str, shift: float) -> str:
    """A copy of a real row as molecule ``index`` with every property shifted by ``shift``."""
    head, tail = line.rsplit('"', 1)  # the 15 numbers after the last quoted field
    values = [float(v) for v in tail.strip(",").split(",")]
    head = re.sub(r'^"dsgdb9nsd_\d+\.xyz",\d+,', f'"dsgdb9nsd_{index:06d}.xyz",{index},', head)
    return f'{head}",' + ",".join(repr(v + shift) for v in values)


def write_qm9pack(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qm9_part1.csv").write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    return folder


def tiny_lines(n: int = 12) -> list[str]:
    """The five real molecules, then variants of them (new index, shifted properties)."""
    base = [ROWS[k] for k in sorted(ROWS)]
    return base + [variant(1000 + i, base[i % len(base)], 0.01 * (i + 1)) for i in range(n - len(base))]


@pytest.fixture(scope="module")
def five(tmp_path_factory) -> qm9_data.MoleculeTable:
    folder = write_qm9pack(tmp_path_factory.mktemp("qm9pack"), [ROWS[k] for k in sorted(ROWS)])
    return featurize_qm9pack(read_qm9pack(folder))


def molecule(table: qm9_data.MoleculeTable, gdb: int) -> dict:
    i = int((table.mol_id == gdb).nonzero()[0, 0])
    a, b = int(table.node_ptr[i]), int(table.node_ptr[i + 1])
    e0, e1 = int(table.edge_ptr[i]), int(table.edge_ptr[i + 1])
    bonds = {(int(s), int(d)): int(t) for (s, d), t in zip(table.edge_index[:, e0:e1].t().tolist(), table.bond_type[e0:e1])}
    return {"row": i, "x": table.x[a:b], "pos": table.pos[a:b], "bonds": bonds, "y": table.y[i],
            "source": BOND_SOURCES[int(table.bond_source[i])], "edge_index": table.edge_index[:, e0:e1]}


def feature_row(element: str, aromatic: int = 0, hybrid: str | None = None, num_hs: int = 0) -> list[float]:
    """A PyG QM9 node feature row written out by hand."""
    onehot = [float(element == e) for e in "HCNOF"]
    z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}[element]
    hyb = [float(hybrid == h) for h in ("sp", "sp2", "sp3")]
    return [*onehot, z, aromatic, *hyb, num_hs]


# --------------------------------------------------------------------------- featurization


def test_water_methane_and_hcn_node_features_and_bonds(five):
    water = molecule(five, 3)
    assert water["source"] == "geometry"
    assert water["x"].tolist() == [feature_row("O", hybrid="sp3", num_hs=2), feature_row("H"), feature_row("H")]
    # Each bond in both directions, in PyG's order (row * n + col), all single.
    assert water["edge_index"].tolist() == [[0, 0, 1, 2], [1, 2, 0, 0]]
    assert set(water["bonds"].values()) == {0}

    methane = molecule(five, 1)
    assert methane["x"].tolist() == [feature_row("C", hybrid="sp3", num_hs=4)] + [feature_row("H")] * 4
    assert methane["bonds"] == {(0, k): 0 for k in range(1, 5)} | {(k, 0): 0 for k in range(1, 5)}

    hcn = molecule(five, 5)  # atoms C, N, H
    assert hcn["x"].tolist() == [feature_row("C", hybrid="sp", num_hs=1), feature_row("N", hybrid="sp"), feature_row("H")]
    assert hcn["bonds"] == {(0, 1): 2, (1, 0): 2, (0, 2): 0, (2, 0): 0}  # C#N triple, C-H single


def test_benzene_is_aromatic(five):
    benzene = molecule(five, 214)  # 6 C then 6 H, each H on the C of the same rank
    assert benzene["x"][:6].tolist() == [feature_row("C", aromatic=1, hybrid="sp2", num_hs=1)] * 6
    ring = {k: t for k, t in benzene["bonds"].items() if max(k) < 6}
    assert len(ring) == 12 and set(ring.values()) == {3}  # 6 aromatic C-C bonds, both directions
    assert sorted((c, h) for (c, h), t in benzene["bonds"].items() if c < 6 <= h and t == 0) == [(k, k + 6) for k in range(6)]


def test_strained_ring_takes_its_bonds_from_the_smiles(five):
    """Bicyclo[1.1.1]pentane: the bridgeheads (atoms 1 and 3) are 1.88 A apart, which RDKit's
    geometric connectivity calls a bond; the SMILES C1C2CC1C2 has 6 C-C bonds and no 1-3 bond."""
    mol = molecule(five, 105)
    p = mol["pos"].double()
    assert 1.85 < float((p[1] - p[3]).norm()) < 1.9
    assert mol["source"] == "smiles"
    carbon = {k for k in mol["bonds"] if max(k) < 5}
    assert carbon == {(0, 1), (1, 2), (2, 3), (3, 0), (3, 4), (4, 1)} | {(1, 0), (2, 1), (3, 2), (0, 3), (4, 3), (1, 4)}
    assert len(mol["bonds"]) == 2 * 14 and set(mol["bonds"].values()) == {0}
    assert mol["x"][:5, 9].tolist() == [1.0] * 5  # every carbon sp3
    assert mol["x"][:5, 10].tolist() == [2, 1, 2, 1, 2]  # CH2, bridgehead CH, CH2, bridgehead CH, CH2


def test_complete_graph_edges_bond_types_and_distances(five):
    hcn = molecule(five, 5)
    graphs = CompleteGraphs(five, five.y, torch.tensor([hcn["row"]]))
    data = graphs[0]
    assert data.edge_index.tolist() == [[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]]
    assert data.x.shape == (3, 11) and data.edge_attr.shape == (6, 5)
    onehot = data.edge_attr[:, :4].tolist()
    assert onehot == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # Distances from the CSV's coordinates (Angstrom): C#N 1.152, C-H 1.067, N...H 2.218.
    c, n, h = (-0.0133239314, 1.1324657151, 0.0082758861), (0.0023107217, -0.0191585871, 0.0019287305), \
        (-0.0278026991, 2.1989492963, 0.0141537903)
    expected = [math.dist(c, n), math.dist(c, h), math.dist(n, c), math.dist(n, h), math.dist(h, c), math.dist(h, n)]
    assert data.edge_attr[:, 4].tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[:2] == pytest.approx([1.152, 1.067], abs=1e-3)  # B3LYP HCN: C#N, C-H

    methane = CompleteGraphs(five, five.y, torch.tensor([molecule(five, 1)["row"]]))[0]
    assert methane.edge_index.shape == (2, 20)  # 5 * 4 ordered pairs, no self loops
    assert bool((methane.edge_index[0] != methane.edge_index[1]).all())
    assert methane.edge_attr[:, :4].sum() == 8  # 4 C-H bonds, both directions


def reference_batches(table, targets, rows, batch_size, shuffle, generator=None):
    """PyG's DataLoader over the per-molecule graphs: what the tensor-built batches must equal."""
    from torch_geometric.loader import DataLoader

    return DataLoader(CompleteGraphs(table, targets, rows), batch_size=batch_size, shuffle=shuffle, generator=generator)


def assert_same_batch(ours, theirs):
    for key in ("x", "pos", "edge_index", "edge_attr", "y", "batch", "ptr"):
        a, b = getattr(ours, key), getattr(theirs, key)
        assert a.shape == b.shape and a.dtype == b.dtype, key
        assert torch.allclose(a, b, atol=1e-6) if a.is_floating_point() else torch.equal(a, b), key
    assert ours.num_graphs == theirs.num_graphs


def test_tensor_built_batches_equal_pyg_collated_complete_graphs(five):
    """Batches cut with tensor ops from the whole table (graph_batches) equal PyG's DataLoader
    over the per-molecule graphs: nodes, complete-graph edges in order, bond one-hot, distances,
    targets, batch vector; with the same order for the same shuffling generator."""
    table = five.select([0, 1, 2, 3, 4, 0, 2, 4, 3])  # 9 molecules of 3 to 13 atoms
    targets = torch.randn(len(table), len(TARGETS), generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([8, 0, 3, 5, 1, 7, 2])
    for batch_size, shuffle in ((3, False), (4, True), (7, True), (1, False)):
        ours = list(CompleteGraphBatches(table, targets, rows, batch_size, shuffle, torch.Generator().manual_seed(5)))
        theirs = list(reference_batches(table, targets, rows, batch_size, shuffle, torch.Generator().manual_seed(5)))
        assert len(ours) == len(theirs) == len(CompleteGraphBatches(table, targets, rows, batch_size, shuffle))
        for a, b in zip(ours, theirs):
            assert_same_batch(a, b)
    # A generator carries on: the second epoch's order differs from the first, as with a DataLoader.
    batches = CompleteGraphBatches(table, targets, rows, 7, True, torch.Generator().manual_seed(5))
    first, second = next(iter(batches)), next(iter(batches))
    assert not torch.equal(first.y, second.y)


def test_one_atom_molecule_has_no_edges_and_keeps_its_neighbours_offsets(five):
    """Degenerate molecule sizes: a 1-atom graph adds no pair; the next graph's indices still start
    after it (hand-built table: one atom, then HCN)."""
    hcn = molecule(five, 5)
    one = qm9_data.MoleculeTable(
        x=torch.cat([hcn["x"][:1], hcn["x"]]), pos=torch.cat([hcn["pos"][:1], hcn["pos"]]),
        edge_index=hcn["edge_index"], bond_type=torch.tensor(list(hcn["bonds"].values())),
        y=torch.zeros(2, 11, dtype=torch.float64), node_ptr=torch.tensor([0, 1, 4]), edge_ptr=torch.tensor([0, 0, 4]),
        mol_id=torch.tensor([9, 5]), bond_source=torch.zeros(2, dtype=torch.long),
    )
    batch = next(iter(CompleteGraphBatches(one, torch.zeros(2, 11), torch.tensor([0, 1]), 2, False)))
    assert batch.edge_index.tolist() == [[1, 1, 2, 2, 3, 3], [2, 3, 1, 3, 1, 2]]
    assert batch.batch.tolist() == [0, 1, 1, 1] and batch.num_graphs == 2
    assert_same_batch(batch, next(iter(reference_batches(one, torch.zeros(2, 11), torch.tensor([0, 1]), 2, False))))


def test_data_on_device_option(tmp_path, monkeypatch):
    write_qm9pack(tmp_path / "qm9pack", tiny_lines(12))
    problem = build_problem("qm9")
    data = problem.prepare(str(tmp_path), {})
    cpu = torch.device("cpu")
    for value in ("auto", "true", "false"):
        splits = problem.load(data, {"batch_size": 4, "data_on_device": value}, torch.Generator().manual_seed(0), cpu)
        assert sum(b.num_graphs for b, _ in splits.train) == 10
    with pytest.raises(ConfigError, match="data_on_device must be auto, true or false"):
        problem.load(data, {"data_on_device": "gpu"}, torch.Generator(), cpu)
    # auto: on a GPU only when the molecules take at most a quarter of its free memory.
    table, _ = load_molecules(data)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * table.nbytes(), 10**12))
    assert fits_on_device(table, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * table.nbytes() - 1, 10**12))
    assert not fits_on_device(table, torch.device("cuda")) and fits_on_device(table, cpu)


# --------------------------------------------------------------------------- targets and units


def test_targets_in_pyg_units_and_atomization_energies(five):
    y = molecule(five, 1)["y"]  # methane
    expected = {
        "mu": 0.0, "alpha": 13.21, "homo": -0.3877 * HAR2EV, "lumo": 0.1171 * HAR2EV, "r2": 35.3641,
        "zpve": 0.044749 * HAR2EV, "Cv": 6.469,
        # U0 - (E_C + 4 E_H) with QM9's atomic references (Hartree), in eV.
        "U0": (-40.47893 - (-37.846772 + 4 * -0.500273)) * HAR2EV,
        "U": (-40.476062 - (-37.845355 + 4 * -0.498857)) * HAR2EV,
        "H": (-40.475117 - (-37.844411 + 4 * -0.497912)) * HAR2EV,
        "G": (-40.498597 - (-37.861317 + 4 * -0.510927)) * HAR2EV,
    }
    for k, target in enumerate(TARGETS):
        assert float(y[k]) == pytest.approx(expected[target], abs=1e-5), target
    # PyG's atomization energies (MoleculeNet's kcal/mol x KCALMOL2EV) agree within 0.02 meV.
    for k, target in enumerate(("U0", "U", "H", "G")):
        assert float(y[TARGETS.index(target)]) == pytest.approx(MOLECULENET_METHANE[15 + k] * KCALMOL2EV, abs=2e-5)
    # Reported in meV (x1000) for HOMO, LUMO, ZPVE, U0, U, H, G, as Nash-MTL.
    report = dict(zip(TARGETS, REPORT_SCALE.tolist()))
    assert [t for t, s in report.items() if s == 1000.0] == ["homo", "lumo", "zpve", "U0", "U", "H", "G"]
    assert float(y[2] * REPORT_SCALE[2]) == pytest.approx(-10549.86, abs=0.01)


def write_pyg_qm9(root: Path) -> None:
    """PyG's processed QM9 file with methane, y built as PyG's ``process`` builds it from
    MoleculeNet's row (19 columns, energies in eV)."""
    from torch_geometric.data import Data, InMemoryDataset
    from torch_geometric.datasets.qm9 import conversion

    raw = torch.tensor([MOLECULENET_METHANE])
    y = torch.cat([raw[:, 3:], raw[:, :3]], dim=-1) * conversion.view(1, -1)
    edge_index = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4], [1, 2, 3, 4, 0, 0, 0, 0]])
    x = torch.tensor([feature_row("C", num_hs=4)] + [feature_row("H")] * 4)  # PyG: hybridization zeros
    pos = torch.tensor([[-0.0127, 1.0858, 0.0080], [0.0022, -0.0060, 0.0020], [1.0117, 1.4638, 0.0003],
                        [-0.5408, 1.4475, -0.8766], [-0.5238, 1.4379, 0.9064]])
    data = Data(x=x, z=torch.tensor([6, 1, 1, 1, 1]), pos=pos, edge_index=edge_index,
                edge_attr=torch.eye(4)[torch.zeros(8, dtype=torch.long)], y=y, name="gdb_1", idx=0)
    others = [Data(x=x, z=data.z, pos=pos, edge_index=edge_index, edge_attr=data.edge_attr, y=y + k, name=f"gdb_{k + 1}", idx=k)
              for k in range(1, 4)]
    (root / "processed").mkdir(parents=True)
    InMemoryDataset.save([data, *others], str(root / "processed" / "data_v3.pt"))


def test_pyg_source_gives_the_same_targets_as_qm9pack(tmp_path, five):
    write_pyg_qm9(tmp_path / "QM9")
    data = qm9_data.resolve_source("auto", str(tmp_path))
    assert data["source"] == "pyg"
    table, rows = load_molecules(data)
    assert sorted(table.mol_id.tolist()) == [1, 2, 3, 4] and sum(len(v) for v in rows.values()) == 4
    methane_pyg = table.y[int((table.mol_id == 1).nonzero()[0, 0])]
    methane_csv = molecule(five, 1)["y"]
    # Same targets, same units; float32 storage in PyG and its kcal/mol route: < 0.1 meV apart.
    assert methane_pyg.tolist() == pytest.approx(methane_csv.tolist(), abs=1e-4)
    graph = CompleteGraphs(table, table.y, rows["train"][:1])[0]
    assert graph.edge_attr.shape == (20, 5) and graph.x.shape == (5, 11)
    # prepare records the training std of PyG's molecules too (once, on the driver).
    prepared = build_problem("qm9").prepare(str(tmp_path), {})
    by_hand = dict(zip(TARGETS, fit_scaling(table.y * REPORT_SCALE, rows["train"])[1].tolist()))
    assert prepared["source"] == "pyg" and prepared["target_std"] == {"subset": 0, "split_seed": 0, "std": by_hand}


# --------------------------------------------------------------------------- split


def test_split_is_the_002_authors_and_subsets_keep_proportions():
    split = split_rows(130_831, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 110_831, "val": 10_000, "test": 10_000}
    # Gabriel-SGama/UnitScal_vs_SMTOs datasets/QM9/indices.txt begins 40501, 98762, 109143, 49861, 14415.
    assert split["test"][:5].tolist() == [40501, 98762, 109143, 49861, 14415]
    together = np.concatenate(list(split.values()))
    assert len(np.unique(together)) == 130_831 and together.min() == 0 and together.max() == 130_830

    sub = subset_split(split, 2000)
    assert {k: len(v) for k, v in sub.items()} == {"train": 1694, "val": 153, "test": 153}  # 10k/130,831 each
    for k in sub:
        assert sub[k].tolist() == split[k][: len(sub[k])].tolist()  # a molecule keeps its split
    assert subset_split(split, 0) == split and subset_split(split, 200_000) == split

    small = split_rows(12, seed=0)
    assert {k: len(v) for k, v in small.items()} == {"train": 10, "val": 1, "test": 1}
    assert split_rows(130_831, seed=1)["test"][:5].tolist() != split["test"][:5].tolist()
    with pytest.raises(DataError):
        subset_split(small, 2)


# --------------------------------------------------------------------------- scaling and MAE


def test_scaling_uses_training_rows_only():
    y = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0], [100.0, -7.0]], dtype=torch.float64)
    mean, std = fit_scaling(y, torch.tensor([0, 1, 2, 3]))
    assert mean.tolist() == [2.5, 5.0]
    assert std[0].item() == pytest.approx(math.sqrt(5 / 3))  # unbiased: (2.25+0.25+0.25+2.25)/3
    assert std[1].item() == 1.0  # a constant target is left unscaled


def test_mae_is_reported_in_original_units():
    problem = QM9(target_std={t: float(k + 1) for k, t in enumerate(TARGETS)})
    acc = problem.new_metrics()
    outputs = {t: torch.tensor([[0.5], [-1.0]]) for t in TARGETS}
    targets = {t: torch.tensor([-0.5, -1.0]) for t in TARGETS}
    acc.update(outputs, targets)
    acc.update({t: torch.tensor([[2.0]]) for t in TARGETS}, {t: torch.tensor([0.0]) for t in TARGETS})
    values = acc.compute()
    for k, t in enumerate(TARGETS):
        assert values[t]["mae"] == pytest.approx((k + 1) * (1.0 + 0.0 + 2.0) / 3)  # |err| x std, over 3 molecules
    assert problem.higher_is_better()["homo"] == {"mae": False}


def test_target_std_is_fixed_when_built():
    """Issue 15: the std is a constructor argument, checked there, and cannot be reassigned; a
    problem built without it trains but refuses to score, pointing to ``resolved``."""
    std = {t: float(k + 1) for k, t in enumerate(TARGETS)}
    problem = QM9(std, subset=9, split_seed=2)
    assert (problem.target_std, problem.subset, problem.split_seed) == (std, 9, 2)
    with pytest.raises(AttributeError):
        problem.target_std = {t: 1.0 for t in TARGETS}
    problem.target_std["mu"] = 100.0  # a copy: the problem's own is untouched
    assert problem.target_std == std
    with pytest.raises(ConfigError, match="needs the 11 QM9 targets"):
        QM9({"mu": 1.0})
    with pytest.raises(ConfigError, match="finite and positive"):
        QM9({**std, "Cv": 0.0})
    acc = QM9().new_metrics()
    with pytest.raises(ConfigError, match=r"problem\.resolved\(data, config\)") as err:
        acc.update({t: torch.zeros(1, 1) for t in TARGETS}, {t: torch.zeros(1) for t in TARGETS})
    assert "\n" not in str(err.value)


def test_load_normalizes_with_train_statistics_and_mae_of_the_mean_prediction(tmp_path):
    write_qm9pack(tmp_path / "qm9pack", tiny_lines(12))
    built = build_problem("qm9")
    data = built.prepare(str(tmp_path), {})
    assert data["source"] == "qm9pack" and data["num_molecules"] == 12
    problem = built.resolved(data, {"batch_size": 5})
    splits = problem.load(data, {"batch_size": 5}, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert splits.sizes == {"train": 10, "val": 1, "test": 1} and splits.source == "qm9pack"

    frame = read_qm9pack(tmp_path / "qm9pack")
    table = featurize_qm9pack(frame)
    y = table.y * REPORT_SCALE
    split = split_rows(12, seed=0)
    train = y[split["train"]]
    # The std prepare records (and the resolved problem reports with) is the training rows' one,
    # as fit_scaling gives it by hand; load's check of it passed above.
    by_hand = dict(zip(TARGETS, fit_scaling(y, torch.from_numpy(split["train"]))[1].tolist()))
    assert data["target_std"] == {"subset": 0, "split_seed": 0, "std": by_hand}
    assert problem.target_std == by_hand and built.target_std is None
    # Normalized training targets have mean 0 and std 1.
    seen = torch.cat([torch.stack([targets[t] for t in TARGETS], 1) for _, targets in splits.train])
    assert seen.mean(0).abs().max() < 1e-5 and (seen.std(0) - 1).abs().max() < 1e-5
    # Predicting 0 (= the training mean) scores the validation MAE |y - mean_train| in report units.
    acc = problem.new_metrics()
    for batch, targets in splits.val:
        acc.update({t: torch.zeros(batch.num_graphs, 1) for t in TARGETS}, targets)
    expected = (y[split["val"]] - train.mean(0)).abs().mean(0)
    for k, t in enumerate(TARGETS):
        assert acc.compute()[t]["mae"] == pytest.approx(float(expected[k]), rel=1e-4)


def test_resolved_problem_is_unchanged_by_load_and_refuses_other_data(tmp_path):
    """Issue 15: the driver's problem (prepare, then resolved) and a trial's agree; load changes
    neither tasks nor std, and refuses a subset, split seed or data the std was not built for."""
    write_qm9pack(tmp_path / "qm9pack", tiny_lines(12))
    config = {"subset": 9, "batch_size": 4}
    data = build_problem("qm9").prepare(str(tmp_path), config)
    problem = build_problem("qm9").resolved(data, config)
    assert (problem.subset, problem.split_seed) == (9, 0) and problem.target_std == data["target_std"]["std"]
    assert problem.resolved(data, config) is problem
    std = problem.target_std
    trial = RunSettings("qm9", {}, data).problem_for({"method": "ew", "seed": 0, **config})  # what a trial builds
    assert (trial.target_std, trial.subset, trial.split_seed) == (std, 9, 0)
    problem.load(data, config, torch.Generator(), torch.device("cpu"))
    assert problem.target_std == std
    # The std of subset 9 is another than that of all 12 molecules (so the checks below can fail).
    whole = build_problem("qm9").resolved(data, {"subset": 0})
    assert whole.target_std != std and whole.subset == 0
    cpu = torch.device("cpu")
    for other in ({"subset": 10}, {"subset": 9, "split_seed": 1}):
        with pytest.raises(ConfigError, match=r"built for subset=9 split_seed=0.*problem\.resolved") as err:
            problem.load(data, {**config, **other}, torch.Generator(), cpu)
        assert "\n" not in str(err.value)
    # Data whose molecules differ (every property of one molecule shifted) gives another std.
    lines = tiny_lines(12)
    lines[3] = variant(105, lines[3], 0.5)
    other_data = build_problem("qm9").prepare(str(write_qm9pack(tmp_path / "other" / "qm9pack", lines).parent), config)
    assert other_data["target_std"]["std"] != std
    with pytest.raises(ConfigError, match=r"training std of \w+ of .*problem\.resolved") as err:
        problem.load(other_data, config, torch.Generator(), cpu)
    assert "\n" not in str(err.value)


def test_resolved_computes_the_std_that_prepare_would_for_another_subset(tmp_path):
    """Data prepared for another subset (or split seed): resolved loads the molecules and gets the
    std that prepare records for that config."""
    write_qm9pack(tmp_path / "qm9pack", tiny_lines(12))
    data = build_problem("qm9").prepare(str(tmp_path), {})
    for config in ({"subset": 9}, {"split_seed": 3}):
        prepared = build_problem("qm9").prepare(str(tmp_path), config)
        assert prepared["target_std"]["std"] != data["target_std"]["std"]
        problem = build_problem("qm9").resolved(data, config)
        assert problem.target_std == prepared["target_std"]["std"]
        assert (problem.subset, problem.split_seed) == (config.get("subset", 0), config.get("split_seed", 0))


# --------------------------------------------------------------------------- cache


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    folder = write_qm9pack(tmp_path / "qm9pack", tiny_lines(12))
    data = {"source": "qm9pack", "qm9pack_dir": str(folder), "cache_dir": str(tmp_path / "cache")}
    first, rows = load_molecules(data, subset=9)
    files = list((tmp_path / "cache").glob("qm9pack-v*-rows9-*.pt"))
    assert len(files) == 1

    def no_featurizing(*args, **kwargs):
        raise AssertionError("featurized again instead of reading the cache")

    monkeypatch.setattr(qm9_data, "featurize_qm9pack", no_featurizing)
    second, rows2 = load_molecules(data, subset=9)
    for name in ("x", "pos", "edge_index", "bond_type", "y", "node_ptr", "edge_ptr", "mol_id", "bond_source"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert all(torch.equal(rows[k], rows2[k]) for k in rows)
    # Another subset is featurized unless the whole set is cached, which then serves every subset.
    with pytest.raises(AssertionError, match="featurized again"):
        load_molecules(data, subset=6)
    monkeypatch.undo()
    monkeypatch.setenv("SEARCHER_OFFLINE", "1")
    whole, _ = load_molecules(data)
    monkeypatch.setattr(qm9_data, "featurize_qm9pack", no_featurizing)
    part, part_rows = load_molecules(data, subset=6)
    assert len(part) == 6 and set(part.mol_id.tolist()) <= set(whole.mol_id.tolist())


# --------------------------------------------------------------------------- model


def test_model_forward_backward_and_size(five):
    from torch_geometric.loader import DataLoader

    problem = QM9()
    model = problem.build_model({})
    # Nash-MTL's Net: one NNConv (with its edge net) and one GRU shared by the 3 steps. By hand:
    # lin0 11*64+64, edge net 5*128+128 + 128*4096+4096, NNConv root 64*64 + bias 64,
    # GRU 3*(2*64*64 + 2*64), Set2Set LSTM(128->64) 4*(128*64 + 64*64 + 2*64), lin1 128*64+64.
    by_hand = 768 + 768 + 528_384 + 4096 + 64 + 24_960 + 49_664 + 8256
    assert sum(p.numel() for p in model.encoder.parameters()) == by_hand
    assert all(sum(p.numel() for p in h.parameters()) == 65 for h in model.heads.values())

    graphs = CompleteGraphs(five, (five.y - five.y.mean(0)) / five.y.std(0), torch.arange(len(five)))
    batch = next(iter(DataLoader(graphs, batch_size=5)))
    z = model.encode(batch)
    assert z.shape == (5, 64) and bool((z >= 0).all())  # after Linear + ReLU
    outputs = model.decode(z)
    assert list(outputs) == list(TARGETS) and all(o.shape == (5, 1) for o in outputs.values())
    loss = sum(problem.loss(t, outputs[t], batch.y[:, k]) for k, t in enumerate(TARGETS))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.encoder.edge_net[2].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="no dropout"):
        problem.build_model({"dropout": 0.1})


def test_encoder_matches_nnconv_running_its_edge_network_each_step(five):
    """Hoisting the edge network out of the 3 steps changes neither outputs nor gradients."""
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import NNConv

    torch.manual_seed(0)
    encoder = QM9().build_model({}).encoder
    reference = NNConv(64, 64, encoder.edge_net, aggr="mean")  # Nash-MTL's layer, same edge net
    reference.lin = encoder.conv.lin
    reference.bias = encoder.conv.bias
    batch = next(iter(DataLoader(CompleteGraphs(five, five.y, torch.arange(len(five))), batch_size=5)))

    def nash_forward(data):
        out = torch.relu(encoder.lin0(data.x))
        h = out.unsqueeze(0)
        for _ in range(3):
            m = torch.relu(reference(out, data.edge_index, data.edge_attr))
            out, h = encoder.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        return torch.relu(encoder.lin1(encoder.set2set(out, data.batch)))

    ours = encoder(batch)
    theirs = nash_forward(batch)
    assert torch.allclose(ours, theirs, atol=1e-6)
    grad_ours = torch.autograd.grad(ours.sum(), encoder.edge_net[0].weight)[0]
    grad_theirs = torch.autograd.grad(theirs.sum(), encoder.edge_net[0].weight)[0]
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-5) and grad_ours.abs().sum() > 0


# --------------------------------------------------------------------------- sources and CLI


def test_malformed_csv_is_a_one_line_data_error(tmp_path):
    no_xyz = write_qm9pack(tmp_path / "a", [ROWS[1]])
    (no_xyz / "qm9_part1.csv").write_text(HEADER.replace("XYZ_Ang", "Coordinates") + "\n" + ROWS[1] + "\n")
    bad_xyz = write_qm9pack(tmp_path / "b", [ROWS[1].replace("1.0858041578", "1.08x")])
    for folder in (no_xyz, bad_xyz):
        with pytest.raises(DataError) as err:
            featurize_qm9pack(read_qm9pack(folder))
        assert "\n" not in str(err.value)


def test_an_unreadable_cache_file_is_rebuilt(tmp_path):
    folder = write_qm9pack(tmp_path / "qm9pack", tiny_lines(6))
    data = {"source": "qm9pack", "qm9pack_dir": str(folder), "cache_dir": str(tmp_path / "cache")}
    first, _ = load_molecules(data)
    (cache,) = (tmp_path / "cache").glob("*.pt")
    cache.write_bytes(b"truncated")
    again, _ = load_molecules(data)
    assert torch.equal(first.x, again.x) and cache.stat().st_size > 100


def test_missing_data_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(qm9_data, "installed_qm9pack_dir", lambda: None)
    with pytest.raises(DataError) as err:
        qm9_data.resolve_source("auto", str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "qm9pack" in message and str(tmp_path / "QM9") in message
    with pytest.raises(DataError, match="unknown QM9 source"):
        qm9_data.resolve_source("sdf", str(tmp_path))


def test_cli_trains_one_epoch_on_a_tiny_qm9pack(tmp_path, capsys):
    from searcher.cli import main

    write_qm9pack(tmp_path / "qm9pack", tiny_lines(12))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code = main(["train", "--space", "qm9", "--method", "ew", "--max-epochs", "1", "--param", "subset=9",
                 "--data-dir", str(tmp_path), "--tracking-uri", uri])
    assert code == 0, capsys.readouterr().err
    assert list((tmp_path / "qm9_cache").glob("qm9pack-v*-rows9-*.pt"))
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["qm9"]).iloc[0]
    assert run["params.batch_size"] == "120" and run["params.lr_decay"] == "1.0"
    assert run["tags.searcher.data_source"] == "qm9pack"
    for t in TARGETS:
        value = run[f"metrics.best/test/{t}/mae"]
        assert value == value and value > 0  # a number, in report units


def test_space():
    from spaces import SPACES
    from trainables.methods import METHODS

    space = SPACES.get("qm9")
    assert space.problem == "qm9" and space.max_epochs == 300
    lr = space.common["lr"]
    assert lr.grid == (0.005, 0.001, 0.0005, 0.0001) and (lr.low, lr.high, lr.log) == (0.0001, 0.005, True)
    assert space.constants["batch_size"] == 120
    # Nash-MTL's (and the `002` authors') ReduceLROnPlateau(mode min, factor 0.7, patience 5, min_lr 1e-5)
    plateau = {"lr_schedule": "plateau", "plateau_factor": 0.7, "plateau_patience": 5, "plateau_min_lr": 1e-5}
    assert {k: space.constants[k] for k in plateau} == plateau
    preset = SPACES.get("qm9_nashmtl")
    assert {k: preset.constants[k] for k in plateau} == plateau and not preset.common
    assert (preset.constants["optimizer"], preset.constants["lr"]) == ("adam", 1e-3)
    assert "nash-mtl" in preset.reproduces and preset.deviations
    assert space.constants["weight_decay"] == 0.0 and space.constants["dropout"] == 0.0
    aux = space.method_ranges("auto_lambda")["aux_lr_scale"]
    assert aux.grid == (100.0, 10.0, 1.0) and (aux.low, aux.high, aux.log) == (1.0, 100.0, True)
    assert {k: r.grid for k, r in space.method_ranges("famo").items()} == {"gamma": (0.01, 0.001, 0.0001)}
    assert space.method_ranges("single_task", TARGETS)["task"].grid == tuple(TARGETS)
    for m in space.default_methods:
        METHODS.get(m)


@pytest.mark.skipif(qm9_data.installed_qm9pack_dir() is None, reason="qm9pack is not installed")
def test_real_qm9pack_subset(tmp_path):
    start = time.perf_counter()
    data = build_problem("qm9").prepare(str(tmp_path), {"qm9_source": "qm9pack", "subset": 40})
    assert data["num_molecules"] == 130_831
    table, rows = load_molecules(data, subset=40)
    assert {k: len(v) for k, v in rows.items()} == {"train": 34, "val": 3, "test": 3}  # round(40 * 10k / 130,831) = 3
    chosen = np.sort(np.concatenate(list(subset_split(split_rows(130_831), 40).values())))
    assert table.mol_id.tolist() == read_qm9pack(Path(data["qm9pack_dir"]))["Index"].iloc[chosen].tolist()
    assert float(table.x[:, 5].max()) <= 9 and table.y.shape == (40, 11)
    assert time.perf_counter() - start < 30


def test_source_option_pins_the_source_the_runs_logged(tmp_path):
    """`searcher rerun` / `confirm` pin ``qm9_source`` from the run's logged data source."""
    write_qm9pack(tmp_path / "qm9pack", tiny_lines(12))
    problem = build_problem("qm9")
    source = problem.prepare(str(tmp_path), {"qm9_source": "auto", "subset": 9})["source"]
    assert source == "qm9pack" and problem.source_option(source) == {"qm9_source": "qm9pack"}
    assert problem.prepare(str(tmp_path), {"qm9_source": "qm9pack", "subset": 9})["source"] == source
