"""Structure transformations for invariance tests (all return new pymatgen Structures)."""

from __future__ import annotations

import numpy as np
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
