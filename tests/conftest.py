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


@pytest.fixture(scope="session")
def golden_structures(golden_dir):
    """The 24 real structures of ../shared/golden as dicts (id, lattice, species, cart_coords)."""
    return json.loads((golden_dir / "structures.json").read_text())


@pytest.fixture(scope="session")
def real_low_symmetry(golden_structures):
    """Real low-symmetry structures (golden tie class A: no near-ties in max frames) as pymatgen Structures."""
    from pymatgen.core import Lattice, Structure

    ids = {"mp-567341", "mp-1101159", "mp-1185517", "mp-2287", "mp-12177"}
    return [Structure(Lattice(s["lattice"]), s["species"], s["cart_coords"], coords_are_cartesian=True,
                      properties={"id": s["id"]})
            for s in golden_structures if s["id"] in ids]


def _rattle(structure, amount: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = structure.copy()
    for i in range(len(s)):
        s.translate_sites([i], rng.normal(scale=amount, size=3), frac_coords=False, to_unit_cell=False)
    return s


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
