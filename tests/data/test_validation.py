"""Bad input gets a clear error (an InvalidStructureError, a ValueError) naming the structure and the problem."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import DummySpecies, Lattice, Structure

import crystalframer as cf
from crystalframer.data.structures import InvalidStructureError, read_structures, to_crystal

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


# -- Crystal built directly is validated like to_crystal ----------------------------------------------------


def _arrays(**changes):
    species = np.zeros((2, 98))
    species[0, 10], species[1, 16] = 1.0, 1.0
    d = dict(lattice=np.eye(3) * 4.0, positions=np.array([[0.0, 0, 0], [2, 2, 2]]), species=species,
             id="direct")
    d.update(changes)
    return d


CRYSTAL_CASES = {
    "NaN species": (_arrays(species=np.where(np.eye(2, 98, 10) > 0, np.nan, _arrays()["species"])),
                    "site 0: occupancies must be finite numbers in [0, 1]"),
    "occupancy 5": (_arrays(species=_arrays()["species"] * 5), "site 0: occupancies must be finite"),
    "over-full site": (_arrays(species=_arrays()["species"] + np.eye(2, 98, 20) * 0.5),
                       "site 0: occupancies sum to 1.5 > 1"),
    "empty site": (_arrays(species=_arrays()["species"] * np.array([[0.0], [1.0]])), "site 0: no species"),
    "species of 97 elements": (_arrays(species=np.zeros((2, 97))), "species must be (n, 98)"),
    "species for 3 sites": (_arrays(species=np.vstack([_arrays()["species"], np.eye(1, 98)])),
                            "3 species for 2 coordinates"),
    "2-D coordinates": (_arrays(positions=np.zeros((2, 2))), "coordinates must be (n, 3)"),
    "string lattice": (_arrays(lattice="4 0 0 0 4 0 0 0 4"), "lattice is not an array of numbers"),
    "2x3 lattice": (_arrays(lattice=np.eye(2, 3)), "lattice must be (3, 3)"),
    "overlap": (_arrays(positions=np.array([[0.0, 0, 0], [0.01, 0, 0]])), "overlapping atoms"),
    "targets of a 2-D shape": (_arrays(targets=np.ones((2, 2))), "targets must be one number per target"),
}


@pytest.mark.parametrize("case", list(CRYSTAL_CASES))
def test_crystal_built_directly_is_validated(case):
    kw, fragment = CRYSTAL_CASES[case]
    with pytest.raises(InvalidStructureError) as err:
        cf.Crystal(**kw)
    assert "'direct'" in str(err.value) and fragment in str(err.value)


def test_crystal_built_directly_equals_to_crystal():
    c = cf.Crystal(**_arrays(lattice=[[4, 0, 0], [0, 4, 0], [0, 0, 4]], targets=[1.5]))
    ref = to_crystal(dict(GOOD, id="direct"), targets=[1.5])
    assert c.lattice.dtype == np.float64 and c.positions.dtype == np.float64
    for f in ("lattice", "positions", "species", "targets"):
        np.testing.assert_array_equal(getattr(c, f), getattr(ref, f))


# -- structure dicts and ASE atoms: named, skippable errors ------------------------------------------------

DICT_CASES = {
    "3 species for 2 coordinates": (bad(species=[11, 17, 17]), "3 species for 2 coordinates"),
    "2-D coordinates": (bad(cart_coords=[[0, 0], [2, 2]]), "coordinates must be (n, 3)"),
    "2-D coordinates, 3 rows": (bad(cart_coords=[[0, 0], [2, 2], [1, 1]]), "coordinates must be (n, 3)"),
    "string lattice": (bad(lattice="4 0 0 0 4 0 0 0 4"), "lattice is not an array of numbers"),
    "species as one string": (bad(species="NaCl"), "species must be a list"),
}


@pytest.mark.parametrize("case", list(DICT_CASES))
def test_bad_structure_dicts_are_named_and_skippable(case, tiny_predictor):
    obj, fragment = DICT_CASES[case]
    with pytest.raises(InvalidStructureError) as err:
        tiny_predictor.predict([GOOD, obj])
    assert "bad-one" in str(err.value) and fragment in str(err.value)
    good2 = dict(GOOD, id="good2", cart_coords=[[0, 0, 0], [1.9, 2.1, 2.0]])
    out = tiny_predictor.predict([GOOD, obj, good2], on_error="skip")
    assert out.shape == (2, 1) and [e[1] for e in tiny_predictor.last_errors] == ["bad-one"]
    np.testing.assert_allclose(out, tiny_predictor.predict([GOOD, good2]))


def test_ase_atoms_with_an_unknown_element_are_named_and_skippable(tiny_predictor):
    from ase import Atoms

    a = Atoms(numbers=[11, 119], positions=[[0, 0, 0], [2, 2, 2]], cell=np.eye(3) * 4, pbc=True)
    a.info["id"] = "z119"
    with pytest.raises(InvalidStructureError, match="'z119': site 1: atomic number 119"):
        tiny_predictor.predict(a)
    assert tiny_predictor.predict([a, GOOD], on_error="skip").shape == (1, 1)
    a.info.pop("id")
    with pytest.raises(InvalidStructureError, match="atomic number 119"):
        to_crystal(a)


def test_on_error_must_be_raise_or_skip(tiny_predictor):
    with pytest.raises(ValueError, match=r"on_error must be one of \('raise', 'skip'\), got 'ignore'"):
        tiny_predictor.predict([GOOD], on_error="ignore")
    with pytest.raises(ValueError, match="on_error must be one of"):
        read_structures([GOOD], on_error="Skip")


# -- what predict accepts ------------------------------------------------------------------------------------


def test_predict_accepts_paths_and_single_dicts_and_names_none(tiny_predictor, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    Path("in").mkdir()
    s = to_crystal(GOOD).to_pymatgen()
    s.to(filename="in/nacl.cif")
    ref = tiny_predictor.predict([GOOD])
    np.testing.assert_allclose(tiny_predictor.predict(Path("in/nacl.cif")), ref, atol=1e-9)
    with pytest.warns(UserWarning, match="1 duplicate id.*'nacl.cif'"):
        both = tiny_predictor.predict([Path("in/nacl.cif"), "in/nacl.cif"])
    np.testing.assert_allclose(both, np.vstack([ref, ref]), atol=1e-9)
    np.testing.assert_allclose(tiny_predictor.predict(GOOD), ref)
    np.testing.assert_allclose(tiny_predictor.embed(GOOD), tiny_predictor.embed([GOOD]))
    with pytest.raises(TypeError, match=r"no structures given \(None\)"):
        tiny_predictor.predict(None)
    with pytest.raises(TypeError, match="object of type int"):
        tiny_predictor.predict(5)


# -- unphysical cells warn; overlaps stay errors -------------------------------------------------------------


def test_unphysical_density_and_bond_lengths_warn():
    from pymatgen.core import Lattice, Structure

    from crystalframer.data.structures import UnphysicalStructureWarning

    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    nm = Structure(Lattice.cubic(0.3905), ["Sr", "Ti", "O", "O", "O"], coords)  # SrTiO3 with a in nm
    with pytest.warns(UnphysicalStructureWarning, match=r"density .* g/cm³ is above 30"):
        to_crystal(nm, id="nm-as-angstrom")
    with pytest.warns(UnphysicalStructureWarning, match="only 0.110 Å apart"):
        to_crystal({"id": "tiny", "lattice": np.eye(3) * 0.11, "cart_coords": [[0, 0, 0]], "species": [1]})
    with pytest.warns(UnphysicalStructureWarning, match="'short': sites 0 and 1 are only 0.300 Å apart"):
        cf.Crystal(**_arrays(positions=np.array([[0.0, 0, 0], [0.3, 0, 0]]), id="short"))
    with pytest.raises(InvalidStructureError, match="overlapping"):
        to_crystal(bad(cart_coords=[[0, 0, 0], [0.09, 0, 0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real cells, including the densest element, stay silent
        to_crystal(Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"], coords))
        to_crystal(Structure(Lattice.hexagonal(2.734, 4.317), ["Os", "Os"], [[1 / 3, 2 / 3, 0.25],
                                                                              [2 / 3, 1 / 3, 0.75]]))
        to_crystal(Structure(Lattice.cubic(3.0), ["H", "H"], [[0, 0, 0], [0.25, 0, 0]]))  # 0.75 Å, H2-like
