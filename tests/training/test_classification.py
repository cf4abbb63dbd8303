"""Binary classification (loss "bce"): metrics, loss, label checks and a run on real mp_20 band gaps
(non-metal = band_gap > 0, the metal/non-metal task of ECN)."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crystalframer.checkpoint import load
from crystalframer.training.data import DataSpec, resolve_data
from crystalframer.training.metrics import check_binary_labels, classification_metrics, masked_loss
from crystalframer.training.trainer import TrainConfig, train
from tests.training.helpers import TINY


def test_classification_metrics_against_direct_counts():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, size=(40, 1)).astype(float)
    p = np.round(rng.random((40, 1)), 1)  # rounded: tied scores
    t[3, 0] = np.nan
    r = classification_metrics(t, p, ["y"])["y"]
    m = np.isfinite(t[:, 0])
    tt, pp = t[m, 0], p[m, 0]
    pred = pp >= 0.5
    assert r["n"] == 39
    assert r["accuracy"] == pytest.approx(np.mean(pred == (tt == 1)))
    assert r["recall"] == pytest.approx(np.sum(pred & (tt == 1)) / np.sum(tt == 1))
    assert r["recall_0"] == pytest.approx(np.sum(~pred & (tt == 0)) / np.sum(tt == 0))
    pos, neg = pp[tt == 1], pp[tt == 0]
    auc = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)])
    assert r["roc_auc"] == pytest.approx(auc)
    assert classification_metrics(np.zeros((5, 1)), np.full((5, 1), 0.2), ["y"])["y"]["accuracy"] == 1.0
    assert np.isnan(classification_metrics(np.zeros((5, 1)), np.full((5, 1), 0.2), ["y"])["y"]["roc_auc"])


def test_bce_loss_leaves_missing_labels_out():
    pred = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 1.5]])
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 0.0]])
    ref0 = F.binary_cross_entropy_with_logits(pred[:, 0], y[:, 0])
    ref1 = F.binary_cross_entropy_with_logits(pred[1:, 1], y[1:, 1])
    assert float(masked_loss(pred, y, "bce")) == pytest.approx(float(ref0 + ref1), rel=1e-6)


def test_non_binary_labels_are_refused_by_name():
    with pytest.raises(ValueError, match="'mp-2'.*band_gap = 1.3"):
        check_binary_labels(np.array([[0.0], [1.3], [1.0]]), ["band_gap"], ["mp-1", "mp-2", "mp-3"])
    check_binary_labels(np.array([[0.0], [np.nan], [1.0]]), ["band_gap"])


@pytest.fixture(scope="module")
def metal_run(shared_data, tmp_path_factory):
    spec = DataSpec(dataset="mp_20_subset", root=str(shared_data), targets=["band_gap"],
                    binarize={"band_gap": 0.0}, limit=96)
    splits = resolve_data(spec)
    out = tmp_path_factory.mktemp("cls") / "metal"
    cfg = TrainConfig(model=dict(TINY), frame="max", preset="quick", data=spec, output=str(out),
                      recipe={"epochs": 8, "swa_epochs": 2, "batch_size": 16, "lr": 3e-3, "loss": "bce"},
                      progress_bar=False, accelerator="cpu", devices=1, tensorboard=False, plots=True)
    return splits, train(cfg, splits=splits, verbose=False)


def test_binarized_band_gap_labels(metal_run):
    splits, _ = metal_run
    assert splits.target_names == ["band_gap>0"] and splits.target_units == [""]
    y = np.array([c.targets[0] for c in splits.train])
    assert set(np.unique(y)) == {0.0, 1.0}  # both metals and non-metals among real MP structures


def test_classifier_trains_and_predicts_probabilities(metal_run, tmp_path):
    splits, result = metal_run
    hist = result.history
    assert "val_acc_band_gap>0" in hist[-1] and 0 <= hist[-1]["val_acc_band_gap>0"] <= 1
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # BCE on real labels goes down
    test = result.metrics["swa"]["test"]["band_gap>0"]
    assert {"accuracy", "roc_auc", "recall", "recall_0", "log_loss"} <= set(test)
    # the saved model is a classifier: probabilities, the sigmoid of its logits
    model = load(result.run_dir / "model.pt")
    assert model.task == "classification" and float(model.target_std[0]) == 1.0
    prob = model.predict(splits.test[:8])
    batch = model.collate(splits.test[:8])
    with torch.no_grad():
        logits = model.eval()(batch)
    np.testing.assert_allclose(prob, torch.sigmoid(logits).double().numpy(), rtol=1e-6)
    assert ((prob > 0) & (prob < 1)).all()
    with open(result.run_dir / "predictions" / "swa_test.csv") as f:
        header = next(csv.reader(f))
    assert header[:2] == ["id", "band_gap>0_probability"]
    assert (result.run_dir / "learning_curves.png").exists()


def test_regression_model_with_bce_is_refused(shared_data, tmp_path):
    from crystalframer.models import CrystalFramer

    spec = DataSpec(dataset="mp_20_subset", root=str(shared_data), targets=["band_gap"], limit=8)
    cfg = TrainConfig(model=dict(TINY), frame="max", preset="quick", data=spec, output=str(tmp_path / "x"),
                      recipe={"epochs": 1, "swa_epochs": 0, "batch_size": 4, "loss": "bce"},
                      progress_bar=False, accelerator="cpu", devices=1, tensorboard=False, plots=False)
    with pytest.raises(ValueError, match="labels 0 or 1"):
        train(cfg, verbose=False)  # raw band gaps are not labels
    with pytest.raises(ValueError, match="regression model"):
        train(cfg, model=CrystalFramer(**TINY), verbose=False)
