"""QM9 molecules for the Nash-MTL / `002` §3.4 benchmark: sources, featurization, cache, split.

Two sources give the same 130,831 molecules (in the same order, by GDB index), the same 11
targets in the same units, and graphs with the same 11 node and 5 edge features:

- ``pyg``: ``torch_geometric.datasets.QM9`` (what Nash-MTL and the `002` authors load), used
  when ``<data dir>/QM9`` holds it, or downloaded there on the driver when the machine is
  online. Its ``y`` has 19 columns in eV (energies) with the atomization energies in columns
  12-15; we take columns ``PYG_TARGET_INDEX`` (Nash-MTL's ``target_idx``).
- ``qm9pack``: the CSV copy of QM9 that the ``qm9pack`` package ships (coordinates, elements,
  GDB SMILES, properties in atomic units). Used offline. Bonds come from the geometry with
  RDKit (``rdDetermineBonds.DetermineBonds``, 124,021 molecules); where that fails (6,792,
  mostly strained rings whose geometric connectivity has an extra bond), from the GDB SMILES
  mapped onto the geometry; else (18) connectivity only, single bonds and no aromatic or
  hybridization features. Energies are converted to PyG's units:
  Hartree x ``HAR2EV``; atomization energies = E - sum of the atoms' reference energies
  (PyG's ``atomrefs``, QM9's atomref table in eV).

Differences that remain between the two sources:
- atomization energies differ by < 5e-7 relative (< 0.05 meV): PyG converts MoleculeNet's
  kcal/mol values, we convert Hartree directly;
- PyG's processing reads the SDF with ``sanitize=False``, which (with current RDKit) leaves
  the aromatic and sp/sp2/sp3 node features and the aromatic bond type at zero for every
  molecule (pyg-team/pytorch_geometric#8370); from qm9pack they are derived by RDKit
  (sanitized molecule), and bonds come from the geometry rather than from the SDF.

Graphs are stored once per molecule with their bonds only (``MoleculeTable``, cached on disk
for qm9pack) and made complete when a molecule is read (``CompleteGraphs``): every ordered
pair of atoms is an edge with 5 features = bond one-hot (single, double, triple, aromatic;
zeros for non-bonded pairs) + the distance in Angstrom, as Nash-MTL's ``Complete()`` and
``T.Distance(norm=False)`` do (experiments/quantum_chemistry/utils.py).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import random
import socket
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from trainables.errors import DataError
from trainables.problems.mnist_digits import offline_forced

TARGETS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "Cv")
#: Columns of PyG's QM9 ``y`` (Nash-MTL's ``target_idx``): U0..G are the atomization energies 12-15.
PYG_TARGET_INDEX = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)
#: Targets stored in eV (PyG's unit) and reported in meV (Nash-MTL's ``multiply_indx``: x1000).
MEV_TARGETS = ("homo", "lumo", "zpve", "U0", "U", "H", "G")
REPORT_SCALE = torch.tensor([1000.0 if t in MEV_TARGETS else 1.0 for t in TARGETS], dtype=torch.float64)

ELEMENTS = ("H", "C", "N", "O", "F")  # PyG's one-hot order of atom types
NUM_NODE_FEATURES = 11  # one-hot H,C,N,O,F, atomic number, aromatic, sp, sp2, sp3, num_hs
NUM_BOND_TYPES = 4  # single, double, triple, aromatic
NUM_EDGE_FEATURES = NUM_BOND_TYPES + 1  # + distance

#: The standard split (Nash-MTL, `002`): 10k test, 10k validation, the rest (110,831) train.
FULL_SIZE = 130_831
HOLDOUT = 10_000

QM9PACK_PARTS = "qm9_part*.csv"
#: qm9pack's column of each target; the energies are in Hartree.
QM9PACK_COLUMNS = {
    "mu": "Dipole_debye", "alpha": "Polarizability_bohr3", "homo": "HOMO_au", "lumo": "LUMO_au",
    "r2": "R2_bohr2", "zpve": "ZPVE_au", "U0": "InternalEnergy_0K_au", "U": "InternalEnergy_298K_au",
    "H": "Enthalphy_298K_au", "G": "GibbsFreeEnergy_298K_au", "Cv": "Heatcapacity_Cv_cal_mol_K",
}
HARTREE_TARGETS = ("homo", "lumo", "zpve")
#: Target -> PyG QM9 column of the total energy whose atomic references (``atomrefs``) apply.
ATOMIZATION_TARGETS = {"U0": 7, "U": 8, "H": 9, "G": 10}
#: Bump when the featurization changes: old cache files are then ignored.
FEATURIZER_VERSION = 1
#: How a molecule's bonds were found (``MoleculeTable.bond_source``).
BOND_SOURCES = ("geometry", "smiles", "connectivity", "pyg")

DEFAULT_PYG_ROOT = Path(os.environ.get("SEARCHER_DATA", Path.home() / ".cache" / "searcher" / "data")) / "QM9"
DEFAULT_CACHE = Path.home() / ".cache" / "searcher" / "qm9"



# --------------------------------------------------------------------------- the table


@dataclass
class MoleculeTable:
    """Molecules with their bonds, concatenated (PyG ``InMemoryDataset`` style).

    Atom ``a`` of molecule ``i`` is row ``node_ptr[i] + a``; ``edge_index`` holds each bond in
    both directions with indices local to its molecule, and ``bond_type`` (0-3) its type.
    ``y`` holds the 11 targets in PyG's units (float64).
    """

    x: torch.Tensor  # (atoms, 11) float32
    pos: torch.Tensor  # (atoms, 3) float32, Angstrom
    edge_index: torch.Tensor  # (2, directed bonds) int64, local
    bond_type: torch.Tensor  # (directed bonds,) int64
    y: torch.Tensor  # (molecules, 11) float64
    node_ptr: torch.Tensor  # (molecules + 1,) int64
    edge_ptr: torch.Tensor  # (molecules + 1,) int64
    mol_id: torch.Tensor  # (molecules,) int64: the GDB index (1-based, as dsgdb9nsd_<id>.xyz)
    bond_source: torch.Tensor  # (molecules,) int64: index into BOND_SOURCES

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def select(self, rows: Sequence[int] | np.ndarray | torch.Tensor) -> "MoleculeTable":
        """The molecules ``rows`` (in that order) as a new table."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        atoms, node_ptr = _gather_ranges(self.node_ptr, rows)
        bonds, edge_ptr = _gather_ranges(self.edge_ptr, rows)
        return MoleculeTable(
            x=self.x[atoms], pos=self.pos[atoms], edge_index=self.edge_index[:, bonds],
            bond_type=self.bond_type[bonds], y=self.y[rows], node_ptr=node_ptr, edge_ptr=edge_ptr,
            mol_id=self.mol_id[rows], bond_source=self.bond_source[rows],
        )

    def to(self, device: torch.device | str) -> "MoleculeTable":
        """The same table with every tensor on ``device``."""
        return MoleculeTable(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def nbytes(self) -> int:
        """Memory the table's tensors take."""
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    def save(self, path: Path) -> None:
        """Write atomically (parallel trials may read the cache while one writes it)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["x"] = self.x.to(torch.uint8)  # small non-negative integers: 8x smaller on disk
        state["version"] = torch.tensor(FEATURIZER_VERSION)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "MoleculeTable":
        state = torch.load(path, weights_only=True)
        state.pop("version", None)
        state["x"] = state["x"].float()
        return cls(**state)


def _gather_ranges(ptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element indices of segments ``rows`` of a CSR pointer, and the new pointer."""
    starts, counts = ptr[rows], ptr[rows + 1] - ptr[rows]
    new_ptr = torch.zeros(len(rows) + 1, dtype=torch.long, device=ptr.device)
    new_ptr[1:] = counts.cumsum(0)
    offsets = torch.arange(int(new_ptr[-1]), device=ptr.device) - torch.repeat_interleave(new_ptr[:-1], counts)
    return torch.repeat_interleave(starts, counts) + offsets, new_ptr


# --------------------------------------------------------------------------- split


def holdout_size(n: int) -> int:
    """Test (= validation) size for ``n`` molecules: 10,000 of 130,831, in proportion below."""
    return min(HOLDOUT, max(1, round(n * HOLDOUT / FULL_SIZE)))


def split_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Shuffle ``range(n)`` with ``random.Random(seed)``; test = first k, val = next k, train = rest.

    With seed 0 and the 130,831 molecules this is exactly the `002` authors' split
    (supervised_experiments/loaders/QM9.py, datasets/QM9/indices.txt: 40501, 98762, ...).
    """
    if n < 3:
        raise DataError(f"QM9 needs at least 3 molecules for train/val/test, found {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = holdout_size(n)
    arr = np.asarray(order, dtype=np.int64)
    return {"train": arr[2 * k :], "val": arr[k : 2 * k], "test": arr[:k]}


def subset_split(split: Mapping[str, np.ndarray], subset: int) -> dict[str, np.ndarray]:
    """A seeded subset of ``subset`` molecules with the split's proportions, each part a
    prefix of the full part (a molecule keeps its split)."""
    total = sum(len(v) for v in split.values())
    if subset <= 0 or subset >= total:
        return dict(split)
    if subset < 3:
        raise DataError(f"subset={subset}: QM9 needs at least 3 molecules (one per split)")
    k = holdout_size(subset)
    return {"train": split["train"][: subset - 2 * k], "val": split["val"][:k], "test": split["test"][:k]}


# --------------------------------------------------------------------------- featurization


@functools.lru_cache(maxsize=1)
def _rdkit() -> Any:
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds

    rdBase.DisableLog("rdApp.*")  # what RDLogger.DisableLog re-exports (rdkit's stubs miss the re-export)
    return Chem, rdDetermineBonds


@dataclass
class Featurized:
    """One molecule's node features (n, 11), directed bonds (2, 2b) and their types (2b,)."""

    x: np.ndarray
    edge_index: np.ndarray
    bond_type: np.ndarray
    bond_source: int


def featurize(elements: Sequence[str], positions: np.ndarray, smiles: str | None = None) -> Featurized:
    """PyG QM9's node features and bonds for one molecule given by its geometry.

    Bonds: RDKit's DetermineBonds on the geometry (charge 0); else the SMILES (with
    hydrogens) matched onto the geometric connectivity; else connectivity alone, single
    bonds. Node features as PyG's ``QM9.process``: one-hot type (H,C,N,O,F), atomic number,
    aromatic, sp, sp2, sp3, number of bonded hydrogens.
    """
    Chem, rdDetermineBonds = _rdkit()
    n = len(elements)
    block = f"{n}\n\n" + "\n".join(
        f"{e} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f}" for e, p in zip(elements, positions)  # no exponents: RDKit's XYZ reader
    )
    mol = Chem.MolFromXYZBlock(block)
    if mol is None or mol.GetNumAtoms() != n:
        raise DataError(f"RDKit cannot read the geometry of a molecule with elements {list(elements)}")
    source, atoms_of = 0, None  # atoms_of[i] = the atom of `bonded` that is geometry atom i
    bonded = Chem.Mol(mol)
    try:
        rdDetermineBonds.DetermineBonds(bonded, charge=0)
    except (ValueError, RuntimeError):
        bonded, atoms_of = _bonds_from_smiles(mol, smiles)
        source = 1
        if bonded is None:
            bonded = Chem.Mol(mol)
            rdDetermineBonds.DetermineConnectivity(bonded)
            bonded.UpdatePropertyCache(strict=False)
            source = 2
    if atoms_of is None:
        atoms_of = list(range(n))
    geometry_of = {a: i for i, a in enumerate(atoms_of)}
    rows, cols, types = [], [], []
    for bond in bonded.GetBonds():
        i, j = geometry_of[bond.GetBeginAtomIdx()], geometry_of[bond.GetEndAtomIdx()]
        t = _bond_index(bond, Chem) if source != 2 else 0
        rows += [i, j]
        cols += [j, i]
        types += [t, t]
    edge_index = np.array([rows, cols], dtype=np.int64).reshape(2, -1)
    bond_type = np.array(types, dtype=np.int64)
    order = np.argsort(edge_index[0] * n + edge_index[1], kind="stable")  # PyG's edge order
    edge_index, bond_type = edge_index[:, order], bond_type[order]
    hybrid = Chem.HybridizationType
    x = np.zeros((n, NUM_NODE_FEATURES), dtype=np.float32)
    for i in range(n):
        atom = bonded.GetAtomWithIdx(atoms_of[i])
        x[i, ELEMENTS.index(atom.GetSymbol())] = 1.0
        x[i, 5] = atom.GetAtomicNum()
        if source != 2:
            h = atom.GetHybridization()
            x[i, 6] = float(atom.GetIsAromatic())
            x[i, 7:10] = (h == hybrid.SP, h == hybrid.SP2, h == hybrid.SP3)
    is_h = np.array([e == "H" for e in elements], dtype=np.float32)
    np.add.at(x[:, 10], edge_index[1], is_h[edge_index[0]])  # bonded hydrogens, as PyG's scatter
    return Featurized(x, edge_index, bond_type, source)


def _bond_index(bond: Any, Chem: Any) -> int:
    kinds = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2, Chem.BondType.AROMATIC: 3}
    return kinds.get(bond.GetBondType(), 0)


def _bonds_from_smiles(mol: Any, smiles: str | None) -> tuple[Any, list[int] | None]:
    """The SMILES molecule (sanitized, with H) and, per geometry atom, its atom in it.

    The SMILES graph is matched as a subgraph of the geometric connectivity (which may hold
    an extra, too-long "bond" in strained rings), elements and single bonds only.
    """
    Chem, rdDetermineBonds = _rdkit()
    if not smiles:
        return None, None
    template = Chem.MolFromSmiles(smiles)
    if template is None:
        return None, None
    template = Chem.AddHs(template)
    if template.GetNumAtoms() != mol.GetNumAtoms():
        return None, None
    skeleton = Chem.RWMol(template)
    for bond in skeleton.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
    for atom in skeleton.GetAtoms():
        atom.SetIsAromatic(False)
    skeleton = skeleton.GetMol()
    skeleton.UpdatePropertyCache(strict=False)
    connected = Chem.Mol(mol)
    try:
        rdDetermineBonds.DetermineConnectivity(connected)
    except (ValueError, RuntimeError):
        return None, None
    connected.UpdatePropertyCache(strict=False)
    match = connected.GetSubstructMatch(skeleton)  # match[template atom] = geometry atom
    if len(match) != mol.GetNumAtoms():
        return None, None
    atoms_of = [0] * len(match)
    for template_atom, geometry_atom in enumerate(match):
        atoms_of[geometry_atom] = template_atom
    return template, atoms_of


# --------------------------------------------------------------------------- qm9pack source


def installed_qm9pack_dir() -> Path | None:
    """qm9pack's data folder, found without importing the package (it imports pkg_resources)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if qm9pack_parts(folder) else None


def qm9pack_parts(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob(QM9PACK_PARTS))


def read_qm9pack(folder: Path) -> "Any":
    """The columns we need from qm9pack's part files, in GDB index order (a pandas frame)."""
    import pandas as pd

    columns = ["Index", "SMILES", "Elements", "XYZ_Ang", *QM9PACK_COLUMNS.values()]
    parts = qm9pack_parts(folder)
    if not parts:
        raise DataError(f"no {QM9PACK_PARTS} files in {folder}")
    try:
        frame = pd.concat([pd.read_csv(p, usecols=columns) for p in parts], ignore_index=True)
    except (ValueError, OSError) as err:
        raise DataError(f"cannot read qm9pack CSVs in {folder}: {err}".replace("\n", " ")) from None
    return frame.sort_values("Index", kind="stable").reset_index(drop=True)


_STRIP = str.maketrans("", "", "[]' \"")


def parse_elements(text: str) -> list[str]:
    """qm9pack's ``Elements`` literal, e.g. "['C','H','H','H','H']"."""
    return [e for e in str(text).translate(_STRIP).split(",") if e]


def parse_positions(text: str) -> np.ndarray:
    """qm9pack's ``XYZ_Ang`` literal "[[x,y,z],...]" -> (n, 3); accepts QM9's ``*^`` exponent."""
    tokens = [t for t in str(text).replace("*^", "e").translate(_STRIP).split(",") if t]
    return np.asarray(tokens, dtype=np.float64).reshape(-1, 3)


def qm9pack_targets(frame: "Any", elements: Sequence[Sequence[str]]) -> torch.Tensor:
    """The 11 targets in PyG's units from qm9pack's atomic units (float64, (M, 11))."""
    from torch_geometric.datasets.qm9 import HAR2EV, atomrefs

    counts = np.zeros((len(elements), len(ELEMENTS)))
    for i, els in enumerate(elements):
        for e in els:
            counts[i, ELEMENTS.index(e)] += 1
    y = np.zeros((len(elements), len(TARGETS)))
    for k, target in enumerate(TARGETS):
        values = frame[QM9PACK_COLUMNS[target]].to_numpy(dtype=np.float64)
        if target in HARTREE_TARGETS:
            values = values * HAR2EV
        elif target in ATOMIZATION_TARGETS:
            reference = counts @ np.asarray(atomrefs[ATOMIZATION_TARGETS[target]], dtype=np.float64)
            values = values * HAR2EV - reference
        y[:, k] = values
    return torch.from_numpy(y)


def featurize_qm9pack(frame: "Any", progress: bool = False) -> MoleculeTable:
    """Featurize every row of a qm9pack frame (``read_qm9pack``)."""
    xs, positions, edges, types, sources, elements = [], [], [], [], [], []
    start = time.perf_counter()
    for i, row in enumerate(frame.itertuples(index=False)):
        try:
            els, pos = parse_elements(row.Elements), parse_positions(row.XYZ_Ang)
        except ValueError:
            raise DataError(f"malformed qm9pack row for molecule {row.Index}: unreadable XYZ_Ang") from None
        if len(els) != len(pos) or any(e not in ELEMENTS for e in els):
            raise DataError(f"malformed qm9pack row for molecule {row.Index}: elements {els}, {len(pos)} positions")
        f = featurize(els, pos, row.SMILES)
        xs.append(f.x)
        positions.append(pos)
        edges.append(f.edge_index)
        types.append(f.bond_type)
        sources.append(f.bond_source)
        elements.append(els)
        if progress and (i + 1) % 20000 == 0:
            print(f"  featurized {i + 1}/{len(frame)} molecules ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    node_counts = torch.tensor([len(x) for x in xs], dtype=torch.long)
    edge_counts = torch.tensor([e.shape[1] for e in edges], dtype=torch.long)
    return MoleculeTable(
        x=torch.from_numpy(np.concatenate(xs)) if xs else torch.zeros(0, NUM_NODE_FEATURES),
        pos=torch.from_numpy(np.concatenate(positions)).float() if positions else torch.zeros(0, 3),
        edge_index=torch.from_numpy(np.concatenate(edges, axis=1)) if edges else torch.zeros(2, 0, dtype=torch.long),
        bond_type=torch.from_numpy(np.concatenate(types)) if types else torch.zeros(0, dtype=torch.long),
        y=qm9pack_targets(frame, elements),
        node_ptr=torch.cat([torch.zeros(1, dtype=torch.long), node_counts.cumsum(0)]),
        edge_ptr=torch.cat([torch.zeros(1, dtype=torch.long), edge_counts.cumsum(0)]),
        mol_id=torch.tensor(frame["Index"].to_numpy(dtype=np.int64)),
        bond_source=torch.tensor(sources, dtype=torch.long),
    )


def _fingerprint(folder: Path) -> str:
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in qm9pack_parts(folder)]
    return f"v{FEATURIZER_VERSION}|" + "|".join(parts)


def cache_path(cache_dir: Path, folder: Path, rows: np.ndarray | None) -> Path:
    """The cache file of the molecules ``rows`` (None: all) of the qm9pack CSVs in ``folder``."""
    digest = hashlib.sha1(_fingerprint(folder).encode())
    if rows is not None:
        digest.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    name = "all" if rows is None else f"rows{len(rows)}"
    return Path(cache_dir) / f"qm9pack-v{FEATURIZER_VERSION}-{name}-{digest.hexdigest()[:16]}.pt"


def load_qm9pack(folder: Path, cache_dir: Path, rows: np.ndarray | None, progress: bool = False) -> MoleculeTable:
    """Molecules ``rows`` (sorted indices into the GDB-ordered CSV rows; None = all), from the
    cache when there, else featurized with RDKit and cached."""
    full = _read_cache(cache_path(cache_dir, folder, None))
    if full is not None:
        return full if rows is None else full.select(rows)
    path = cache_path(cache_dir, folder, rows)
    cached = _read_cache(path)
    if cached is not None:
        return cached
    frame = read_qm9pack(folder)
    if rows is not None:
        frame = frame.iloc[np.asarray(rows)]
    if progress:
        print(f"searcher: featurizing {len(frame)} QM9 molecules with RDKit (once; cached in {path})", file=sys.stderr)
    table = featurize_qm9pack(frame, progress=progress)
    table.save(path)
    return table


def _read_cache(path: Path) -> MoleculeTable | None:
    """A cached table, or None when absent or unreadable (it is then rebuilt)."""
    if not path.exists():
        return None
    try:
        return MoleculeTable.load(path)
    except Exception:  # noqa: BLE001 - torch.load of a damaged file raises many kinds
        return None


def count_qm9pack(folder: Path) -> int:
    """Number of molecules in the CSVs (counted without parsing them)."""
    import pandas as pd

    return int(sum(len(pd.read_csv(p, usecols=["Index"])) for p in qm9pack_parts(folder)))


# --------------------------------------------------------------------------- PyG source


def pyg_qm9_present(root: Path) -> bool:
    """Does ``root`` hold PyG's QM9 (its processed file, or the raw files it processes)?"""
    root = Path(root)
    raw = [root / "raw" / f for f in ("gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt")]
    return (root / "processed" / "data_v3.pt").exists() or all(p.exists() for p in raw) or (root / "raw" / "qm9_v3.pt").exists()


def open_pyg_qm9(root: Path, download: bool = False) -> Any:
    """``torch_geometric.datasets.QM9`` at ``root``; with ``download=False`` it never downloads
    (a processed file alone is enough)."""
    from torch_geometric.datasets import QM9

    if download:
        return QM9(str(root))

    class LocalQM9(QM9):
        def _download(self) -> None:
            if not Path(self.processed_paths[0]).exists():
                super()._download()

        def download(self) -> None:
            raise DataError(f"PyG QM9 not found under {root} (offline trials never download)")

    try:
        return LocalQM9(str(root))
    except (OSError, RuntimeError, EOFError) as err:
        raise DataError(f"cannot read PyG QM9 under {root}: {err}".replace("\n", " ")) from None


def table_from_pyg(dataset: Any) -> MoleculeTable:
    """PyG's in-memory storage as a table: targets ``PYG_TARGET_INDEX``, bond one-hot -> type."""
    data, slices = dataset._data, dataset.slices
    n = int(data.y.shape[0])
    mol_id = data.idx.long() + 1 if "idx" in data else torch.arange(1, n + 1)
    return MoleculeTable(
        x=data.x.float(), pos=data.pos.float(), edge_index=data.edge_index.long(),
        bond_type=data.edge_attr[:, :NUM_BOND_TYPES].argmax(dim=1).long(),
        y=data.y[:, list(PYG_TARGET_INDEX)].double(), node_ptr=slices["x"].long(),
        edge_ptr=slices["edge_index"].long(), mol_id=mol_id.view(-1),
        bond_source=torch.full((n,), BOND_SOURCES.index("pyg"), dtype=torch.long),
    )


# --------------------------------------------------------------------------- resolving


def is_online(timeout: float = 2.0) -> bool:
    """Can PyG's QM9 mirror be reached? (A 2 s TCP probe; never raises.)"""
    if offline_forced():
        return False
    from urllib.parse import urlparse

    from torch_geometric.datasets import QM9

    try:
        with socket.create_connection((urlparse(QM9.raw_url).hostname, 443), timeout=timeout):
            return True
    except OSError:
        return False


SOURCES = ("auto", "pyg", "qm9pack")


def resolve_source(source: str, data_dir: str | None, download: bool = True) -> dict[str, Any]:
    """Pick the QM9 source (on the driver; downloads PyG's QM9 when online and allowed).

    Order for ``auto``: PyG's QM9 under ``<data dir>/QM9`` (or the default data folder);
    qm9pack CSVs under ``<data dir>/qm9pack``; download PyG's QM9 when online; the installed
    qm9pack package. Returns the settings ``load`` needs (JSON-able).
    """
    if source not in SOURCES:
        raise DataError(f"unknown QM9 source {source!r} (use {', '.join(SOURCES)})")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"data dir {data_dir} does not exist")
    base = Path(data_dir).resolve() if data_dir is not None else None
    pyg_root = base / "QM9" if base is not None else DEFAULT_PYG_ROOT
    cache_dir = base / "qm9_cache" if base is not None else DEFAULT_CACHE
    local_csv = base / "qm9pack" if base is not None else None

    def pyg() -> dict[str, Any]:
        return {"source": "pyg", "pyg_root": str(pyg_root)}

    def qm9pack(folder: Path) -> dict[str, Any]:
        return {"source": "qm9pack", "qm9pack_dir": str(folder), "cache_dir": str(cache_dir)}

    if source in ("auto", "pyg") and pyg_qm9_present(pyg_root):
        return pyg()
    if source in ("auto", "qm9pack") and local_csv is not None and qm9pack_parts(local_csv):
        return qm9pack(local_csv)
    if source in ("auto", "pyg") and download and is_online():
        pyg_root.mkdir(parents=True, exist_ok=True)
        open_pyg_qm9(pyg_root, download=True)
        return pyg()
    installed = installed_qm9pack_dir()
    if source in ("auto", "qm9pack") and installed is not None:
        return qm9pack(installed)
    raise DataError(
        f"QM9 not found: no PyG QM9 under {pyg_root} (raw/gdb9.sdf, gdb9.sdf.csv, uncharacterized.txt "
        f"or processed/data_v3.pt) and no qm9pack CSVs, and the machine is offline; "
        f"run once online, or `pip install qm9pack`, or copy its data/qm9_part*.csv to <data dir>/qm9pack"
    )


def load_molecules(data: Mapping[str, Any], subset: int = 0, seed: int = 0,
                   progress: bool = False) -> tuple[MoleculeTable, dict[str, torch.Tensor]]:
    """The molecules of the (subset of the) split, and each split's rows in the returned table.

    Only the molecules used are featurized (qm9pack) and kept.
    """
    if data.get("source") == "pyg":
        table = table_from_pyg(open_pyg_qm9(Path(data["pyg_root"])))
        parts = subset_split(split_rows(len(table), seed), subset)
        rows = np.sort(np.concatenate(list(parts.values())))
        table = table.select(rows)
    else:
        folder = Path(data["qm9pack_dir"])
        n = int(data.get("num_molecules") or count_qm9pack(folder))
        parts = subset_split(split_rows(n, seed), subset)
        rows = np.sort(np.concatenate(list(parts.values())))
        table = load_qm9pack(folder, Path(data["cache_dir"]), None if len(rows) == n else rows, progress)
    positions = {k: torch.from_numpy(np.searchsorted(rows, v)) for k, v in parts.items()}
    return table, positions


# --------------------------------------------------------------------------- graphs


class CompleteGraphs(torch.utils.data.Dataset):
    """Molecules as PyG ``Data`` on the complete graph (no self loops), read on demand.

    ``edge_attr`` = bond one-hot (4; zeros where no bond) + distance (Angstrom), the edges in
    Nash-MTL's ``Complete()`` order (row-major over ordered pairs); ``y`` = (1, 11) targets.
    """

    def __init__(self, table: MoleculeTable, targets: torch.Tensor, rows: torch.Tensor) -> None:
        self.table = table
        self.targets = targets.float()
        self.rows = rows.long()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        from torch_geometric.data import Data

        t, r = self.table, int(self.rows[i])
        a, b = int(t.node_ptr[r]), int(t.node_ptr[r + 1])
        e0, e1 = int(t.edge_ptr[r]), int(t.edge_ptr[r + 1])
        edge_index, edge_attr = complete_edges(b - a, t.edge_index[:, e0:e1], t.bond_type[e0:e1])
        data = Data(x=t.x[a:b], pos=t.pos[a:b], edge_index=edge_index, edge_attr=edge_attr, y=self.targets[r : r + 1])
        return _distance()(data)


def complete_edges(n: int, bonds: torch.Tensor, bond_type: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i, j), i != j, row-major; bond one-hot (n*(n-1), 4) on bonded pairs."""
    idx = torch.arange(n)
    row, col = idx.repeat_interleave(n), idx.repeat(n)
    attr = torch.zeros(n * n, NUM_BOND_TYPES)
    attr[bonds[0] * n + bonds[1], bond_type] = 1.0
    keep = row != col
    return torch.stack([row[keep], col[keep]]), attr[keep]


@functools.lru_cache(maxsize=1)
def _distance() -> Any:
    from torch_geometric.transforms import Distance

    return Distance(norm=False)


class TargetBatches:
    """Batches of a PyG loader as ``(Batch, {task: (B,) targets})`` for the trainer."""

    def __init__(self, loader: Any, tasks: Sequence[str]) -> None:
        self.loader = loader
        self.tasks = list(tasks)

    def __iter__(self) -> Iterator[tuple[Any, dict[str, torch.Tensor]]]:
        for batch in self.loader:
            yield batch, {t: batch.y[:, k] for k, t in enumerate(self.tasks)}

    def __len__(self) -> int:
        return len(self.loader)
