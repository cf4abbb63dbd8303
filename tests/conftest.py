"""Shared fixtures: real structures from ../shared (skipped with a reason where absent) and small cells."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTALFRAMER_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
GOLDEN = SHARED / "golden"
BENCH = SHARED / "bench"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data folder is not next to this checkout "
                    "(set CRYSTALFRAMER_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _need(GOLDEN)


@pytest.fixture(scope="session")
def bench_dir() -> Path:
    return _need(BENCH)


def _read_golden() -> list[dict] | None:
    path = GOLDEN / "structures.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture(scope="session")
def golden_structures(golden_dir):
    """The 24 real structures of ../shared/golden as dicts (id, lattice, species, cart_coords)."""
    return _read_golden()


@pytest.fixture(scope="session")
def golden_or_none() -> list[dict] | None:
    """The golden structures where the shared folder is present, else None (for fixtures with a fallback)."""
    return _read_golden()


def golden_to_structures(golden: list[dict], ids) -> list:
    """Golden dicts with the given ids, in the order of ``ids``, as pymatgen Structures (id in properties)."""
    from pymatgen.core import Lattice, Structure

    by_id = {s["id"]: s for s in golden}
    return [Structure(Lattice(by_id[i]["lattice"]), by_id[i]["species"], by_id[i]["cart_coords"],
                      coords_are_cartesian=True, properties={"id": i}) for i in ids]


def _rattle(structure, amount: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = structure.copy()
    for i in range(len(s)):
        s.translate_sites([i], rng.normal(scale=amount, size=3), frac_coords=False, to_unit_cell=False)
    return s


def built_low_symmetry() -> list:
    """Five low-symmetry cells built with pymatgen (realistic lattices and bond lengths ≥ 1.2 Å), rattled by
    0.15 Å so that they are P1 and no frame choice is a near-tie. Same roles, by position, as the golden set:
    [2] is triclinic, [4] has 14 atoms."""
    from pymatgen.core import Lattice, Structure

    protos = [
        ("PrCoC2-Cc-rattled", "Cc", Lattice.monoclinic(6.9, 3.8, 7.4, 98.0), ["Pr", "Co", "C", "C"],
         [[0.0, 0.12, 0.0], [0.31, 0.64, 0.27], [0.18, 0.33, 0.61], [0.43, 0.07, 0.82]]),
        ("ZrNO-Pna21-rattled", "Pna2_1", Lattice.orthorhombic(5.5, 5.9, 5.6), ["Zr", "N", "O"],
         [[0.12, 0.21, 0.0], [0.37, 0.43, 0.26], [0.71, 0.09, 0.58]]),
        ("MgAl2H6-P-1-rattled", "P-1", Lattice.from_parameters(4.8, 4.9, 6.5, 95, 99, 123),
         ["Mg", "Al", "H", "H", "H"],
         [[0.0, 0.0, 0.0], [0.31, 0.62, 0.27], [0.13, 0.41, 0.58], [0.72, 0.17, 0.36], [0.46, 0.88, 0.19]]),
        ("SiRh-P21c-rattled", "P2_1/c", Lattice.monoclinic(5.6, 4.6, 4.6, 114.0), ["Si", "Rh"],
         [[0.11, 0.23, 0.37], [0.62, 0.09, 0.21]]),
        ("Te2O5-P21-rattled", "P2_1", Lattice.monoclinic(5.5, 4.8, 8.2, 103.0), ["Te", "Te"] + ["O"] * 5,
         [[0.05, 0.0, 0.12], [0.41, 0.31, 0.37], [0.21, 0.62, 0.05], [0.77, 0.18, 0.22], [0.33, 0.85, 0.61],
          [0.92, 0.47, 0.43], [0.58, 0.71, 0.86]]),
    ]
    out = []
    # seeds chosen so that random-init max, static and PCA frames have no accidental near-tie (< 1e-6 relative)
    for seed, (name, group, lattice, species, coords) in zip([17, 25, 31, 30, 21], protos):
        s = _rattle(Structure.from_spacegroup(group, lattice, species, coords), amount=0.15, seed=seed)
        s.properties["id"] = name
        out.append(s)
    return out


@pytest.fixture(scope="session")
def real_low_symmetry(golden_or_none):
    """Real low-symmetry structures (golden tie class A: no near-ties in max frames) as pymatgen Structures;
    without the shared folder, the pymatgen-built cells of ``built_low_symmetry`` (same properties)."""
    if golden_or_none is None:
        return built_low_symmetry()
    return golden_to_structures(golden_or_none, ["mp-567341", "mp-1101159", "mp-1185517", "mp-2287", "mp-12177"])


@pytest.fixture(scope="session")
def non_primitive_cell(golden_or_none):
    """A low-symmetry cell that is not primitive: the real MP cell mp-567345 (NbRh, P2/m, 18 atoms), or
    without the shared folder a C-centred conventional NbRh cell (C2/m, 8 atoms; primitive cell 4 atoms)."""
    from pymatgen.core import Lattice, Structure

    if golden_or_none is not None:
        return golden_to_structures(golden_or_none, ["mp-567345"])[0]
    return Structure.from_spacegroup("C2/m", Lattice.monoclinic(11.2, 2.9, 4.9, 101.0), ["Nb", "Rh"],
                                     [[0.11, 0.0, 0.23], [0.36, 0.0, 0.71]])


@pytest.fixture(scope="session")
def small_cells():
    """Small cells built with pymatgen, rattled so that no frame choice is a tie."""
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    perov = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    mono = Structure(Lattice.monoclinic(4.1, 5.3, 6.2, 103.0), ["Li", "Fe", "P", "O"],
                     [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.35, 0.7, 0.45], [0.8, 0.55, 0.1]])
    out = [_rattle(nacl, seed=1), _rattle(perov, seed=2), _rattle(mono, seed=3)]
    for s, name in zip(out, ["NaCl-conv-rattled", "SrTiO3-rattled", "LiFePO-mono"]):
        s.properties["id"] = name
    return out


def read_csv_gz(path: Path):
    import pandas as pd

    with gzip.open(path, "rt") as f:
        return pd.read_csv(f)


@pytest.fixture(scope="session")
def ase_route_cells():
    """Small pymatgen cells for the ASE-route tests: SrTiO3, rattled NaCl and a cell with a partially
    occupied site (Fe0.5Co0.5 plus a 0.75-occupied Sr), ids in ``properties['id']``."""
    from pymatgen.core import Lattice, Structure

    srtio3 = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                       [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    nacl = _rattle(Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                             [[0, 0, 0], [0.5, 0.5, 0.5]]), seed=4)
    partial = Structure(Lattice.orthorhombic(4.0, 4.2, 4.4), [{"Fe": 0.5, "Co": 0.5}, "O", {"Sr": 0.75}],
                        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    for s, name in zip((srtio3, nacl, partial), ("SrTiO3", "NaCl-rattled", "FeCoSrO-partial")):
        s.properties["id"] = name
    return [srtio3, nacl, partial]


@pytest.fixture(scope="session")
def tiny_predictor():
    """An untrained one-layer Crystalformer (frame "none", dims 16, float64) for comparing two input routes.

    Without frames the prediction does not depend on the atom order (ASE and pymatgen order sites
    differently), so equal predictions mean equal species and geometry; a max frame breaks the ties of
    symmetric cells by atom order."""
    import torch

    import crystalframer as cf

    torch.manual_seed(0)
    return cf.CrystalFramer(frame="none", num_layers=1, model_dim=16, num_heads=2, ff_dim=32, head_dims=[16],
                            dist_bins=8, angle_bins=8, cutoff=4.0, frame_noise=0.0).double().eval()


def same_sites(a, b, atol: float = 1e-6) -> bool:
    """Crystals ``a`` and ``b`` hold the same cell (up to a rotation: equal metric L Lᵀ, as ASE and pymatgen
    orient a cell from its parameters differently) and the same sites (species and fractional position
    modulo 1), in any order."""
    if a.num_atoms != b.num_atoms or not np.allclose(a.lattice @ a.lattice.T, b.lattice @ b.lattice.T,
                                                     atol=atol * 100):
        return False
    fa, fb = a.positions @ np.linalg.inv(a.lattice), b.positions @ np.linalg.inv(b.lattice)
    used = set()
    for p, sp in zip(fa, a.species):
        d = fb - p
        d = np.abs(d - np.round(d)).max(axis=1)
        hits = [j for j in np.nonzero(d < atol)[0] if j not in used and np.allclose(b.species[j], sp, atol=1e-9)]
        if not hits:
            return False
        used.add(hits[0])
    return True
