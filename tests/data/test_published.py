"""Published sets (Ito et al., ICLR 2025) with small fake jarvis-tools lists: keys, filtering, conversion, splits."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from crystalframer.data.io.jarvis import jarvis_atoms_to_crystal
from crystalframer.data.sources import published as pub
from crystalframer.data.sources.published import (PUBLISHED_SETS, filter_entries, load_published, load_split_file,
                                                  split_published)
from crystalframer.data.splits import official_split_indices

pytestmark = pytest.mark.filterwarnings("ignore:.*split sizes.*differ:UserWarning")


def _atoms(k: int, cartesian: bool = False, elements=("Na", "Cl")) -> dict:
    """A jarvis atoms dict: a slightly sheared rock-salt-like two-atom cell (varies with k)."""
    lat = np.array([[4.0 + 0.01 * k, 0.1, 0.0], [0.0, 4.2, 0.2], [0.3, 0.0, 4.4]])
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5 + 0.001 * k]])
    coords = frac @ lat if cartesian else frac
    return {"lattice_mat": lat.tolist(), "coords": coords.tolist(), "elements": list(elements),
            "abc": [4.0, 4.2, 4.4], "angles": [90.0, 90.0, 90.0], "cartesian": cartesian, "props": ["", ""]}


def _dft3d(n: int = 40) -> list[dict]:
    """Fake dft_3d_2021 entries; some labels invalid as in the real download ('na', None, NaN, inf)."""
    out = []
    for k in range(n):
        out.append({"jid": f"JVASP-{1000 + k}", "atoms": _atoms(k, cartesian=k % 2 == 1),
                    "formation_energy_peratom": -0.1 * k, "optb88vdw_total_energy": -3.0 - k,
                    "optb88vdw_bandgap": 0.05 * k, "mbj_bandgap": "na" if k % 3 else 1.0 + k, "ehull": 0.01 * k,
                    "spillage": "na"})
    out[3]["formation_energy_peratom"] = "na"
    out[5]["optb88vdw_bandgap"] = None
    out[7]["optb88vdw_total_energy"] = float("nan")
    out[9]["optb88vdw_bandgap"] = float("inf")
    del out[11]["formation_energy_peratom"]
    out[13]["optb88vdw_bandgap"] = True  # a bool is not a label
    out[15]["optb88vdw_bandgap"] = 2  # an int is
    return out


DROPPED = {3, 5, 7, 9, 11, 13}


@pytest.fixture()
def fake_jarvis(monkeypatch):
    calls = []
    data = {"dft_3d_2021": _dft3d()}

    def fetch(name, store_dir=None):
        calls.append(name)
        return data[name]

    monkeypatch.setattr(pub, "fetch_jarvis", fetch)
    return data, calls


def test_official_rule_reproduces_published_split_files():
    parts = official_split_indices(55723)  # dft_3d_2021: every entry is kept, so indices = data_idx
    assert [len(parts[s]) for s in ("train", "val", "test")] == [44578, 5572, 5572]
    used = np.concatenate([parts[s] for s in ("train", "val", "test")])
    assert len(np.unique(used)) == len(used) == 55722  # one entry unused
    assert parts["train"][:5].tolist() == [45770, 5340, 6395, 3105, 3588]  # the first entries of the official train.pkl
    assert parts["train"][-3:].tolist() == [52683, 25057, 2724]
    assert parts["val"][:3].tolist() == [8987, 5323, 18355]
    mp = official_split_indices(69239, PUBLISHED_SETS["jarvis__megnet"].fixed_sizes)
    assert [len(mp[s]) for s in ("train", "val", "test")] == [60000, 5000, 4239]
    assert mp["test"][:4].tolist() == [22274, 31381, 19400, 58740]  # jarvis__megnet/test.pkl
    for n, sizes in [(18172, (14537, 1817, 1817)), (55370, (44296, 5537, 5537))]:
        got = official_split_indices(n)
        assert tuple(len(got[s]) for s in ("train", "val", "test")) == sizes


def test_filtering_mapping_and_conversion(fake_jarvis):
    entries, calls = fake_jarvis[0]["dft_3d_2021"], fake_jarvis[1]
    spec = PUBLISHED_SETS["jarvis__dft_3d_2021"]
    kept = filter_entries(entries, spec)
    assert set(range(40)) - set(kept.tolist()) == DROPPED
    ds = load_published("jarvis__dft_3d_2021")
    assert calls == ["dft_3d_2021"]
    assert ds.target_names == ("formation_energy", "total_energy", "opt_bandgap")
    assert len(ds) == 27 + 3 + 3  # 34 kept: int(0.8·34) + 2·int(0.1·34), one left unused
    by_id = {c.id: c for c in ds}
    e = entries[15]
    np.testing.assert_array_equal(by_id["JVASP-1015"].targets,
                                  [e["formation_energy_peratom"], e["optb88vdw_total_energy"], 2.0])
    from jarvis.core.atoms import Atoms

    for k in (0, 1, 16, 17):  # fractional and Cartesian inputs: same positions as the official conversion
        a = entries[k]["atoms"]
        ref = Atoms(lattice_mat=a["lattice_mat"], coords=a["coords"], elements=a["elements"],
                    cartesian=a["cartesian"]).pymatgen_converter()
        c = by_id.get(f"JVASP-{1000 + k}") or jarvis_atoms_to_crystal(a, "x")
        np.testing.assert_allclose(c.positions, ref.cart_coords, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(c.lattice, ref.lattice.matrix)
        assert c.atomic_numbers.tolist() == [11, 17]
    mbj = load_published("jarvis__dft_3d_2021-mbj_bandgap", targets=["mbj_bandgap"])
    assert len(mbj) > 0 and all((int(c.id[6:]) - 1000) % 3 == 0 for c in mbj)  # only numeric mbj labels
    with pytest.raises(ValueError, match="not"):
        load_published("jarvis__dft_3d_2021", targets=["gap"])


def test_split_follows_rule_and_invalid_structure_does_not_shift_it(fake_jarvis):
    entries = fake_jarvis[0]["dft_3d_2021"]
    entries[20]["atoms"]["coords"][1] = [0.001, 0.0, 0.0]  # overlapping atoms in a kept entry
    spec = PUBLISHED_SETS["jarvis__dft_3d_2021"]
    data_idx, parts = split_published(entries, spec)
    n = len(data_idx)
    assert n == 34 and [len(parts[s]) for s in ("train", "val", "test")] == [27, 3, 3]
    rule = official_split_indices(n)
    for s in ("train", "val", "test"):
        assert parts[s].tolist() == rule[s].tolist()
    expected = {s: [entries[i]["jid"] for i in data_idx[parts[s]] if i != 20] for s in ("train", "val", "test")}
    with pytest.warns(UserWarning, match="skipped 1 invalid"):
        ds = load_published("jarvis__dft_3d_2021")
    assert [e.id for e in ds.errors] == ["JVASP-1020"] and ds.errors[0].index == 20
    assert "overlapping" in ds.errors[0].message
    got = ds.split()
    for s in ("train", "val", "test"):
        assert got[s].ids == expected[s]
    test_only = load_published("jarvis__dft_3d_2021", split="test")
    assert test_only.ids == expected["test"] and test_only.split_labels == ["test"] * len(expected["test"])


def test_split_files_are_used_and_read_safely(tmp_path, fake_jarvis):
    entries = fake_jarvis[0]["dft_3d_2021"]
    folder = tmp_path / "splits" / "jarvis__dft_3d_2021"
    folder.mkdir(parents=True)
    chosen = {"train": [39, 0, 15, 2], "val": [4, 6], "test": [38, 1]}  # indices into the unfiltered list
    for proto, (s, idx) in zip((2, 4, 5), chosen.items()):
        with open(folder / f"{s}.pkl", "wb") as f:
            pickle.dump(np.array(idx, dtype=np.int64), f, protocol=proto)
    assert load_split_file(folder / "val.pkl").tolist() == [4, 6]
    ds = load_published("jarvis__dft_3d_2021", splits_dir=tmp_path / "splits")
    parts = ds.split()
    for s, idx in chosen.items():
        assert parts[s].ids == [entries[i]["jid"] for i in idx]
    with open(folder / "test.pkl", "wb") as f:  # index 3 was filtered out: the file does not match
        pickle.dump(np.array([3], dtype=np.int64), f)
    with pytest.raises(ValueError, match="does not match"):
        load_published("jarvis__dft_3d_2021", splits_dir=tmp_path / "splits")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_split_file_reader_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError, match="refusing|not a safely"):
        load_split_file(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned-by-pickle").exists()
    (tmp_path / "ids.pkl").write_bytes(pickle.dumps(["JVASP-1", "JVASP-2"]))
    with pytest.raises(ValueError, match="make_id_list"):
        load_split_file(tmp_path / "ids.pkl")
    (tmp_path / "f.pkl").write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(ValueError, match="integer"):
        load_split_file(tmp_path / "f.pkl")


def test_oqmd_strips_elements_and_drops_unconvertible(monkeypatch):
    entries = []
    for k in range(20):
        entries.append({"_oqmd_entry_id": 500 + k, "atoms": _atoms(k, elements=(" Na", "Cl ")),
                        "_oqmd_delta_e": -0.2 * k, "_oqmd_stability": 0.01 * k,
                        "_oqmd_band_gap": None if k == 4 else 0.5})
    entries[6]["atoms"]["elements"] = ["Na", "*"]  # pymatgen cannot convert: dropped before splitting
    entries[8]["atoms"]["elements"] = ["Na", "Zz"]  # pymatgen makes a DummySpecies: kept, then invalid
    monkeypatch.setattr(pub, "fetch_jarvis", lambda name, store_dir=None: entries)
    data_idx, parts = split_published(entries, PUBLISHED_SETS["jarvis__oqmd_3d"])
    assert 6 not in data_idx and 4 in data_idx and 8 in data_idx and len(data_idx) == 19
    with pytest.warns(UserWarning, match="skipped 1 invalid"):
        ds = load_published("jarvis__oqmd_3d")
    assert ds.target_names == ("delta_e", "stability")
    assert [(e.index, e.id) for e in ds.errors] == [(8, "508")] and "Zz" in ds.errors[0].message
    assert all(c.atomic_numbers.tolist() == [11, 17] for c in ds) and ds[0].id.isdigit()
    with pytest.warns(UserWarning, match="skipped 1 invalid"):
        gap = load_published("jarvis__oqmd_3d-bandgap")
    assert "504" not in gap.ids and "506" not in gap.ids


def test_megnet_fixed_sizes_and_mapping():
    spec = PUBLISHED_SETS["jarvis__megnet"]
    atoms = _atoms(0)
    entries = [{"id": f"mp-{k}", "atoms": atoms, "e_form": -1.0, "gap pbe": 0.5} for k in range(69239)]
    entries.append({"id": "mp-bad", "atoms": atoms, "e_form": "na", "gap pbe": 0.5})
    data_idx, parts = split_published(entries, spec)
    assert len(data_idx) == 69239 and [len(parts[s]) for s in ("train", "val", "test")] == [60000, 5000, 4239]
    assert dict(spec.labels) == {"e_form": "e_form", "gap pbe": "bandgap"}


def test_matformer_elastic_pickles(tmp_path):
    for s, n in (("train", 3), ("val", 2), ("test", 1)):
        data = [{"id": f"mp-{s}-{k}", "atoms": _atoms(k), "bulk modulus": np.float64(1.5 + k)} for k in range(n)]
        (tmp_path / f"bulk_modulus_megnet_{s}.pkl").write_bytes(pickle.dumps(data))
    ds = load_published("jarvis__megnet-bulk_modulus", store_dir=tmp_path, download=False)
    assert ds.target_names == ("bulk_modulus",) and len(ds) == 6
    assert ds.split().sizes() == {"train": 3, "val": 2, "test": 1}
    assert ds.split().val.targets[:, 0].tolist() == [1.5, 2.5]
    with pytest.raises(FileNotFoundError):
        load_published("jarvis__megnet-shear_modulus", store_dir=tmp_path, download=False)


def test_zip_download_is_read_and_cached(tmp_path):
    entries = _dft3d(24)
    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(store / "jdft_3d-8-18-2021.json.zip", "w") as z:  # the file jarvis-tools writes
        z.writestr("jdft_3d-8-18-2021.json", json.dumps(entries))
    assert pub.fetch_jarvis("dft_3d_2021", store) == json.loads(json.dumps(entries))
    a = load_published("jarvis__dft_3d_2021-ehull", store_dir=store, cache_dir=tmp_path / "cache")
    b = load_published("jarvis__dft_3d_2021-ehull", store_dir=store, cache_dir=tmp_path / "cache")
    assert not a.from_cache and b.from_cache and a.ids == b.ids and a.split_labels == b.split_labels
    assert not np.isnan(b.targets).any()
    c = load_published("jarvis__dft_3d_2021-ehull", split="val", store_dir=store, cache_dir=tmp_path / "cache")
    assert not c.from_cache and c.ids == b.split().val.ids
