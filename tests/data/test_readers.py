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
