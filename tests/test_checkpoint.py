"""Self-describing checkpoints: round trip, weights_only readability, clear errors for bad files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from crystalframer.checkpoint import (FORMAT, CheckpointError, describe, load, load_checkpoint, read_header,
                                      save_model)
from tests.training.helpers import tiny_model


@pytest.fixture()
def model(small_cells):
    torch.manual_seed(0)
    m = tiny_model(frame="max")
    with torch.no_grad():
        m.target_mean.fill_(-1.25)
        m.target_std.fill_(0.5)
    m.train()
    m(m.collate([_crystal(s) for s in small_cells]))  # calibrate the σ normalisation (stored in the weights)
    return m.eval()


def _crystal(s):
    from crystalframer.data.structures import to_crystal

    return to_crystal(s)


def test_round_trip_predicts_identically(model, small_cells, tmp_path):
    path = save_model(model, tmp_path / "m.pt", extra={"note": "unit test", "tuple": (1, 2)},
                      training={"epochs": 3, "seed": np.int64(7)})
    again = load(path)
    assert type(again) is type(model) and again.config == model.config and not again.training
    for (n, p), (n2, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n == n2 and torch.equal(p, q)
    a = model.predict(small_cells)
    b = again.predict(small_cells)
    assert np.array_equal(a, b) and np.isfinite(a).all()
    info = again.checkpoint_info
    assert info["targets"] == {"names": ["heat_all"], "units": ["eV"], "mean": [-1.25], "std": [0.5]}
    assert info["training"] == {"epochs": 3, "seed": 7} and info["extra"] == {"note": "unit test", "tuple": [1, 2]}
    assert info["library_version"] and info["model_class"] == "CrystalFramer"
    assert "heat_all [eV]: mean -1.25, std 0.5" in describe(path)


def test_checkpoint_is_plain_data_for_weights_only_loading(model, tmp_path):
    path = save_model(model, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # raises on any pickled object
    assert raw["format"] == FORMAT and isinstance(raw["state_dict"], dict)
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())
    assert "state_dict" not in read_header(path)
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed into place


def test_atomic_save_keeps_the_old_file_when_writing_fails(model, tmp_path, monkeypatch):
    path = save_model(model, tmp_path / "m.pt")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_bad_files_give_clear_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="file not found"):
        load(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage, not a torch file" * 10)
    with pytest.raises(CheckpointError, match="not a readable crystalframer checkpoint"):
        load(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match="not a crystalframer checkpoint"):
        load(foreign)
    pickled = tmp_path / "pickled.pt"
    with open(pickled, "wb") as f:
        pickle.dump({"format": FORMAT, "obj": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only"):
        load(pickled)
    assert not _Evil.ran
    assert issubclass(CheckpointError, ValueError)


def test_unknown_class_and_mismatched_weights(model, tmp_path):
    raw = torch.load(save_model(model, tmp_path / "m.pt"), weights_only=True)
    raw["model_class"] = "NoSuchModel"
    torch.save(raw, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="unknown model class 'NoSuchModel'"):
        load(tmp_path / "unknown.pt")
    raw["model_class"] = "CrystalFramer"
    raw["config"]["model_dim"] = 64
    raw["config"]["ff_dim"] = 128
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load(tmp_path / "mismatch.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "future.pt")


class _Evil:
    ran = False

    def __reduce__(self):
        return (_Evil._run, ())

    @staticmethod
    def _run():
        _Evil.ran = True
        return None
