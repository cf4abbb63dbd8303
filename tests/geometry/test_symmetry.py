"""Symmetry with spglib: atom types, the primitive standard cell, space groups, symmetrized geometry."""

from __future__ import annotations

import numpy as np

from crystalframer.geometry.symmetry import (primitive_standard_cell, spacegroup_number, species_types,
                                             symmetrized_geometry)


def rock_salt(a: float = 5.64):
    """Conventional NaCl cell: 8 atoms, lattice rows, fractional positions, types (0 = Na, 1 = Cl)."""
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.concatenate([fcc, fcc + [0.5, 0, 0]]) % 1.0
    return a * np.eye(3), frac, np.array([0] * 4 + [1] * 4)


def test_species_types_do_not_depend_on_atom_order():
    sp = np.zeros((4, 98))
    sp[[0, 2], 10] = 1.0  # Na
    sp[1, 16] = 1.0  # Cl
    sp[3, [10, 16]] = 0.5  # a disordered site is its own type
    types, table = species_types(sp)
    assert len(table) == 3 and types[0] == types[2] != types[1] != types[3]
    perm = [3, 1, 0, 2]
    types_p, table_p = species_types(sp[perm])
    np.testing.assert_array_equal(table_p, table)
    np.testing.assert_array_equal(types_p, types[perm])


def test_primitive_standard_cell_of_rock_salt_keeps_the_orientation():
    lattice, frac, types = rock_salt()
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
    lat_r = lattice @ rot.T
    prim, pfrac, ptypes = primitive_standard_cell(lat_r, frac, types + 1, symprec=0.01)
    assert len(pfrac) == 2 and sorted(ptypes.tolist()) == [1, 2]
    M = lat_r @ np.linalg.inv(prim)  # the input cell in the primitive basis: integers, 4 primitive cells
    np.testing.assert_allclose(M, np.round(M), atol=1e-8)
    assert round(abs(np.linalg.det(M))) == 4
    np.testing.assert_allclose(np.linalg.norm(prim, axis=1), 5.64 / np.sqrt(2), rtol=1e-10)  # not idealized away


def test_spacegroups_and_spglib_failure(monkeypatch):
    lattice, frac, types = rock_salt()
    assert spacegroup_number(lattice, frac, types + 1, 0.01) == 225
    rng = np.random.default_rng(0)
    skew = np.array([[4.1, 0.3, 0.2], [0.1, 5.3, 0.4], [0.5, 0.2, 6.2]])
    assert spacegroup_number(skew, rng.random((3, 3)), np.array([1, 2, 3]), 0.01) == 1
    import spglib

    def broken(*args, **kwargs):
        raise RuntimeError("spglib failed")

    monkeypatch.setattr(spglib, "standardize_cell", broken)
    monkeypatch.setattr(spglib, "get_symmetry_dataset", broken)
    assert primitive_standard_cell(lattice, frac, types + 1, 0.01) is None
    assert spacegroup_number(lattice, frac, types + 1, 0.01) is None


def test_symmetrized_geometry_restores_the_symmetry_of_a_slightly_distorted_cell():
    lattice, frac, types = rock_salt()
    rng = np.random.default_rng(1)
    noisy = frac + rng.normal(scale=2e-4, size=frac.shape)  # ~1e-3 Å, below symprec
    lat = lattice + rng.normal(scale=1e-3, size=(3, 3))
    sp = np.zeros((8, 98))
    sp[np.arange(8), np.where(types == 0, 10, 16)] = 1.0
    G, fsym = symmetrized_geometry(lat, noisy, sp, symprec=0.01)
    np.testing.assert_allclose(G, G.T)
    assert np.abs(fsym - noisy).max() < 2e-3  # within ~symprec of the input, no integer jumps
    d = fsym - fsym[0]
    d -= np.round(d)
    # symmetrized Na-Na offsets are exact fcc vectors again, the metric cubic
    np.testing.assert_allclose(np.sort(np.abs(d[:4]).sum(1)), [0, 1, 1, 1], atol=1e-9)
    assert np.ptp(np.diag(G)) < 1e-9 and np.abs(G - np.diag(np.diag(G))).max() < 1e-9


def test_a_degenerate_lattice_gives_no_primitive_cell():
    _, frac, types = rock_salt()
    assert primitive_standard_cell(np.zeros((3, 3)), frac, types + 1, 0.01) is None
