"""The real data sets of ../shared/data: every structure loads with its natural targets (skipped if absent)."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pandas as pd
import pytest

from crystalframer.data import SHARED_SETS, load_shared


@pytest.fixture(scope="module")
def perov_test(shared_data, tmp_path_factory):
    """The complete Perov-5 test split (3,785 structures), loaded once through a fresh cache."""
    cache = tmp_path_factory.mktemp("perov-cache")
    t0 = time.perf_counter()
    ds = load_shared("perov_5", shared_data, split="test", cache_dir=cache)
    return ds, cache, time.perf_counter() - t0


def test_perov5_test_split_loads_completely(perov_test, shared_data):
    ds, _, _ = perov_test
    assert len(ds) == 3785 and not ds.errors  # every structure of the file
    assert ds.target_names == ("heat_all",) and ds.split_labels == ["test"] * 3785
    assert set(ds.num_atoms.tolist()) == {5}
    df = pd.read_csv(shared_data / "perov_5" / "test.csv.gz")
    assert ds.ids == [str(i) for i in df.material_id]
    np.testing.assert_array_equal(ds.targets[:, 0], df.heat_all.to_numpy())
    assert abs(ds.targets.mean() - 1.48) < 0.01  # README: mean 1.48


def test_perov5_cells_are_kept_as_given(perov_test, shared_data):
    """Same lattice and positions as pymatgen's ``Structure.from_str(cif, "cif")`` (no reduction)."""
    from pymatgen.core import Structure

    ds, _, _ = perov_test
    df = pd.read_csv(shared_data / "perov_5" / "test.csv.gz")
    for k in (0, 1, 1000, 3784):
        s = Structure.from_str(df.cif[k], fmt="cif")
        np.testing.assert_array_equal(ds[k].lattice, s.lattice.matrix)
        np.testing.assert_array_equal(ds[k].positions, s.cart_coords)


def test_perov5_cache_hit(perov_test, shared_data):
    ds, cache, first = perov_test
    t0 = time.perf_counter()
    again = load_shared("perov_5", shared_data, split="test", cache_dir=cache)
    assert again.from_cache and time.perf_counter() - t0 < first
    assert again.ids == ds.ids and np.array_equal(again.targets, ds.targets)
    for a, b in zip(again.crystals[::97], ds.crystals[::97]):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.species, b.species)


@pytest.mark.parametrize("name", ["perov_5", "jarvis_supercon", "carbon_24", "mp_20_subset", "mp_elastic_2015",
                                  "mp_dielectric_2017"])
def test_shared_sets_sample(shared_data, name):
    spec = SHARED_SETS[name]
    ds = load_shared(name, shared_data, limit=25)
    assert not ds.errors and ds.target_names == spec.targets
    splits = ["train", "val", "test"] if "" in spec.files else [s for s in ("train", "val", "test") if s in spec.files]
    assert sorted(set(ds.split_labels)) == sorted(splits)
    assert len(ds) == 25 * len(splits)
    assert np.isfinite(ds.targets).all()
    assert all(c.num_atoms >= 1 for c in ds)


def test_supercon_train_split_and_stats(shared_data):
    ds = load_shared("jarvis_supercon", shared_data, split="train")
    assert ds.split().sizes() == {"train": 846, "val": 0, "test": 0} and not ds.errors
    st = ds.target_stats()  # training split: README gives mean -3.5 and range -33.5 to 0
    assert abs(st.mean[0] + 3.5) < 0.05 and st.count[0] == 846
    assert -33.6 < ds.targets.min() and ds.targets.max() <= 0


def test_single_file_sets_get_the_seeded_split(shared_data):
    ds = load_shared("mp_20_subset", shared_data, split="val")
    assert len(ds) == 113 and not ds.errors  # 80/10/10 of 1,130 rows
    with gzip.open(shared_data / "mp_20_subset" / "mp20_resplit_test_subset.csv.gz", "rt") as f:
        df = pd.read_csv(f)
    from crystalframer.data import split_indices

    val_rows = split_indices(len(df))["val"]
    assert ds.ids == df.material_id.iloc[np.sort(val_rows)].tolist()  # file order
    with pytest.raises(ValueError, match="no 'train' split"):
        load_shared("carbon_24", shared_data, split="train")
