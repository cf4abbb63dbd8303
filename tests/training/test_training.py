"""Training runs on real perov_5 structures with a tiny CrystalFramer: outputs, SWA, frozen LR, resume, NaN guard."""

from __future__ import annotations

import csv
import json
import math

import lightning as L
import numpy as np
import pytest
import torch

from crystalframer.checkpoint import load, load_checkpoint
from crystalframer.models import CrystalFramer, register_model
from crystalframer.training.data import EpochShardSampler
from crystalframer.training.evaluation import predict_crystals
from crystalframer.training.metrics import masked_loss
from crystalframer.training.recipe import cosine_factor, inverse_sqrt_factor
from crystalframer.training.trainer import TrainConfig, train
from tests.training.helpers import TINY, perov_splits


@pytest.fixture(scope="module")
def splits(shared_data):
    return perov_splits(shared_data, n_train=16, n_val=6, n_test=6)


def make_config(out, frame: str = "max", outputs: bool = False, **recipe) -> TrainConfig:
    """Tiny-model run on the CPU; ``outputs=False`` skips TensorBoard and the figures (speed)."""
    rec = {"epochs": 3, "swa_epochs": 2, "batch_size": 4, **recipe}
    return TrainConfig(model=dict(TINY), frame=frame, preset="quick", recipe=rec, output=str(out),
                       progress_bar=False, accelerator="cpu", devices=1, tensorboard=outputs, plots=outputs)


class Recorder(L.Callback):
    """Weights and LR after every optimizer step of the SWA phase."""

    def __init__(self):
        self.snaps: list[dict[str, torch.Tensor]] = []
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch >= pl_module.recipe.swa_start_epoch:
            self.snaps.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()
                               if p.requires_grad})
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.fixture(scope="module")
def run(splits, tmp_path_factory):
    rec = Recorder()
    out = tmp_path_factory.mktemp("run") / "perov"
    result = train(make_config(out, outputs=True), splits=splits, callbacks=[rec], verbose=False)
    return result, rec


def test_run_folder_outputs(run):
    result, _ = run
    d = result.run_dir
    for name in ("config.yaml", "config.json", "metrics.json", "model.pt", "history.csv", "learning_curves.png",
                 "parity_val.png", "parity_test.png", "checkpoints/best.pt", "checkpoints/last.pt",
                 "checkpoints/last.ckpt", "csv/metrics.csv", "predictions/swa_test.csv", "predictions/best_val.csv"):
        assert (d / name).is_file(), name
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))
    for png in d.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((d / "metrics.json").read_text())
    for which in ("swa", "best"):
        for split in ("val", "test"):
            m = metrics[which][split]["heat_all"]
            assert m["n"] == 6 and m["mae"] > 0 and math.isfinite(m["rmse"]) and math.isfinite(m["r2"])
    assert metrics["final_model"] == "swa" and metrics["global_steps"] == 12 and metrics["epochs"] == 3
    with open(d / "predictions" / "swa_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "heat_all [eV]", "heat_all_true [eV]"] and len(rows) == 6
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["resolved"]["recipe"]["bias_weight_decay"] == 0.01 and cfg["resolved"]["model_config"]["frame"] == "max"
    assert [h["epoch"] for h in result.history] == [0, 1, 2]


def test_targets_are_normalised_with_the_training_population_std(run, splits):
    result, _ = run
    y = np.array([c.targets[0] for c in splits.train])
    assert np.isclose(float(result.model.target_mean[0]), y.mean(), rtol=1e-6)
    assert np.isclose(float(result.model.target_std[0]), y.std(ddof=0), rtol=1e-6)


def test_swa_is_the_mean_of_the_weights_after_each_step(run):
    result, rec = run
    assert len(rec.snaps) == 8  # 2 SWA epochs × 4 steps
    assert result.metrics["swa_averaged_steps"] == 8
    swa = dict(result.model.named_parameters())
    for name, snaps in ((n, [s[n] for s in rec.snaps]) for n in rec.snaps[0]):
        assert torch.allclose(swa[name], torch.stack(snaps).mean(0), atol=1e-6), name
    # ... and differs from the last weights
    last = load(result.run_dir / "checkpoints" / "last.pt")
    assert any(not torch.allclose(p, dict(last.named_parameters())[n]) for n, p in swa.items() if n in rec.snaps[0])


def test_lr_is_frozen_during_swa(run):
    result, rec = run
    expected = 5e-4 * inverse_sqrt_factor(4)  # 4 scheduler steps in the one pre-SWA epoch
    assert all(lr == pytest.approx(expected, rel=1e-12) for lr in rec.lrs)
    assert [h["lr"] for h in result.history] == pytest.approx([expected] * 3, rel=1e-12)


def test_saved_final_model_predicts_like_the_returned_swa_model(run, splits):
    result, _ = run
    model = load(result.run_dir / "model.pt")
    a = predict_crystals(model, splits.test, batch_size=3).y_pred
    b = predict_crystals(result.model, splits.test, batch_size=6).y_pred
    assert np.allclose(a, b, atol=1e-6)
    mae = np.mean(np.abs(a[:, 0] - np.array([c.targets[0] for c in splits.test])))
    assert mae == pytest.approx(result.metrics["swa"]["test"]["heat_all"]["mae"], rel=1e-5)
    info = model.checkpoint_info
    assert info["training"]["selection"] == "swa" and info["targets"]["units"] == ["eV"]
    # the Lightning resume checkpoint is self-describing too
    ck = load_checkpoint(result.run_dir / "checkpoints" / "last.ckpt")
    assert ck["model_class"] == "CrystalFramer" and "layers.0.attn.w_q" in "".join(ck["state_dict"])


def test_training_reduces_the_loss(shared_data, tmp_path):
    """20 steps on 8 real structures (one batch) must fit them clearly better than the first step did."""
    small = perov_splits(shared_data, n_train=8, n_val=4, n_test=4)
    small.val = []  # no validation: this test is about the fit (best = last without validation data)
    result = train(make_config(tmp_path / "fit", epochs=20, swa_epochs=0, lr=1e-2, batch_size=8), splits=small,
                   verbose=False)
    first_epoch = result.history[0]["train_loss"]
    model = result.model
    batch = model.collate(small.train)
    with torch.no_grad():
        y = (batch.y - model.target_mean) / model.target_std
        final = float(masked_loss(model(batch), y))
    assert result.metrics["final_model"] == "last"
    assert final < 0.7 * first_epoch, (first_epoch, final, [h["train_loss"] for h in result.history])


class Kill(L.Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated kill")


def test_resume_after_a_kill_matches_an_uninterrupted_run(splits, tmp_path):
    # 3 epochs of 4 steps; SWA in epochs 1-2. The kill comes in the middle of epoch 2, so the resume
    # checkpoint (end of epoch 1) carries a started SWA average, a frozen LR and the optimizer moments.
    cfg = dict(epochs=3, swa_epochs=2)
    straight = train(make_config(tmp_path / "a", **cfg), splits=splits, verbose=False)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(make_config(tmp_path / "b", **cfg), splits=splits, callbacks=[Kill(10)], verbose=False)
    ck = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["epoch"] == 1 and ck["crystalframer_train"]["swa"]["n_averaged"] == 4
    assert not (tmp_path / "b" / "metrics.json").exists()
    with pytest.raises(FileExistsError, match="resume"):
        train(make_config(tmp_path / "b", **cfg), splits=splits, verbose=False)
    resumed = train(make_config(tmp_path / "b", **cfg), resume=True, splits=splits, verbose=False)
    for (n, p), (n2, q) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert n == n2 and torch.allclose(p, q, atol=1e-6, rtol=0), n
    for (n, p), (_, q) in zip(straight.best_model.state_dict().items(), resumed.best_model.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), n
    assert len(resumed.history) == len(straight.history)
    for h, h2 in zip(straight.history, resumed.history):
        strip = {k: v for k, v in h.items() if k != "time_s"}
        assert {k: v for k, v in h2.items() if k != "time_s"} == pytest.approx(strip)
    a, b = straight.metrics, resumed.metrics
    assert a["global_steps"] == b["global_steps"] == 12 and a["swa_averaged_steps"] == b["swa_averaged_steps"] == 8
    assert b["swa"]["test"]["heat_all"]["mae"] == pytest.approx(a["swa"]["test"]["heat_all"]["mae"], rel=1e-6)


def test_resume_may_change_the_run_length_before_swa_starts(splits, tmp_path):
    # Planned for 4 epochs, killed in epoch 1 (resume checkpoint: end of epoch 0), finished as a 2-epoch run:
    # the same weights as a run planned for 2 epochs from the start (the LR schedule ignores the length).
    straight = train(make_config(tmp_path / "a", epochs=2, swa_epochs=1), splits=splits, verbose=False)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(make_config(tmp_path / "b", epochs=4, swa_epochs=1), splits=splits, callbacks=[Kill(6)],
              verbose=False)
    shortened = train(make_config(tmp_path / "b", epochs=2, swa_epochs=1), resume=True, splits=splits,
                      verbose=False)
    for (n, p), (_, q) in zip(straight.model.state_dict().items(), shortened.model.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), n
    assert shortened.metrics["global_steps"] == 8 and shortened.metrics["swa_averaged_steps"] == 4
    # once the SWA average has started, the plan is fixed
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(make_config(tmp_path / "c", epochs=3, swa_epochs=2), splits=splits, callbacks=[Kill(10)],
              verbose=False)
    with pytest.raises(ValueError, match=r"recipe epochs: 3 -> 5"):
        train(make_config(tmp_path / "c", epochs=5, swa_epochs=2), resume=True, splits=splits, verbose=False)


class StepLRs(L.Callback):
    """The LR each optimizer step used, over the whole run."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cosine_schedule_falls_to_min_lr_before_swa_and_fixes_the_run_length(splits, tmp_path):
    # 16 training rows, batch 4: 4 steps per epoch; 3 epochs with 1 SWA epoch: the cosine spans 8 steps.
    rec = StepLRs()
    result = train(make_config(tmp_path / "cos", epochs=3, swa_epochs=1, schedule="cosine", lr=1e-3, min_lr=1e-5),
                   splits=splits, callbacks=[rec], verbose=False)
    expected = [1e-3 * cosine_factor(k, 8, 1e-2) for k in range(8)] + [1e-5] * 4
    assert rec.lrs == pytest.approx(expected, rel=1e-12)
    assert rec.lrs[4] == pytest.approx(0.5 * (1e-3 + 1e-5), rel=1e-12)  # half-way down at mid-run
    assert result.metrics["swa_averaged_steps"] == 4
    # the cosine is laid out over the planned length: a resumed cosine run may not change it
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(make_config(tmp_path / "cut", epochs=4, swa_epochs=1, schedule="cosine"), splits=splits,
              callbacks=[Kill(6)], verbose=False)
    with pytest.raises(ValueError, match=r"recipe epochs: 4 -> 6.*cosine schedule .* length is fixed"):
        train(make_config(tmp_path / "cut", epochs=6, swa_epochs=1, schedule="cosine"), resume=True,
              splits=splits, verbose=False)


@register_model
class NaNOnceFramer(CrystalFramer):
    """Returns NaN on its 3rd training forward (with gradients), to exercise the NaN guard."""

    calls = 0
    nan_at: tuple[int, ...] = (3,)

    def forward(self, batch, return_all: bool = False):
        out = super().forward(batch, return_all)
        if self.training and torch.is_grad_enabled():
            type(self).calls += 1
            if type(self).calls in self.nan_at:
                out = out * float("nan")
        return out


def test_nan_guard_skips_the_bad_step(splits, tmp_path):
    NaNOnceFramer.calls, NaNOnceFramer.nan_at = 0, (3,)
    model = NaNOnceFramer(**TINY, target_names=["heat_all"])
    result = train(make_config(tmp_path / "nan", epochs=2, swa_epochs=1), splits=splits, model=model, verbose=False)
    assert result.metrics["skipped_steps"] == 1 and result.metrics["global_steps"] == 7
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert math.isfinite(result.metrics["swa"]["test"]["heat_all"]["mae"])

    NaNOnceFramer.calls, NaNOnceFramer.nan_at = 0, tuple(range(1, 100))
    model = NaNOnceFramer(**TINY, target_names=["heat_all"])
    with pytest.raises(FloatingPointError, match="diverged"):
        train(make_config(tmp_path / "nan2", epochs=2, swa_epochs=1, max_skipped_steps=3), splits=splits,
              model=model, verbose=False)


def test_epoch_shards_partition_each_global_batch():
    n, b, world = 23, 3, 2
    single = list(EpochShardSampler(n, b * world, 0, 1, seed=5))
    ranks = [list(EpochShardSampler(n, b, r, world, seed=5)) for r in range(world)]
    assert len(single) == 18 and all(len(r) == 9 for r in ranks)  # drop_last: 3 full global batches
    for k in range(3):
        glob = single[k * 6:(k + 1) * 6]
        local = [x for r in ranks for x in r[k * b:(k + 1) * b]]
        assert sorted(local) == sorted(glob)  # the union of the ranks' k-th batches is the k-th global batch
    assert not set(ranks[0]) & set(ranks[1])
    s = EpochShardSampler(n, b, 0, 1, seed=5)
    s.set_epoch(1)
    assert list(s) != list(EpochShardSampler(n, b, 0, 1, seed=5))  # a new order every epoch


def test_ecn_trains_with_the_common_trainer_and_keeps_its_own_sizes(splits, tmp_path):
    """The quick preset's transformer sizes (2 layers, width 64) must not leak into ECN; the run's best
    checkpoint reloads as an ECN that predicts what the trained model predicts. ECN's dataset filter drops
    a structure whose graph is disconnected from the training set, with a warning."""
    import dataclasses

    from crystalframer.models import ECN
    from tests.nn.test_ecn import _isolated_h

    cfg = TrainConfig(model_type="ECN", model={"group": "p1", "width": 16, "edge_dim": 8}, preset="quick",
                      recipe={"epochs": 2, "swa_epochs": 1, "batch_size": 8}, output=str(tmp_path / "ecn"),
                      progress_bar=False, accelerator="cpu", devices=1, tensorboard=False, plots=False)
    cfg.model["graph"] = {"neighbors": "cutoff", "radius": 5.0}  # ECN's Perov-5 graph: every structure connected
    with_h = dataclasses.replace(splits, train=splits.train + [_isolated_h()])
    with pytest.warns(UserWarning, match=rf"\(train\): dropped 1 of {len(splits.train) + 1} .*Hbox"):
        result = train(cfg, splits=with_h, verbose=False)
    resolved = json.loads((tmp_path / "ecn" / "config.json").read_text())["resolved"]
    assert resolved["split_sizes"]["train"] == len(splits.train)
    model = result.model
    assert isinstance(model, ECN) and len(model.layers) == 6  # ECN's default depth, not the preset's 2
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    assert np.isfinite(result.test_mae("swa"))
    loaded = load(tmp_path / "ecn" / "checkpoints" / "best.pt")
    assert isinstance(loaded, ECN)
    np.testing.assert_allclose(loaded.predict(splits.test), result.best_model.predict(splits.test), rtol=1e-5,
                               atol=1e-6)


def test_bf16_mixed_precision_trains(splits, tmp_path):
    """precision="bf16-mixed" (Lightning autocast): the run finishes with finite losses and metrics."""
    cfg = make_config(tmp_path / "bf16", epochs=2, swa_epochs=1)
    cfg.precision = "bf16-mixed"
    result = train(cfg, splits=splits, verbose=False)
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    assert np.isfinite(result.test_mae("swa")) and np.isfinite(result.test_mae("best"))
    assert result.model.layers[0].ff1.weight.dtype == torch.float32  # master weights stay float32


def test_plateau_schedule_halves_the_lr_and_stops_at_min_lr(splits, tmp_path):
    """ECN's schedule: with patience 0 and an LR too small to change the validation loss, every epoch after
    the first halves the LR; the run stops once it reaches min_lr (3 of 10 epochs)."""
    cfg = make_config(tmp_path / "plateau", epochs=10, swa_epochs=0, schedule="plateau", plateau_patience=0,
                      lr=1e-6, min_lr=2.5e-7, loss="mse")
    result = train(cfg, splits=splits, verbose=False)
    lrs = [h["lr"] for h in result.history]
    assert len(lrs) == 3 and lrs[0] == lrs[1] == pytest.approx(1e-6) and lrs[2] == pytest.approx(5e-7)
    assert result.history[-1].get("stopped") == "min_lr"
    assert result.metrics["global_steps"] == 3 * result.history[0]["step"]
