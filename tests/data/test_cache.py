"""Preprocessing cache: hits reproduce the data set, any change of input or setting misses, files are safe."""

from __future__ import annotations

import json
import time
import zipfile

import numpy as np
import pandas as pd
import pytest

from crystalframer.data import clear_cache, load_dataset
from crystalframer.data.cache import CACHE_SCHEMA_VERSION, content_digest, load_cached

from .conftest import BAD_CIFS

pytestmark = pytest.mark.filterwarnings("ignore:.*skipped.*:UserWarning")


def _same(a, b):
    assert a.ids == b.ids and a.target_names == b.target_names and a.split_labels == b.split_labels
    assert [tuple(e) for e in a.errors] == [tuple(e) for e in b.errors]
    for x, y in zip(a, b):
        assert np.array_equal(x.lattice, y.lattice) and np.array_equal(x.positions, y.positions)
        assert np.array_equal(x.species, y.species)
        assert np.array_equal(x.targets, y.targets, equal_nan=True)


@pytest.fixture()
def csv_file(tmp_path, good_structures):
    rows = []
    for k in range(40):  # enough rows that parsing is clearly slower than reading the cache
        s = good_structures[k % 4]
        rows.append((f"m{k}", s.to(fmt="cif"), float(k) if k % 7 else float("nan"), ["train", "val", "test"][k % 3]))
    rows.append(("bad-overlap", BAD_CIFS["bad-overlap"][0], 1.0, "train"))
    path = tmp_path / "d.csv"
    pd.DataFrame(rows, columns=["material_id", "cif", "y", "split"]).to_csv(path, index=False)
    return path


def test_second_load_hits_cache_faster_and_identical(tmp_path, csv_file):
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    first = load_dataset(csv_file, targets=["y"], cache_dir=cache)
    t1 = time.perf_counter()
    second = load_dataset(csv_file, targets=["y"], cache_dir=cache)
    t2 = time.perf_counter()
    assert not first.from_cache and second.from_cache
    assert second.cache_path == first.cache_path and first.cache_path.suffix == ".npz"
    assert t2 - t1 < t1 - t0
    _same(first, second)
    assert [e.id for e in second.errors] == ["bad-overlap"]
    assert len(list(cache.iterdir())) == 1  # no temporary files left behind
    with np.load(first.cache_path, allow_pickle=False) as z:  # plain arrays, no pickle
        header = json.loads(bytes(z["header"]).decode())
    assert header["schema"] == CACHE_SCHEMA_VERSION and header["key"] == first.cache_path.stem


def test_changing_file_or_setting_misses(tmp_path, csv_file):
    cache = tmp_path / "cache"
    base = load_dataset(csv_file, targets=["y"], cache_dir=cache)
    assert load_dataset(csv_file, targets=["y"], cache_dir=cache).from_cache
    other = load_dataset(csv_file, targets=["y"], structure_column="cif", cache_dir=cache)
    assert not other.from_cache  # a different setting, even one giving the same result
    assert not load_dataset(csv_file, targets=None, cache_dir=cache).from_cache
    df = pd.read_csv(csv_file)
    df.loc[0, "y"] = 123.0
    df.to_csv(csv_file, index=False)
    changed = load_dataset(csv_file, targets=["y"], cache_dir=cache)
    assert not changed.from_cache and changed.targets[0, 0] == 123.0 and base.targets[0, 0] != 123.0
    assert load_dataset(csv_file, targets=["y"], cache_dir=cache).from_cache


def test_referenced_structure_files_are_checked(tmp_path, good_structures):
    for s in good_structures[:2]:
        s.to(filename=str(tmp_path / f"{s.properties['id']}.cif"))
    (tmp_path / "id_prop.csv").write_text("s-nacl,1.0\ns-zno,2.0\ns-later,3.0\n")
    cache = tmp_path / "cache"
    a = load_dataset(tmp_path, cache_dir=cache)
    assert len(a) == 2 and a.errors[0].id == "s-later"
    assert load_dataset(tmp_path, cache_dir=cache).from_cache
    good_structures[2].to(filename=str(tmp_path / "s-later.cif"))  # the missing file appears
    b = load_dataset(tmp_path, cache_dir=cache)
    assert not b.from_cache and len(b) == 3 and not b.errors
    good_structures[3].to(filename=str(tmp_path / "s-nacl.cif"))  # a structure file is edited
    c = load_dataset(tmp_path, cache_dir=cache)
    assert not c.from_cache and c[0].num_atoms == 4

    # a CSV naming files: editing the referenced file (not the CSV) must miss
    pd.DataFrame({"file": ["s-zno.cif"], "y": [1.0]}).to_csv(tmp_path / "files.csv", index=False)
    d1 = load_dataset(tmp_path / "files.csv", targets=["y"], cache_dir=cache)
    good_structures[2].to(filename=str(tmp_path / "s-zno.cif"))
    d2 = load_dataset(tmp_path / "files.csv", targets=["y"], cache_dir=cache)
    assert not d2.from_cache and d1[0].num_atoms == 2 and d2[0].num_atoms == 5


def test_dataframe_content_key_and_corrupt_file(tmp_path, good_structures):
    cache = tmp_path / "cache"
    df = pd.DataFrame({"structure": list(good_structures), "y": [1.0, 2.0, 3.0, 4.0]})
    a = load_dataset(df, targets=["y"], cache_dir=cache)
    assert load_dataset(df.copy(), targets=["y"], cache_dir=cache).from_cache
    moved = [s.copy() for s in good_structures]
    moved[0].translate_sites([0], [0.01, 0, 0], frac_coords=True)
    assert not load_dataset(df.assign(structure=moved), targets=["y"], cache_dir=cache).from_cache
    assert content_digest(df) != content_digest(df.assign(y=[1.0, 2.0, 3.0, 4.5]))
    a.cache_path.write_bytes(b"garbage")  # a damaged file is ignored and rewritten
    with pytest.warns(UserWarning, match="unreadable cache"):
        b = load_dataset(df, targets=["y"], cache_dir=cache)
    assert not b.from_cache
    assert zipfile.is_zipfile(b.cache_path) and load_cached(b.cache_path, b.cache_path.stem) is not None
    assert load_cached(b.cache_path, "0" * 64) is None  # another key never matches
    assert clear_cache(cache) == 2  # two contents were cached: df and the moved one


def test_an_edited_cache_file_at_the_right_key_is_not_trusted(tmp_path, csv_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = load_dataset(csv_file.name, targets=["y"], cache_dir="cache")
    with np.load(first.cache_path, allow_pickle=False) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["targets"][0, 0] = 1234.5  # well-formed, same key, other labels
    with open(first.cache_path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.warns(UserWarning, match="does not match its checksum"):
        again = load_dataset(csv_file.name, targets=["y"], cache_dir="cache")
    assert not again.from_cache
    _same(first, again)
    assert load_dataset(csv_file.name, targets=["y"], cache_dir="cache").from_cache  # rebuilt and trusted again
