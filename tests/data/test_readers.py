"""Readers: every format round-trips, bad entries are reported (id + reason) and skipped, nothing else lost."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crystalframer.data import (
    InvalidStructureError,
    load_dataset,
    read_ase_db,
    read_csv,
    read_folder,
    read_json,
)

from .conftest import BAD_CIFS, assert_same_crystal

pytestmark = pytest.mark.filterwarnings("ignore:.*skipped.*:UserWarning")


def _gzip(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def _check_good(ds, structures, targets, names=("energy", "gap")):
    assert ds.target_names == tuple(names)
    assert ds.ids == [s.properties["id"] for s in structures]
    for c, s in zip(ds, structures):
        assert_same_crystal(c, s)
    y = ds.targets
    ref = np.array([targets[t] for t in names]).T
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_allclose(y[~np.isnan(y)], ref[~np.isnan(ref)])


def _assert_bad_reported(ds, bad_ids):
    got = {e.id: e for e in ds.errors}
    assert set(got) == set(bad_ids), ds.errors
    for sid in bad_ids:
        assert sid in got[sid].message  # the message names the structure
        words = BAD_CIFS[sid][1] if sid in BAD_CIFS else ""
        assert words in got[sid].message, got[sid].message


# -- CSV -------------------------------------------------------------------------------------------------


def _csv_frame(structures, targets, fmt: str) -> pd.DataFrame:
    text = [s.to(fmt=fmt) for s in structures]
    return pd.DataFrame({"material_id": [s.properties["id"] for s in structures], "struct": text,
                         "energy": targets["energy"], "gap": targets["gap"]})


@pytest.mark.parametrize("fmt", ["cif", "poscar"])
@pytest.mark.parametrize("gz", [False, True])
def test_csv_text_column_round_trip(tmp_path, good_structures, good_targets, fmt, gz):
    path = tmp_path / "data.csv"
    _csv_frame(good_structures, good_targets, fmt).to_csv(path, index=False)
    if gz:
        path = _gzip(path)
    ds = load_dataset(path, targets=["energy", "gap"])  # structure column auto-detected
    assert not ds.errors
    _check_good(ds, good_structures, good_targets)
    assert ds.split_labels is None


def test_csv_path_column_relative_to_csv(tmp_path, good_structures, good_targets):
    sub = tmp_path / "structs"
    sub.mkdir()
    names = []
    for k, s in enumerate(good_structures):
        name = f"structs/{s.properties['id']}." + ("cif" if k % 2 else "vasp")
        s.to(filename=str(tmp_path / name), fmt="cif" if k % 2 else "poscar")
        names.append(name)
    df = pd.DataFrame({"material_id": [s.properties["id"] for s in good_structures], "file": names,
                       "energy": good_targets["energy"], "gap": good_targets["gap"]})
    df.to_csv(tmp_path / "index.csv", index=False)
    ds = read_csv(tmp_path / "index.csv", targets=["energy", "gap"])
    _check_good(ds, good_structures, good_targets)


def test_csv_named_columns_split_column_and_missing_targets(tmp_path, good_structures):
    df = pd.DataFrame({
        "name": ["a", "b", "c", "d"], "cif": [s.to(fmt="cif") for s in good_structures],
        "y": ["1.5", "", "nan", "2.5"], "fold": ["train", "valid", "Validation", "TEST"],
    })
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(tmp_path / "d.csv", targets="y", structure_column="cif", id_column="name",
                      split_column="fold")
    assert ds.ids == ["a", "b", "c", "d"]
    assert ds.split_labels == ["train", "val", "val", "test"]
    y = ds.targets[:, 0]
    assert y[0] == 1.5 and y[3] == 2.5 and math.isnan(y[1]) and math.isnan(y[2])


def test_non_numeric_and_infinite_labels_become_nan_with_one_warning(good_structures):
    df = pd.DataFrame({"structure": list(good_structures), "y": ["1.0", "abc", "inf", None]})
    with pytest.warns(UserWarning, match="2 non-numeric or infinite value"):
        ds = load_dataset(df, targets=["y"])
    assert len(ds) == 4 and ds.targets[0, 0] == 1.0 and np.isnan(ds.targets[1:, 0]).all()
    arr = pd.DataFrame({"structure": [good_structures[0]], "y": [np.zeros(3)]})
    with pytest.warns(UserWarning, match="skipped 1"):
        bad = load_dataset(arr, targets=["y"])
    assert "not a single number" in bad.errors[0].message


def test_csv_bad_entries_reported_and_skipped(tmp_path, good_structures, good_targets):
    rows = [(s.properties["id"], s.to(fmt="cif"), e, "train")
            for s, e in zip(good_structures, good_targets["gap"])]
    rows += [(sid, text, 1.0, "train") for sid, (text, _) in BAD_CIFS.items()]
    rows.append(("bad-split", good_structures[0].to(fmt="cif"), 1.0, "holdout"))
    rows.append(("bad-empty", "", 1.0, "train"))
    df = pd.DataFrame(rows, columns=["material_id", "cif", "gap", "split"])
    df.to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.warns(UserWarning, match="skipped 5 of 9"):
        ds = load_dataset(tmp_path / "mixed.csv", targets=["gap"])  # column named "split" auto-used
    assert ds.ids == [s.properties["id"] for s in good_structures]  # the good rows, in order
    _assert_bad_reported(ds, list(BAD_CIFS) + ["bad-split", "bad-empty"])
    by_id = {e.id: e for e in ds.errors}
    assert "holdout" in by_id["bad-split"].message
    assert by_id["bad-malformed"].index == 4  # row number in the file
    with pytest.raises(InvalidStructureError, match="bad-malformed"):
        load_dataset(tmp_path / "mixed.csv", targets=["gap"], on_error="raise")


def test_csv_errors_for_settings(tmp_path, good_structures):
    pd.DataFrame({"cif": [good_structures[0].to(fmt="cif")], "y": [1.0]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match="target column"):
        load_dataset(tmp_path / "a.csv", targets=["nope"])
    pd.DataFrame({"text": ["hello"], "y": [1.0]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ValueError, match="structure_column"):
        load_dataset(tmp_path / "b.csv", targets=["y"])
    with pytest.raises(ValueError, match="on_error"):
        load_dataset(tmp_path / "a.csv", on_error="ignore")


def test_ids_keep_leading_zeros_and_targets_are_exact(tmp_path, good_structures):
    exact = "0.1000000000000000055511151231257827"
    df = pd.DataFrame({"id": ["007"], "cif": [good_structures[0].to(fmt="cif")], "y": [exact]})
    df.to_csv(tmp_path / "z.csv", index=False)
    ds = load_dataset(tmp_path / "z.csv", targets=["y"])
    assert ds.ids == ["007"] and ds.targets[0, 0] == 0.1


# -- folder + id_prop.csv ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_ext", [False, True])
def test_folder_id_prop_round_trip(tmp_path, good_structures, good_targets, with_ext):
    lines = []
    for k, s in enumerate(good_structures):
        sid = s.properties["id"]
        fname = f"{sid}.cif" if k != 2 else f"{sid}.vasp"
        s.to(filename=str(tmp_path / fname), fmt="cif" if k != 2 else "poscar")
        if k == 3:  # a gzipped structure file is found too
            _gzip(tmp_path / fname)
            (tmp_path / fname).unlink()
        e, g = good_targets["energy"][k], good_targets["gap"][k]
        lines.append(f"{fname if with_ext else sid},{'' if math.isnan(e) else e},{g}")
    (tmp_path / "id_prop.csv").write_text("\n".join(lines) + "\n")
    ds = read_folder(tmp_path, targets=["energy", "gap"])  # targets name the two columns
    assert not ds.errors
    for c, s in zip(ds, good_structures):
        assert_same_crystal(c, s)
    assert ds.target_names == ("energy", "gap")
    y = ds.targets
    assert math.isnan(y[3, 0]) and y[0, 0] == -1.5 and y[2, 1] == 1.8
    auto = load_dataset(tmp_path)  # default names
    assert auto.target_names == ("target_1", "target_2") and len(auto) == 4


def test_folder_header_gzip_id_prop_and_bad_files(tmp_path, good_structures):
    for s in good_structures[:2]:
        s.to(filename=str(tmp_path / f"{s.properties['id']}.cif"))
    (tmp_path / "broken.cif").write_text(BAD_CIFS["bad-malformed"][0])
    (tmp_path / "overlap.cif").write_text(BAD_CIFS["bad-overlap"][0])
    text = ("material,bandgap,split\ns-nacl,4.0,train\ns-zno,3.3,val\nbroken,1.0,train\noverlap,2.0,test\n"
            "missing,1.0,test\n")
    with gzip.open(tmp_path / "id_prop.csv.gz", "wt") as f:
        f.write(text)
    with pytest.warns(UserWarning, match="skipped 3"):
        ds = read_folder(tmp_path, targets=["bandgap"])
    assert ds.ids == ["s-nacl", "s-zno"] and ds.target_names == ("bandgap",)
    assert ds.split_labels == ["train", "val"]
    reasons = {e.id: e.message for e in ds.errors}
    assert set(reasons) == {"broken", "overlap", "missing"}
    assert "overlapping" in reasons["overlap"] and "no structure file" in reasons["missing"]
    assert {e.index for e in ds.errors} == {3, 4, 5}  # line numbers of id_prop.csv (0-based, header = 0)
    auto = read_folder(tmp_path)  # header: every column but the split column is a target
    assert auto.target_names == ("bandgap",) and auto.split_labels == ["train", "val"]


def test_folder_without_id_prop_reads_every_structure(tmp_path, good_structures):
    for s in good_structures:
        s.to(filename=str(tmp_path / f"{s.properties['id']}.cif"))
    (tmp_path / "notes.txt").write_text("not a structure")
    ds = load_dataset(tmp_path)
    assert sorted(ds.ids) == sorted(s.properties["id"] for s in good_structures)
    assert ds.target_names == () and all(c.targets is None for c in ds)


# -- ASE database and extxyz -------------------------------------------------------------------------------


def test_ase_db_round_trip_with_bad_row(tmp_path, good_structures, good_targets):
    from ase import Atoms
    from ase.db import connect
    from pymatgen.io.ase import AseAtomsAdaptor

    path = tmp_path / "set.db"
    db = connect(str(path))
    for k, s in enumerate(good_structures):
        kvp = {"material_id": s.properties["id"], "gap": good_targets["gap"][k], "split": "train" if k < 3 else "test"}
        if not math.isnan(good_targets["energy"][k]):
            kvp["energy_per_atom"] = good_targets["energy"][k]
        db.write(AseAtomsAdaptor.get_atoms(s), **kvp)
    db.write(Atoms("H2", positions=[[0, 0, 0], [0.02, 0, 0]], cell=np.eye(3) * 5, pbc=True),
             material_id="bad-h2", gap=1.0, split="train")
    ds = read_ase_db(path, targets=["energy_per_atom", "gap"])
    assert ds.ids == [s.properties["id"] for s in good_structures]
    assert [e.id for e in ds.errors] == ["bad-h2"] and "overlapping" in ds.errors[0].message
    _check_good(ds, good_structures, {"energy_per_atom": good_targets["energy"], "gap": good_targets["gap"]},
                names=("energy_per_atom", "gap"))
    assert ds.split_labels == ["train", "train", "train", "test"]
    gz = load_dataset(_gzip(path), targets=["energy_per_atom", "gap"])
    np.testing.assert_array_equal(gz.targets, ds.targets)


@pytest.mark.parametrize("gz", [False, True])
def test_extxyz_round_trip_targets_from_info(tmp_path, good_structures, good_targets, gz):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for k, s in enumerate(good_structures):
        a = AseAtomsAdaptor.get_atoms(s)
        a.info = {"material_id": s.properties["id"], "gap": good_targets["gap"][k],
                  "energy": good_targets["energy"][k]}
        frames.append(a)
    path = tmp_path / "set.extxyz"
    write(str(path), frames, format="extxyz")
    if gz:
        path = _gzip(path)
    ds = load_dataset(path, targets=["energy", "gap"])
    assert not ds.errors
    _check_good(ds, good_structures, good_targets)


def test_extxyz_non_periodic_frame_is_reported(tmp_path, good_structures):
    from ase import Atoms
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    good = AseAtomsAdaptor.get_atoms(good_structures[0])
    good.info = {"y": 1.0}
    mol = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    mol.info = {"y": 2.0}
    write(str(tmp_path / "m.xyz"), [good, mol], format="extxyz")
    ds = load_dataset(tmp_path / "m.xyz", targets=["y"])
    assert len(ds) == 1 and ds.errors[0].id == "m.xyz#1" and "periodic" in ds.errors[0].message


# -- JSON ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["list", "lines", "lines.gz", "nested", "split-table"])
def test_json_layouts_round_trip(tmp_path, good_structures, good_targets, layout):
    entries = []
    for k, s in enumerate(good_structures):
        d = s.as_dict()
        d.update({"material_id": s.properties["id"], "energy": good_targets["energy"][k],
                  "gap": good_targets["gap"][k]})
        entries.append(d)
    if layout == "list":
        path = tmp_path / "s.json"
        path.write_text(json.dumps(entries))
    elif layout.startswith("lines"):
        path = tmp_path / "s.jsonl"
        path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
        if layout.endswith("gz"):
            path = _gzip(path)
    elif layout == "nested":  # {"structure": {...}, targets...}, the MP/matminer record style
        path = tmp_path / "s.json.gz"
        rows = [{"material_id": e.pop("material_id"), "energy": e.pop("energy"), "gap": e.pop("gap"), "structure": e}
                for e in entries]
        with gzip.open(path, "wt") as f:
            json.dump(rows, f)
    else:  # pandas "split" orient, as the matminer files
        path = tmp_path / "s.json"
        df = pd.DataFrame({"material_id": [e["material_id"] for e in entries], "structure": entries,
                           "energy": good_targets["energy"], "gap": good_targets["gap"]})
        path.write_text(json.dumps({"index": list(range(4)), "columns": list(df.columns),
                                    "data": df.values.tolist()}))
    ds = load_dataset(path, targets=["energy", "gap"])
    assert not ds.errors
    _check_good(ds, good_structures, good_targets)


def test_json_lines_bad_entries(tmp_path, good_structures):
    lines = [json.dumps({**good_structures[0].as_dict(), "material_id": "ok-1", "y": 1.0}),
             "{this is not json",
             json.dumps({"material_id": "bad-nan", "y": 2.0,
                         "structure": {"lattice": np.eye(3).tolist(), "cart_coords": [[float("nan"), 0, 0]],
                                       "species": ["Na"]}}),
             json.dumps({"material_id": "bad-unknown-element", "y": 3.0,
                         "structure": {"lattice": (4 * np.eye(3)).tolist(), "cart_coords": [[0, 0, 0]],
                                       "species": ["Qq"]}}),
             json.dumps({**good_structures[1].as_dict(), "material_id": "ok-2"})]  # its label is missing
    (tmp_path / "x.jsonl").write_text("\n".join(lines))
    ds = read_json(tmp_path / "x.jsonl", targets=["y"])
    assert ds.ids == ["ok-1", "ok-2"] and ds.targets[0, 0] == 1.0 and math.isnan(ds.targets[1, 0])
    msgs = {e.id: e.message for e in ds.errors}
    assert set(msgs) == {"line 2", "bad-nan", "bad-unknown-element"}
    assert "NaN" in msgs["bad-nan"] and "Qq" in msgs["bad-unknown-element"] and "JSON" in msgs["line 2"]
    assert [e.index for e in ds.errors] == [1, 2, 3]


# -- DataFrame and lists ------------------------------------------------------------------------------------


def test_dataframe_of_objects_and_disorder(good_structures, good_targets, disordered_structure):
    from pymatgen.io.ase import AseAtomsAdaptor

    objs = [good_structures[0], AseAtomsAdaptor.get_atoms(good_structures[1]), good_structures[2].as_dict(),
            good_structures[3].to(fmt="cif")]
    df = pd.DataFrame({"material_id": [s.properties["id"] for s in good_structures], "obj": objs,
                       "energy": good_targets["energy"], "gap": good_targets["gap"]})
    ds = load_dataset(df, targets=["energy", "gap"])
    _check_good(ds, good_structures, good_targets)
    dis = load_dataset(pd.DataFrame({"structure": [disordered_structure], "y": [1.0]}), targets=["y"])
    row = dis[0].species[0]
    assert row[25] == 0.5 and row[26] == 0.5  # Fe (Z=26), Co (Z=27): occupancies kept


def test_list_of_structures(good_structures, good_targets):
    ds = load_dataset(list(good_structures), targets=good_targets)
    _check_good(ds, good_structures, good_targets)
    with pytest.raises(TypeError):
        load_dataset(list(good_structures), targets=["energy"])


def test_ids_fall_back_to_row_numbers(good_structures):
    df = pd.DataFrame({"cif": [s.to(fmt="cif") for s in good_structures[:2]]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        ds = load_dataset(df)
    assert ds.ids == ["0", "1"] and ds.target_names == ()


# -- ASE routes against the pymatgen route ------------------------------------------------------------------


def _ase_routes(structure, folder: Path, tag: str) -> dict:
    """Crystals of ``structure`` through every ASE route, read from files in ``folder`` (relative paths)."""
    import ase.io
    from ase.db import connect
    from pymatgen.io.cif import CifWriter

    from crystalframer.data.structures import to_crystal

    cif = folder / f"{tag}.cif"
    CifWriter(structure).write_file(str(cif))
    atoms = ase.io.read(str(cif))  # ASE's own CIF reader: occupancies keyed by spacegroup_kinds
    out = {"pymatgen file": load_dataset(cif, on_error="raise")[0], "ase cif": to_crystal(atoms)}
    ase.io.write(str(folder / f"{tag}.extxyz"), atoms, format="extxyz")
    out["ase extxyz"] = load_dataset(folder / f"{tag}.extxyz", on_error="raise")[0]
    if structure.is_ordered:  # POSCAR and ASE's database hold one element per site
        structure.to(filename=str(folder / f"{tag}.vasp"), fmt="poscar")
        out["ase poscar"] = to_crystal(ase.io.read(str(folder / f"{tag}.vasp"), format="vasp"))
        with connect(str(folder / f"{tag}.db")) as db:
            db.write(atoms, material_id=tag)
        out["ase db"] = load_dataset(folder / f"{tag}.db", on_error="raise")[0]
    return out


def _check_routes(routes: dict, model) -> None:
    from tests.conftest import same_sites

    ref = routes.pop("pymatgen file")
    y_ref = model.predict([ref])
    for route, c in routes.items():
        assert same_sites(c, ref), f"{route}: species or coordinates differ from pymatgen's"
        np.testing.assert_allclose(model.predict([c]), y_ref, rtol=1e-6, atol=1e-8, err_msg=route)  # files: ~1e-9 Å


def test_every_ase_route_matches_pymatgen_on_small_cells(tmp_path, monkeypatch, ase_route_cells, tiny_predictor):
    monkeypatch.chdir(tmp_path)
    Path("cells").mkdir()
    for s in ase_route_cells:
        routes = _ase_routes(s, Path("cells"), s.properties["id"])
        assert len(routes) == (5 if s.is_ordered else 3)
        _check_routes(routes, tiny_predictor)
    # the partially occupied sites survive ASE's CIF reader and extxyz
    import ase.io

    from crystalframer.data.structures import to_crystal

    c = to_crystal(ase.io.read("cells/FeCoSrO-partial.cif"))
    assert sorted(np.round(c.species.sum(axis=1), 6).tolist()) == [0.75, 1.0, 1.0]


def test_every_ase_route_matches_pymatgen_on_real_files(shared_data, tmp_path, monkeypatch, tiny_predictor):
    from pymatgen.core import Structure

    from tests.conftest import read_csv_gz

    monkeypatch.chdir(tmp_path)
    Path("real").mkdir()
    rows = [("perov_5", r.material_id, r.cif) for r in read_csv_gz(shared_data / "perov_5" / "test.csv.gz")
            .head(3).itertuples()]
    rows += [("mp_20", r.material_id, r.cif) for r in read_csv_gz(shared_data / "mp_20_subset" /
                                                                  "mp20_resplit_test_subset.csv.gz").head(3).itertuples()]
    for name, sid, cif in rows:
        s = Structure.from_str(cif, fmt="cif", primitive=False)
        routes = _ase_routes(s, Path("real"), f"{name}-{sid}")
        assert len(set(routes["ase cif"].atomic_numbers.tolist())) == len(s.composition.elements) > 1
        _check_routes(routes, tiny_predictor)


def test_ase_atoms_with_occupancies_that_do_not_match_are_refused(ase_route_cells):
    from pymatgen.io.ase import AseAtomsAdaptor

    from crystalframer.data.structures import to_crystal

    atoms = AseAtomsAdaptor.get_atoms(ase_route_cells[0])
    atoms.info["occupancy"] = {"0": {"Sr": 1.0}}
    with pytest.raises(InvalidStructureError, match="occupancies do not match"):
        to_crystal(atoms, id="mismatch")


# -- relative paths with a folder part -------------------------------------------------------------------


def test_relative_paths_with_a_folder_part(tmp_path, monkeypatch, good_structures, good_targets):
    monkeypatch.chdir(tmp_path)
    Path("structures").mkdir()
    for s in good_structures:
        s.to(filename=f"structures/{s.properties['id']}.cif")
    one = load_dataset("structures/s-nacl.cif", on_error="raise")
    assert one.ids == ["s-nacl"]
    folder = load_dataset("structures", on_error="raise")
    assert sorted(folder.ids) == sorted(s.properties["id"] for s in good_structures)
    with open("structures/id_prop.csv", "w") as f:
        for k, s in enumerate(good_structures):
            f.write(f"{s.properties['id']},{good_targets['gap'][k]}\n")
    labelled = load_dataset(Path("structures"), on_error="raise")
    assert labelled.targets[:, 0].tolist() == good_targets["gap"]
    # paths in a CSV stay relative to the CSV's own folder
    Path("tables").mkdir()
    pd.DataFrame({"file": [f"../structures/{s.properties['id']}.cif" for s in good_structures],
                  "gap": good_targets["gap"]}).to_csv("tables/index.csv", index=False)
    assert len(load_dataset("tables/index.csv", targets="gap", on_error="raise")) == 4


# -- multi-block CIF and VASP 4 POSCAR ------------------------------------------------------------------------


def _multi_block_cif(structures) -> str:
    from pymatgen.io.cif import CifWriter

    return "\n".join(str(CifWriter(s)) for s in structures)


def test_multi_block_cif_gives_one_structure_per_block(tmp_path, monkeypatch, good_structures):
    from crystalframer.data import read_structures, to_crystal

    from .conftest import CIF_TEMPLATE

    monkeypatch.chdir(tmp_path)
    Path("multi").mkdir()
    Path("multi/three.cif").write_text(_multi_block_cif(good_structures[:3]))
    ds = load_dataset("multi/three.cif", on_error="raise")
    assert ds.ids == ["three#0", "three#1", "three#2"]
    for c, s in zip(ds, good_structures):
        assert_same_crystal(c, s)
    crystals, errors = read_structures(["multi/three.cif"])
    assert [c.id for c in crystals] == ["three.cif#0", "three.cif#1", "three.cif#2"] and not errors
    with pytest.raises(InvalidStructureError, match="holds 3 structures"):
        to_crystal("multi/three.cif")
    # a bad block is reported alone; the good blocks are kept
    bad = CIF_TEMPLATE.format(name="ov", rows="  Na Na0 0 0 0 1\n  Cl Cl1 0.01 0 0 1")
    Path("multi/mixed.cif").write_text(_multi_block_cif(good_structures[:1]) + "\n" + bad)
    mixed = load_dataset("multi/mixed.cif")
    assert mixed.ids == ["mixed#0"] and [e.id for e in mixed.errors] == ["mixed#1"]
    assert "overlapping" in mixed.errors[0].message
    # one row of targets cannot label several structures
    Path("multi/id_prop.csv").write_text("three,1.0\nmixed,2.0\n")
    labelled = load_dataset("multi")
    assert not len(labelled) and "holds 3 structures but one row of targets" in labelled.errors[0].message


VASP4 = """SrTiO3 without element names
3.905
1 0 0
0 1 0
0 0 1
1 1 3
Direct
0 0 0
0.5 0.5 0.5
0.5 0.5 0
0.5 0 0.5
0 0.5 0.5
"""


def test_vasp4_poscar_without_element_names_is_refused(tmp_path, monkeypatch):
    from crystalframer.data import to_crystal

    monkeypatch.chdir(tmp_path)
    Path("v4").mkdir()
    Path("v4/POSCAR").write_text(VASP4)
    ds = load_dataset("v4/POSCAR")
    assert not len(ds) and "no element names" in ds.errors[0].message
    with pytest.raises(InvalidStructureError, match="no element names"):
        to_crystal("v4/POSCAR")
    text = pd.DataFrame({"material_id": ["v4"], "poscar": [VASP4], "y": [1.0]})
    assert "no element names" in load_dataset(text, targets="y").errors[0].message
    named = VASP4.replace("1 1 3\n", "Sr Ti O\n1 1 3\n")
    Path("v4/POSCAR").write_text(named)
    assert load_dataset("v4/POSCAR", on_error="raise")[0].atomic_numbers.tolist() == [38, 22, 8, 8, 8]


def test_duplicate_ids_are_warned_once_naming_them(good_structures):
    items = list(good_structures) + [good_structures[0].copy(), good_structures[2].copy()]
    for s, sid in zip(items[-2:], ("s-nacl", "s-srtio3")):
        s.properties["id"] = sid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(items)
    dup = [str(w.message) for w in caught if "duplicate id" in str(w.message)]
    assert len(ds) == 6 and len(dup) == 1 and "'s-nacl'" in dup[0] and "'s-srtio3'" in dup[0]


def test_on_error_accepts_only_the_documented_values(good_structures):
    with pytest.raises(ValueError, match=r"on_error must be one of \('raise', 'skip'\), got 'ignore'"):
        load_dataset(list(good_structures), on_error="ignore")
