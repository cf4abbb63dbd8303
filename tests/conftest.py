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
