"""``target_transform="log"``: the model learns log y, and every prediction path (the returned model, the saved
checkpoint, ``predict``) gives y in its units."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from crystalframer.checkpoint import load
from crystalframer.training.evaluation import predict_crystals
from crystalframer.training.recipe import Recipe
from crystalframer.training.trainer import TrainConfig, train
from tests.training.helpers import TINY, perov_splits


def positive(crystals):
    """The same structures with targets exp(heat_all) > 0 (perov_5 heats are of both signs)."""
    return [dataclasses.replace(c, targets=np.exp(np.asarray(c.targets, np.float64))) for c in crystals]


@pytest.fixture(scope="module")
def log_run(shared_data, tmp_path_factory):
    s = perov_splits(shared_data, n_train=12, n_val=4, n_test=4)
    s = dataclasses.replace(s, train=positive(s.train), val=positive(s.val), test=positive(s.test))
    out = tmp_path_factory.mktemp("log") / "run"
    cfg = TrainConfig(model=dict(TINY), frame="max", preset="quick", output=str(out), progress_bar=False,
                      accelerator="cpu", devices=1, tensorboard=False, plots=False,
                      recipe={"epochs": 2, "swa_epochs": 0, "batch_size": 4, "target_transform": "log"})
    return train(cfg, splits=s, verbose=False), s


def test_log_transform_learns_log_targets_and_predicts_in_units(log_run):
    result, s = log_run
    model = result.model
    y = np.log([c.targets[0] for c in s.train])
    assert model.target_transform == "log"
    assert float(model.target_mean[0]) == pytest.approx(y.mean(), rel=1e-6)
    assert float(model.target_std[0]) == pytest.approx(y.std(), rel=1e-6)
    batch = model.collate(s.test)
    with torch.no_grad():
        raw = model(batch).double()[:, 0]
    expected = torch.exp(raw * model.target_std.double()[0] + model.target_mean.double()[0]).numpy()
    got = predict_crystals(model, s.test, 4, "cpu").y_pred[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert (got > 0).all()
    # The validation MAE logged during training (last epoch: the returned model, no SWA) is in the targets'
    # units, not std × the MAE of log y.
    val = predict_crystals(model, s.val, 4, "cpu")
    assert result.history[-1]["val_mae_heat_all"] == pytest.approx(
        float(np.mean(np.abs(val.y_pred[:, 0] - val.y_true[:, 0]))), rel=1e-5)


def test_log_transform_is_kept_by_the_checkpoint(log_run, monkeypatch):
    result, s = log_run
    monkeypatch.chdir(result.run_dir)
    ckpt = torch.load("checkpoints/last.pt", weights_only=True)
    assert ckpt["targets"]["transform"] == "log"
    loaded = load("checkpoints/last.pt")
    assert loaded.target_transform == "log"
    np.testing.assert_allclose(loaded.predict([c.to_pymatgen() for c in s.test])[:, 0],
                               predict_crystals(result.model, s.test, 4, "cpu").y_pred[:, 0], rtol=1e-5)


def test_log_transform_rejects_non_positive_targets_by_id(shared_data, tmp_path):
    s = perov_splits(shared_data, n_train=4, n_val=2, n_test=0)
    s.train[1] = dataclasses.replace(s.train[1], targets=np.array([0.0]))
    cfg = TrainConfig(model=dict(TINY), frame="max", preset="quick", output=str(tmp_path / "r"),
                      progress_bar=False, accelerator="cpu", devices=1, tensorboard=False, plots=False,
                      recipe={"epochs": 1, "swa_epochs": 0, "batch_size": 2, "target_transform": "log"})
    with pytest.raises(ValueError, match=f"needs targets > 0.*{s.train[1].id}"):
        train(cfg, splits=s, verbose=False)


def test_recipe_checks_the_transform():
    with pytest.raises(ValueError, match="target_transform"):
        Recipe(target_transform="sqrt")
    with pytest.raises(ValueError, match="regression"):
        Recipe(target_transform="log", loss="bce")
