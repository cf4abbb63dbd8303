"""Lightning wrapper of any protocol model (``crystalframer.models``) with the published training step.

One training step, as in the released CrystalFramer code: forward → masked L1 on normalised targets →
backward → clip the global gradient norm to 1.0 → AdamW step → SWA update during the last ``swa_epochs``
epochs, LR-schedule step otherwise. Optimisation is manual so that the order of these operations, the frozen
LR during SWA and the NaN guard (skip a step whose gradient norm is not finite) are exactly what the recipe
says, on one device and under DDP alike.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch

from crystalframer.checkpoint import model_payload, weights_checksum
from crystalframer.nn.heads import to_target_units
from crystalframer.training.metrics import masked_loss
from crystalframer.training.recipe import Recipe, build_optimizer, build_scheduler, in_swa_phase
from crystalframer.training.swa import WeightAverager

__all__ = ["CrystalPropertyModule", "calibrate", "rng_state", "set_rng_state"]


@torch.no_grad()
def calibrate(model: torch.nn.Module, train: Sequence[Any], recipe: Recipe) -> None:
    """Run the model once in training mode on the first global batch of epoch 0 (no gradient).

    Models that freeze statistics on their first training batch (CrystalFramer's σ normalisation) thus
    freeze them on the same structures on every DDP rank, and on the same ones as a single-device run
    would. ``model.calibrate(batch)`` is used when the model defines it.
    """
    from crystalframer.training.data import EpochShardSampler

    order = list(EpochShardSampler(len(train), recipe.batch_size, 0, 1, recipe.seed, True, recipe.drop_last))
    first = ([train[i] for i in order[: recipe.batch_size]]
             or [train[i] for i in range(min(len(train), recipe.batch_size))])
    if not first:
        return
    p = next(model.parameters())
    dtype = p.dtype if p.dtype in (torch.float32, torch.float64) else None
    batch = model.collate(first).to(p.device, dtype)
    was = model.training
    model.train()
    try:
        if hasattr(model, "calibrate"):
            model.calibrate(batch)
        else:
            model(batch)
    finally:
        model.train(was)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as a weights_only-loadable dict."""
    py = random.getstate()
    npst = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(npst[1].astype(np.int64)), "pos": int(npst[2]),
                  "has_gauss": int(npst[3]), "cached": float(npst[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class CrystalPropertyModule(L.LightningModule):
    """Trains ``model`` (a protocol model) with ``recipe``.

    The model's ``target_mean``/``target_std`` buffers must already hold the training split's statistics
    (see :func:`crystalframer.training.trainer.set_target_normalisation`); the loss is computed on
    (y − mean)/std. Validation runs every epoch with the live (non-averaged) weights and logs
    ``val/loss`` (normalised L1, summed over targets, the checkpoint criterion) and ``val/mae_<target>``
    in the targets' units; for classification (``loss="bce"``) ``val/loss`` is the mean binary
    cross-entropy summed over targets, and ``val/acc_<target>`` the accuracy at probability ½.

    Attributes:
        swa: the running weight average (None when ``recipe.swa_epochs == 0``).
        history: one dict per finished epoch (epoch, step, lr, train_loss, val_loss, val_mae_<t> or
            val_acc_<t>, time_s).
        skipped_steps: optimizer steps skipped by the NaN guard.
    """

    def __init__(self, model: torch.nn.Module, recipe: Recipe, run_info: dict[str, Any] | None = None,
                 steps_per_epoch: int | None = None):
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.steps_per_epoch = steps_per_epoch  # optimizer steps per epoch; the cosine schedule needs it
        self.run_info = dict(run_info or {})
        self.automatic_optimization = False
        self.swa: WeightAverager | None = WeightAverager(model) if recipe.swa_epochs > 0 else None
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self._pending_rng: dict[str, Any] | None = None
        n_t = int(model.target_mean.numel())
        names = getattr(model, "target_names", None) or [f"target_{k}" for k in range(n_t)]
        self.target_names = [str(x) for x in names]
        self.classification = recipe.loss == "bce"
        self._reset_epoch_sums()

    # -- helpers -------------------------------------------------------------------------------------
    def _reset_epoch_sums(self) -> None:
        n_t = len(self.target_names)
        self._train_sum = torch.zeros(2, dtype=torch.float64)  # loss·B, B
        self._val_abs = torch.zeros(n_t, dtype=torch.float64)  # Σ |ŷ' − y'| per target (normalised)
        self._val_cnt = torch.zeros(n_t, dtype=torch.float64)
        self._val_correct = torch.zeros(n_t, dtype=torch.float64)
        self._val_abs_units = torch.zeros(n_t, dtype=torch.float64)
        self._epoch_t0 = time.perf_counter()

    def _param_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def normalise(self, y: torch.Tensor) -> torch.Tensor:
        """(B, n_targets) targets in their units → the normalised scale the model predicts (log first with
        ``target_transform="log"``)."""
        if self.recipe.target_transform == "log":
            y = y.log()
        return (y - self.model.target_mean) / self.model.target_std

    def forward(self, batch: Any) -> torch.Tensor:
        return self.model(batch)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # CrystalBatch knows how to move itself; cast to the parameters' dtype for 64-true precision.
        dtype = self._param_dtype()
        return batch.to(device, dtype=dtype if dtype in (torch.float32, torch.float64) else None)

    # -- optimisation --------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # A fresh run freezes first-batch statistics here, on the training device, identically on every
        # rank. A resumed run already has them in its restored weights.
        if self.trainer.ckpt_path is None:
            dm = self.trainer.datamodule
            train = getattr(dm, "train_set", None)
            if train is not None and len(train):
                calibrate(self.model, train, self.recipe)

    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.recipe)
        sch = build_scheduler(opt, self.recipe, steps_per_epoch=self.steps_per_epoch)
        # Optimisation is manual: the module steps the scheduler itself (per step, or per epoch for plateau).
        interval = "epoch" if self.recipe.schedule == "plateau" else "step"
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": interval}}

    def on_train_epoch_start(self) -> None:
        if self._pending_rng is not None:
            # Resumed run: continue the RNG streams (frame tie-break noise, dropout) where the killed run was.
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        self._reset_epoch_sums()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        sch = self.lr_schedulers()
        if batch.y is None:
            raise ValueError("training batch without targets: every training structure needs labels")
        learned = self.recipe.normalize_targets or self.recipe.target_transform != "none"
        target = self.normalise(batch.y) if learned and not self.classification else batch.y
        pred = self.model(batch)
        loss = masked_loss(pred, target.to(pred.dtype), self.recipe.loss)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip = self.recipe.clip_norm if self.recipe.clip_norm else math.inf
        # Gradients are already all-reduced under DDP, so every rank computes the same norm and takes the
        # same skip decision below.
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], clip)
        if not bool(torch.isfinite(norm)):
            # NaN guard (the official code skips any failing step): drop this update, keep training.
            opt.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self._consecutive_skips += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            if self._consecutive_skips >= self.recipe.max_skipped_steps:
                raise FloatingPointError(
                    f"{self._consecutive_skips} optimizer steps in a row had a non-finite gradient norm "
                    f"(epoch {self.current_epoch}, batch {batch_idx}); training diverged. Lower the learning "
                    "rate or check the data for extreme labels")
            return loss.detach()
        self._consecutive_skips = 0
        opt.step()
        if in_swa_phase(self.current_epoch, self.recipe):
            assert self.swa is not None
            self.swa.update(self.model)  # LR frozen: the scheduler is not stepped in the SWA phase
        elif self.recipe.schedule != "plateau":
            sch.step()
        B = batch.num_graphs
        self._train_sum += torch.tensor([float(loss.detach()) * B, B], dtype=torch.float64)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=B)
        self.log("train/total_norm", norm.detach(), on_step=True, on_epoch=False, batch_size=B)
        self.log("lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False, prog_bar=False)
        return loss.detach()

    # -- validation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        n_t = len(self.target_names)
        self._val_abs = torch.zeros(n_t, dtype=torch.float64)  # Σ |ŷ' − y'| (regression) or Σ BCE
        self._val_cnt = torch.zeros(n_t, dtype=torch.float64)
        self._val_correct = torch.zeros(n_t, dtype=torch.float64)  # classification: correct at p = ½
        self._val_abs_units = torch.zeros(n_t, dtype=torch.float64)  # Σ |ŷ − y| in units (target_transform)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch.y is None:
            return
        pred = self.model(batch).double()
        if self.classification:
            target = batch.y.double()
            mask = torch.isfinite(target)
            labels = torch.where(mask, target, 0.0)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(pred, labels, reduction="none")
            self._val_abs += torch.where(mask, bce, 0.0).sum(0).cpu()
            self._val_correct += (mask & ((pred >= 0) == (labels == 1))).sum(0).double().cpu()
            self._val_cnt += mask.sum(0).double().cpu()
            return
        learned = self.recipe.normalize_targets or self.recipe.target_transform != "none"
        target = self.normalise(batch.y).double() if learned else batch.y.double()
        mask = torch.isfinite(target)
        err = torch.where(mask, (pred - torch.where(mask, target, 0.0)).abs(), 0.0)
        self._val_abs += err.sum(0).cpu()
        self._val_cnt += mask.sum(0).double().cpu()
        if self.recipe.target_transform != "none":  # MAE in the targets' units, not std · (log-scale MAE)
            y_hat = to_target_units(pred, self.model.target_mean.double(), self.model.target_std.double(),
                                    transform=self.recipe.target_transform)
            self._val_abs_units += torch.where(mask, (y_hat - torch.where(mask, batch.y.double(), 0.0)).abs(),
                                               0.0).sum(0).cpu()

    def on_validation_epoch_end(self) -> None:
        # Sum over ranks (each rank validated its own shard, without padding duplicates).
        sums = torch.cat([self._val_abs, self._val_cnt, self._val_correct, self._val_abs_units]).to(self.device)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        n_t = len(self.target_names)
        abs_sum, cnt = sums[:n_t].double().cpu(), sums[n_t:2 * n_t].double().cpu()
        mae_norm = abs_sum / cnt.clamp(min=1)  # or the mean BCE, for classification
        val_loss = float(mae_norm[cnt > 0].sum()) if bool((cnt > 0).any()) else float("nan")
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False)
        if self.classification:
            acc = sums[2 * n_t:3 * n_t].double().cpu() / cnt.clamp(min=1)
            accs = {f"val_acc_{name}": float(acc[k]) if cnt[k] > 0 else float("nan")
                    for k, name in enumerate(self.target_names)}
            for key, v in accs.items():
                self.log(key.replace("val_", "val/", 1), v, sync_dist=False)
            self._last_val = {"val_loss": val_loss, **accs}
            return
        std = self.model.target_std.detach().double().cpu() if self.recipe.normalize_targets else torch.ones(n_t)
        mae_units = mae_norm * std
        if self.recipe.target_transform != "none":
            mae_units = sums[3 * n_t:].double().cpu() / cnt.clamp(min=1)
        maes = {}
        for k, name in enumerate(self.target_names):
            maes[f"val_mae_{name}"] = float(mae_units[k]) if cnt[k] > 0 else float("nan")
            self.log(f"val/mae_{name}", maes[f"val_mae_{name}"], sync_dist=False)
        self._last_val = {"val_loss": val_loss, **maes}

    def on_train_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._train_sum.to(self.device), reduce_op="sum").double().cpu()
        train_loss = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
        opt = self.optimizers()
        entry = {"epoch": int(self.current_epoch), "step": int(self.global_step),
                 "lr": float(opt.param_groups[0]["lr"]), "train_loss": train_loss,
                 "swa": bool(in_swa_phase(self.current_epoch, self.recipe)),
                 "skipped_steps": int(self.skipped_steps),
                 "time_s": float(time.perf_counter() - self._epoch_t0)}
        entry.update(getattr(self, "_last_val", {}) or {})
        self._last_val = {}
        if self.recipe.schedule == "plateau" and not in_swa_phase(self.current_epoch, self.recipe):
            self._plateau_step(entry)
        self.history.append(entry)
        self.log("train/epoch_loss", train_loss, sync_dist=False)

    def _plateau_step(self, entry: dict[str, Any]) -> None:
        """ECN's schedule: step ReduceLROnPlateau with this epoch's validation loss (the training loss when
        there is no validation data); stop the run once the LR has reached ``min_lr``. Every DDP rank sees
        the same reduced losses, so every rank takes the same decision."""
        metric = entry.get("val_loss", float("nan"))
        if not math.isfinite(metric):
            metric = entry["train_loss"]
        self.lr_schedulers().step(metric)
        lr = float(self.optimizers().param_groups[0]["lr"])
        if lr <= self.recipe.min_lr * (1 + 1e-9):
            entry["stopped"] = "min_lr"
            self.trainer.should_stop = True

    # -- checkpoint state ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The self-describing header lets crystalframer.load() read this Lightning checkpoint too.
        checkpoint["crystalframer"] = model_payload(self.model, training=self.run_info, with_state=False)
        checkpoint["crystalframer"]["state_sha256"] = weights_checksum(self.model.state_dict())
        checkpoint["crystalframer_train"] = {
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "history": list(self.history),
            "skipped_steps": int(self.skipped_steps),
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("crystalframer_train") or {}
        if self.swa is not None and state.get("swa"):
            self.swa.load_state_dict(state["swa"])
        self.history = list(state.get("history") or [])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self._pending_rng = state.get("rng")

    # -- results -------------------------------------------------------------------------------------
    def swa_model(self) -> torch.nn.Module:
        """A copy of the model with the SWA weights (the live weights when SWA is off or never ran)."""
        import copy

        if self.swa is None or self.swa.n_averaged == 0:
            return copy.deepcopy(self.model)
        return self.swa.averaged_model(self.model)
