"""CrystalDataset: splits (determinism, disjointness, column, saved), target statistics, batching."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from crystalframer.data import CrystalBatch, CrystalDataset, load_dataset, split_indices
from crystalframer.data.datasets import TargetStats
from crystalframer.data.splits import normalize_split_label
from crystalframer.data.structures import Crystal


def _toy(n: int, targets: np.ndarray | None = None, labels=None) -> CrystalDataset:
    """n one-atom cubic crystals (lattice constant varies) with targets (n, k)."""
    crystals = []
    for i in range(n):
        sp = np.zeros((1, 98))
        sp[0, i % 90] = 1.0
        crystals.append(Crystal(lattice=np.eye(3) * (3.0 + 0.01 * i), positions=np.zeros((1, 3)), species=sp,
                                id=f"c{i}", targets=None if targets is None else targets[i]))
    names = () if targets is None else [f"t{j}" for j in range(targets.shape[1])]
    return CrystalDataset(crystals, names, split_labels=labels, name="toy")


def test_split_indices_rule_sizes_and_generator():
    parts = split_indices(1056)
    assert {k: len(v) for k, v in parts.items()} == {"train": 846, "val": 105, "test": 105}
    allidx = np.concatenate(list(parts.values()))
    assert sorted(allidx.tolist()) == list(range(1056))  # disjoint and complete
    ids = list(range(1056))
    random.Random(123).shuffle(ids)  # the documented generator
    assert parts["test"].tolist() == ids[-105:] and parts["val"].tolist() == ids[-210:-105]
    assert parts["train"].tolist() == ids[:846]
    unused = split_indices(1056, remainder="unused")
    assert len(unused["train"]) == 844 and unused["val"].tolist() == parts["val"].tolist()
    assert split_indices(10, (1.0, 0.0, 0.0))["test"].size == 0  # no ids[-0:] slip
    with pytest.raises(ValueError):
        split_indices(10, (0.8, 0.3, 0.1))


def test_random_split_deterministic_disjoint_and_seeded():
    ds = _toy(50, np.arange(50, dtype=float)[:, None])
    a, b = ds.split(), ds.split()
    for s in ("train", "val", "test"):
        assert a[s].ids == b[s].ids
    assert a.sizes() == {"train": 40, "val": 5, "test": 5}
    sets = [set(a[s].ids) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(ds.ids)
    c = ds.split(seed=7)
    assert c.train.ids != a.train.ids
    d = ds.split(fractions=(0.5, 0.25, 0.25))
    assert d.sizes() == {"train": 26, "val": 12, "test": 12}
    assert a.train.split_labels == ["train"] * 40


def test_split_from_column_and_aliases():
    labels = ["train", "valid", "validation", "test", "TRAIN", "val"]
    ds = _toy(6, np.ones((6, 1)), labels)
    parts = ds.split()
    assert parts.method == "column"
    assert parts.train.ids == ["c0", "c4"] and parts.val.ids == ["c1", "c2", "c5"] and parts.test.ids == ["c3"]
    assert ds.split(method="random").method == "random"
    with pytest.raises(ValueError, match="unknown split label"):
        normalize_split_label("holdout")
    with pytest.raises(ValueError, match="no split labels"):
        _toy(3).split(method="column")


def test_split_save_and_reload(tmp_path):
    ds = _toy(30, np.zeros((30, 1)))
    parts = ds.split(seed=5)
    parts.save(tmp_path / "split.json")
    again = ds.split(from_file=tmp_path / "split.json")
    assert again.method == "file"
    for s in ("train", "val", "test"):
        assert again[s].ids == parts[s].ids
    with pytest.raises(ValueError, match="not in"):
        _toy(10, np.zeros((10, 1))).split(from_file=tmp_path / "split.json")


def test_target_stats_population_std_nan_aware():
    y = np.array([[1.0, 10.0], [2.0, np.nan], [3.0, 30.0], [100.0, 1000.0]])
    ds = _toy(4, y, ["train", "train", "train", "test"])
    st = ds.target_stats()  # over the training split only
    np.testing.assert_allclose(st.mean, [2.0, 20.0])
    np.testing.assert_allclose(st.std, [np.sqrt(2 / 3), 10.0])  # population std (divide by N)
    np.testing.assert_array_equal(st.count, [3, 2])
    assert ds.split().target_stats().to_dict() == st.to_dict()
    every = ds.target_stats(split=None)
    np.testing.assert_allclose(every.mean[0], np.mean([1, 2, 3, 100]))
    z = st.normalize(torch.tensor(y[:3], dtype=torch.float64))
    assert torch.allclose(st.denormalize(z)[~torch.isnan(z)], torch.tensor(y[:3])[~torch.isnan(z)])
    const = _toy(3, np.ones((3, 1))).target_stats()
    assert const.std[0] == 0.0 and np.all(const.normalize(np.ones((3, 1))) == 0.0)  # no division by zero
    assert TargetStats.from_dict(st.to_dict()).names == ("t0", "t1")
    with pytest.raises(ValueError, match="no entry is labelled"):
        _toy(2, np.ones((2, 1)), ["val", "test"]).target_stats()


def test_collate_and_dataloader(good_structures, good_targets):
    ds = load_dataset(list(good_structures), targets=good_targets)
    batch = next(iter(ds.dataloader(batch_size=3)))
    assert isinstance(batch, CrystalBatch) and batch.num_graphs == 3
    assert batch.pos.shape == (2 + 2 + 5, 3) and batch.y.shape == (3, 2)
    assert batch.ids == ds.ids[:3]
    np.testing.assert_allclose(batch.lattice[2].numpy(), ds[2].lattice, rtol=1e-6)
    direct = CrystalDataset.collate_fn([ds[3]])
    assert torch.isnan(direct.y[0, 0])  # missing label stays NaN


def test_subset_concat_and_checks():
    ds = _toy(5, np.arange(10.0).reshape(5, 2), ["train", "val", "test", "train", "val"])
    sub = ds.subset([4, 0])
    assert sub.ids == ["c4", "c0"] and sub.split_labels == ["val", "train"]
    both = CrystalDataset.concat([sub, ds.subset([1])])
    assert len(both) == 3 and both.split_labels == ["val", "train", "val"]
    with pytest.raises(ValueError, match="targets"):
        CrystalDataset([ds[0]], ["only_one"])
    assert "5 crystals" in repr(ds)
