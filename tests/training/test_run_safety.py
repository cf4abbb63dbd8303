"""Runs that must not start: hostile resume checkpoints, resumes of another run, labels that teach nothing,
run folders that hold a run already."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crystalframer.checkpoint import CheckpointError
from crystalframer.data.structures import Crystal
from crystalframer.training.data import Splits
from crystalframer.training.trainer import SafeCheckpointIO, TrainConfig, train
from tests.training.helpers import TINY, perov_splits


@pytest.fixture(scope="module")
def splits(shared_data):
    return perov_splits(shared_data, n_train=8, n_val=4, n_test=4)


def _config(out, **model) -> TrainConfig:
    return TrainConfig(model={**TINY, **model}, frame="none", preset="quick", output=str(out),
                       recipe={"epochs": 1, "swa_epochs": 0, "batch_size": 4}, progress_bar=False,
                       accelerator="cpu", devices=1, tensorboard=False, plots=False)


@pytest.fixture(scope="module")
def finished(splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    train(_config(out), splits=splits, verbose=False)
    return out


class _Touch:
    """Unpickling this creates a file: what an attacker's checkpoint would do with os.system."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return (open, (self.name, "w"))


def _relabel(crystals, y):
    return [Crystal(c.lattice, c.positions, c.species, c.id, np.array([v], np.float64), dict(c.info))
            for c, v in zip(crystals, y)]


def test_resume_never_runs_a_pickled_payload(splits, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would make torch.load unsafe by default
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": _Touch("pwned")}, "run/checkpoints/last.ckpt")
    with pytest.raises(CheckpointError, match="pickled objects are refused"):
        train(_config("run"), resume=True, splits=splits, verbose=False)
    assert not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]  # nothing written
    with pytest.raises(CheckpointError, match="pickled objects are refused"):  # Lightning's own reads too
        SafeCheckpointIO().load_checkpoint("run/checkpoints/last.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_resume_with_other_settings_or_data_is_refused_before_writing(finished, splits):
    config_before = (finished / "config.json").read_bytes()
    with pytest.raises(ValueError, match=r"model model_dim: 32 -> 64"):
        train(_config(finished, model_dim=64), resume=True, splits=splits, verbose=False)
    other = Splits(splits.train[1:], splits.val, splits.test, splits.target_names, splits.target_units)
    with pytest.raises(ValueError, match=r"data: SHA-256"):
        train(_config(finished), resume=True, splits=other, verbose=False)
    relabelled = Splits(_relabel(splits.train, [c.targets[0] + 1 for c in splits.train]), splits.val, splits.test,
                        splits.target_names, splits.target_units)
    with pytest.raises(ValueError, match=r"data: SHA-256"):
        train(_config(finished), resume=True, splits=relabelled, verbose=False)
    cfg = _config(finished)
    cfg.recipe["lr"] = 1e-3
    with pytest.raises(ValueError, match=r"recipe lr: 0.0005 -> 0.001"):
        train(cfg, resume=True, splits=splits, verbose=False)
    assert (finished / "config.json").read_bytes() == config_before
    # the same run resumes (a finished run only re-evaluates)
    again = train(_config(finished), resume=True, splits=splits, verbose=False)
    assert again.metrics["global_steps"] == 2


def test_a_new_run_never_replaces_a_finished_one(finished, splits):
    ckpt = finished / "checkpoints" / "last.ckpt"
    moved = ckpt.with_name("moved.ckpt")
    ckpt.rename(moved)  # a run folder without its resume checkpoint still holds the run's results
    try:
        before = {p: p.read_bytes() for p in (finished / "model.pt", finished / "metrics.json",
                                              finished / "config.json")}
        with pytest.raises(FileExistsError, match="already holds a run .*model.pt.*--overwrite"):
            train(_config(finished), splits=splits, verbose=False)
        with pytest.raises(FileExistsError, match="already holds a run"):  # --resume without a checkpoint
            train(_config(finished), resume=True, splits=splits, verbose=False)
        assert all(p.read_bytes() == b for p, b in before.items())
    finally:
        moved.rename(ckpt)


@pytest.mark.parametrize("case, match", [
    ("no_numbers", "no numeric label among the 8 training structures"),
    ("beyond_float32", "beyond the float32 range"),
])
def test_labels_that_cannot_train_are_refused_before_anything_is_written(splits, tmp_path, case, match):
    y = [math.nan] * 8 if case == "no_numbers" else [1e39] + [1.0] * 7
    bad = Splits(_relabel(splits.train, y), splits.val, splits.test, splits.target_names, splits.target_units)
    with pytest.raises(ValueError, match=match):
        train(_config(tmp_path / "run"), splits=bad, verbose=False)
    assert not (tmp_path / "run").exists()


def test_a_classifier_with_one_class_is_refused(splits, tmp_path):
    one = Splits(_relabel(splits.train, [1.0] * 8), _relabel(splits.val, [1.0, 0.0, 1.0, 0.0]),
                 _relabel(splits.test, [0.0, 1.0, 0.0, 1.0]), ["metal"], [""])
    cfg = _config(tmp_path / "run")
    cfg.recipe["loss"] = "bce"
    with pytest.raises(ValueError, match="only one class"):
        train(cfg, splits=one, verbose=False)
    assert not (tmp_path / "run").exists()


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(splits, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # written at the start, before the first epoch ended
    with pytest.raises(FileExistsError, match=r"already holds a run \(config.json\)"):
        train(_config(tmp_path / "run"), splits=splits, verbose=False)
    result = train(_config(tmp_path / "run"), resume=True, splits=splits, verbose=False)
    assert result.metrics["global_steps"] == 2 and (tmp_path / "run" / "model.pt").is_file()
