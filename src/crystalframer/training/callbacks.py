"""Run checkpoints: a Lightning resume checkpoint plus self-describing ``last.pt`` / ``best.pt`` every epoch."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from crystalframer.atomic import atomic_open
from crystalframer.checkpoint import save_model

__all__ = ["RunCheckpoint", "write_history_csv"]


def write_history_csv(history: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """One row per epoch (columns: the union of the entries' keys, in first-seen order); atomic."""
    path = Path(path)
    cols: list[str] = []
    for h in history:
        cols += [k for k in h if k not in cols]
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for h in history:
            w.writerow(h)


class RunCheckpoint(Checkpoint):
    """At the end of every training epoch (after validation):

    * ``best.pt`` when ``val/loss`` improved (the live weights, self-describing, atomic);
    * ``last.ckpt``: the full Lightning state (optimizer, scheduler, SWA average, RNG, loops) for resume,
      written to a temporary file and renamed, so a run killed mid-write keeps the previous one;
    * ``last.pt``: the live weights, self-describing;
    * ``history.csv`` in the run folder.

    Subclassing :class:`Checkpoint` makes Lightning call this after ``LightningModule.on_train_epoch_end``
    (which closes the epoch's history entry) and stops it from adding its own ModelCheckpoint.
    """

    def __init__(self, run_dir: str | os.PathLike, run_info: dict[str, Any] | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.dirpath = self.run_dir / "checkpoints"
        self.run_info = dict(run_info or {})
        self.best_val_loss = math.inf
        self.best_epoch = -1

    @property
    def last_ckpt(self) -> Path:
        return self.dirpath / "last.ckpt"

    @property
    def best_path(self) -> Path:
        return self.dirpath / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.pt"

    def _info(self, trainer: L.Trainer, **more: Any) -> dict[str, Any]:
        return {**self.run_info, "epoch": int(trainer.current_epoch), "global_step": int(trainer.global_step),
                **more}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        history = getattr(pl_module, "history", [])
        entry = history[-1] if history else {}
        val_loss = entry.get("val_loss", float("nan"))
        improved = isinstance(val_loss, float) and math.isfinite(val_loss) and val_loss < self.best_val_loss
        no_val = not (isinstance(val_loss, float) and math.isfinite(val_loss))
        if improved:
            self.best_val_loss, self.best_epoch = float(val_loss), int(trainer.current_epoch)
        elif no_val and self.best_val_loss == math.inf:
            self.best_epoch = int(trainer.current_epoch)  # no validation data: "best" is the latest
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            if improved or (no_val and self.best_val_loss == math.inf):
                save_model(pl_module.model, self.best_path,
                           training=self._info(trainer, selection="best val/loss",
                                               val_loss=None if no_val else float(val_loss)))
        tmp = self.dirpath / ".last.ckpt.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.last_ckpt)
            save_model(pl_module.model, self.last_path, training=self._info(trainer, selection="last epoch"))
            write_history_csv(history, self.run_dir / "history.csv")

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": float(self.best_val_loss), "best_epoch": int(self.best_epoch)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_val_loss = float(state_dict.get("best_val_loss", math.inf))
        self.best_epoch = int(state_dict.get("best_epoch", -1))
