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


# -- corrupted, edited and hostile checkpoints ---------------------------------------------------------------


def test_a_flipped_byte_in_the_weights_is_caught_by_the_checksum(model, tmp_path):
    path = save_model(model, tmp_path / "m.pt")
    weight = model.state_dict()["embedding.weight"]
    data = bytearray(path.read_bytes())
    at = bytes(data).find(weight.numpy().tobytes())  # torch stores tensor bytes uncompressed
    assert at > 0
    data[at + 5] ^= 0x40
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load(bad)


def test_edited_weights_and_non_finite_weights_are_refused(model, tmp_path):
    raw = torch.load(save_model(model, tmp_path / "m.pt"), weights_only=True)
    assert len(raw["state_sha256"]) == 64
    raw["state_dict"]["embedding.weight"][0, 0] += 1.0
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="checksum"):
        load(tmp_path / "edited.pt")
    with torch.no_grad():
        model.embedding.weight[0, 0] = float("nan")  # a checksum that matches NaN weights
    save_model(model, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="'embedding.weight' holds non-finite"):
        load(tmp_path / "nan.pt")


def test_old_checkpoints_without_a_checksum_still_load(model, small_cells, tmp_path):
    raw = torch.load(save_model(model, tmp_path / "m.pt"), weights_only=True)
    del raw["state_sha256"]
    torch.save(raw, tmp_path / "old.pt")
    assert np.array_equal(load(tmp_path / "old.pt").predict(small_cells), model.predict(small_cells))


def test_absurd_model_size_in_the_config_is_refused_before_allocating(model, tmp_path):
    from crystalframer.models import CrystalFramer

    devices = []

    class Recording(CrystalFramer):
        def __init__(self, **kw):
            devices.append(torch.empty(0).device.type)  # the default device this build allocates on
            super().__init__(**kw)

    raw = torch.load(save_model(model, tmp_path / "m.pt"), weights_only=True)
    raw["config"]["model_dim"] = 10**7
    torch.save(raw, tmp_path / "huge.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load(tmp_path / "huge.pt", model_class=Recording)
    assert devices == ["meta"]  # only the memory-free shape check ran


def test_a_pickle_that_runs_code_is_refused_even_when_the_environment_forces_unsafe_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.chdir(tmp_path)
    torch.save({"format": FORMAT, "payload": _Touch("pwned")}, "evil.pt")
    with pytest.raises(CheckpointError, match="pickled objects are refused"):
        load("evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_written_files_follow_the_umask(model, tmp_path):
    import os

    old = os.umask(0o027)
    try:
        path = save_model(model, tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


class _Touch:
    """Unpickling this creates a file (what an attacker's checkpoint would do with os.system)."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return (open, (self.name, "w"))
