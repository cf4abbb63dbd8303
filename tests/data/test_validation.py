"""Bad input gets a clear error (an InvalidStructureError, a ValueError) naming the structure and the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import DummySpecies, Lattice, Structure

import crystalframer as cf
from crystalframer.data.structures import InvalidStructureError, to_crystal

GOOD = {"id": "good", "lattice": np.eye(3) * 4.0, "cart_coords": [[0, 0, 0], [2, 2, 2]], "species": [11, 17]}


def bad(**changes):
    d = dict(GOOD, id="bad-one")
    d.update(changes)
    return d


CASES = {
    "empty": (bad(cart_coords=np.zeros((0, 3)), species=[]), "empty structure"),
    "nan coordinates": (bad(cart_coords=[[0, 0, 0], [np.nan, 2, 2]]), "site 1 contain NaN"),
    "inf lattice": (bad(lattice=[[4, 0, 0], [0, np.inf, 0], [0, 0, 4]]), "lattice contains NaN or inf"),
    "zero volume": (bad(lattice=[[4, 0, 0], [0, 4, 0], [4, 4, 0]]), "zero cell volume"),
    "negative volume": (bad(lattice=[[4, 0, 0], [0, 0, 4], [0, 4, 0]]), "negative cell volume"),
    "overlapping atoms": (bad(cart_coords=[[0, 0, 0], [0.05, 0, 0]]), "overlapping atoms: sites 0 and 1"),
    "overlap through a periodic image": (bad(cart_coords=[[0.01, 0, 0], [3.97, 0, 0]]), "overlapping atoms"),
    "element beyond Z=98": (bad(species=[11, 99]), "Z in 1..98"),
    "unknown symbol": (bad(species=["Na", "Xx"]), "site 1: species Xx"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_raise_a_named_value_error(case):
    obj, fragment = CASES[case]
    with pytest.raises(InvalidStructureError) as err:
        to_crystal(obj)
    assert isinstance(err.value, ValueError)
    assert "bad-one" in str(err.value) and fragment in str(err.value)


def test_dummy_species_and_over_occupied_sites_from_pymatgen():
    s = Structure(Lattice.cubic(4.0), [DummySpecies("X"), "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(InvalidStructureError, match="species X"):
        to_crystal(s, id="dummy")
    # pymatgen refuses to build such a site; dict inputs (JSON, CSV) can still carry one
    d = bad(species=[{"Fe": 0.6, "Ni": 0.6}, "O"])
    with pytest.raises(InvalidStructureError, match="'bad-one': site 0: occupancies sum to 1.2 > 1"):
        to_crystal(d)


def test_partial_occupancy_is_kept_as_weighted_species():
    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.25}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    c = to_crystal(s)
    assert c.species[0, 25] == 0.5 and c.species[0, 27] == 0.25 and c.species[0].sum() == 0.75


def test_malformed_cif_and_missing_file_name_the_file(tmp_path):
    p = tmp_path / "broken.cif"
    p.write_text("data_x\n_cell_length_a 4\nloop_\n_atom_site_label\nthis is not a cif\n")
    with pytest.raises(InvalidStructureError, match="broken.cif"):
        to_crystal(p)
    with pytest.raises(InvalidStructureError, match="file not found"):
        to_crystal(tmp_path / "missing.cif")


def test_ase_atoms_with_nan_positions_and_non_periodic_cells():
    from ase import Atoms

    a = Atoms("NaCl", positions=[[0, 0, 0], [np.nan, 0, 0]], cell=np.eye(3) * 4, pbc=True)
    with pytest.raises(InvalidStructureError, match="NaN"):
        to_crystal(a, id="ase-nan")
    b = Atoms("NaCl", positions=[[0, 0, 0], [2, 0, 0]], cell=np.eye(3) * 4, pbc=[True, True, False])
    with pytest.raises(InvalidStructureError, match="periodic"):
        to_crystal(b, id="slab")


def test_predict_raises_by_default_and_skips_bad_entries_on_request():
    torch.manual_seed(0)
    model = cf.CrystalFramer(frame="max", num_layers=1).eval()
    good2 = dict(GOOD, id="good2", cart_coords=[[0, 0, 0], [1.9, 2.1, 2.0]])
    items = [GOOD, bad(species=[11, 99]), good2]
    with pytest.raises(InvalidStructureError, match="bad-one"):
        model.predict(items)
    out = model.predict(items, on_error="skip")
    assert out.shape == (2, 1) and np.isfinite(out).all()
    assert [e[1] for e in model.last_errors] == ["bad-one"]
    np.testing.assert_allclose(out, model.predict([GOOD, good2]), atol=1e-7)
