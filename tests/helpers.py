"""Structure transformations for invariance tests (all return new pymatgen Structures) and a small table of
crystals with tensor labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from pymatgen.core import Lattice, Structure

from crystalframer.testing import random_rotation  # noqa: F401  (re-exported for the tests)


def rotate(s: Structure, R: np.ndarray) -> Structure:
    return Structure(Lattice(s.lattice.matrix @ R.T), s.species, s.cart_coords @ R.T, coords_are_cartesian=True)


def translate(s: Structure, t) -> Structure:
    return Structure(s.lattice, s.species, s.cart_coords + np.asarray(t), coords_are_cartesian=True)


def permute(s: Structure, seed: int) -> Structure:
    p = np.random.default_rng(seed).permutation(len(s))
    return Structure(s.lattice, [s.species[i] for i in p], s.cart_coords[p], coords_are_cartesian=True)


def reimage(s: Structure, seed: int) -> Structure:
    """Move each atom by a random lattice translation (a different periodic image of it)."""
    n = np.random.default_rng(seed).integers(-2, 3, size=(len(s), 3))
    return Structure(s.lattice, s.species, s.cart_coords + n @ s.lattice.matrix, coords_are_cartesian=True)


def wrapped(s: Structure) -> Structure:
    f = s.frac_coords % 1.0
    return Structure(s.lattice, s.species, f @ s.lattice.matrix, coords_are_cartesian=True)


def change_basis(s: Structure, U) -> Structure:
    """Same crystal, lattice rows U @ T with U unimodular (integer, det = +1); atoms kept in place."""
    U = np.asarray(U)
    assert round(abs(np.linalg.det(U))) == 1
    return Structure(Lattice(U @ s.lattice.matrix), s.species, s.cart_coords, coords_are_cartesian=True)


def supercell(s: Structure, scale) -> Structure:
    return s * scale


SKEW = [[1, 1, 0], [0, 1, 1], [1, 1, 1]]  # det = 1


def tensor_table(n: int = 12) -> pd.DataFrame:
    """n small low-symmetry crystals (CIF text) with a symmetric 3x3 label each, as nested-list JSON."""
    rng = np.random.default_rng(3)
    rows = []
    for k in range(n):
        lat = Lattice.from_parameters(3.0 + 0.1 * k, 3.4, 3.8 + 0.05 * k, 80 + k, 95, 100)
        s = Structure(lat, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.45 + 0.01 * k, 0.5]])
        a = rng.normal(size=(3, 3))
        eps = 5 * np.eye(3) + 0.5 * (a + a.T)
        rows.append({"id": f"c{k}", "structure": s.to(fmt="cif"), "eps": json.dumps(eps.round(4).tolist()),
                     "gap": float(rng.uniform(1, 3))})
    return pd.DataFrame(rows)
