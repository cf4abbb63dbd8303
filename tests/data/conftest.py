"""Small structures and bad inputs for the data-layer tests (written to tmp_path by each test)."""

from __future__ import annotations

import numpy as np
import pytest

#: CIF text of a rock-salt-like cell with two sites given as rows "symbol label x y z".
CIF_TEMPLATE = """data_{name}
_cell_length_a 4.0
_cell_length_b 4.2
_cell_length_c 4.4
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
 _symmetry_equiv_pos_as_xyz
  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
{rows}
"""

BAD_CIFS = {
    # id → (CIF text, words the error message must contain)
    "bad-malformed": ("data_broken\n_cell_length_a 4.0\nloop_\n _atom_site_label\n", "could not parse"),
    "bad-overlap": (CIF_TEMPLATE.format(name="ov", rows="  Na Na0 0 0 0 1\n  Cl Cl1 0.01 0 0 1"), "overlapping"),
    "bad-element": (CIF_TEMPLATE.format(name="el", rows="  Xx Xx0 0 0 0 1\n  Cl Cl1 0.5 0.5 0.5 1"), "element"),
}


@pytest.fixture(scope="session")
def good_structures():
    """Four small ordered pymatgen structures with ids in ``properties['id']`` (2, 2, 5 and 4 atoms)."""
    from pymatgen.core import Lattice, Structure

    out = [
        Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.hexagonal(3.1, 5.0), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.38]]),
        Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        Structure(Lattice.monoclinic(4.1, 5.3, 6.2, 103.0), ["Li", "Fe", "P", "O"],
                  [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.35, 0.7, 0.45], [0.8, 0.55, 0.1]]),
    ]
    for s, name in zip(out, ["s-nacl", "s-zno", "s-srtio3", "s-lfpo"]):
        s.properties["id"] = name
    return out


@pytest.fixture(scope="session")
def good_targets():
    """Two targets per good structure; one label is missing (NaN)."""
    return {"energy": [-1.5, -2.25, -3.0, float("nan")], "gap": [4.0, 3.3, 1.8, 0.5]}


@pytest.fixture(scope="session")
def disordered_structure():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.properties["id"] = "s-disordered"
    return s


def assert_same_crystal(c, s, atol: float = 1e-6) -> None:
    """Crystal ``c`` holds pymatgen structure ``s`` (same lattice, positions, species, up to ``atol`` Å)."""
    from crystalframer.data.structures import to_crystal

    ref = to_crystal(s)
    assert c.num_atoms == ref.num_atoms
    np.testing.assert_allclose(c.lattice, ref.lattice, atol=atol)
    np.testing.assert_allclose(c.positions, ref.positions, atol=atol)
    np.testing.assert_allclose(c.species, ref.species, atol=1e-9)
