"""Predicting and scoring crystals with a trained protocol model (no Lightning)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crystalframer.atomic import atomic_open
from crystalframer.cpu import flush_denormals
from crystalframer.data.structures import Crystal
from crystalframer.geometry.tensors import column_names
from crystalframer.nn.heads import to_target_units
from crystalframer.training.metrics import (check_binary_labels, classification_metrics, regression_metrics,
                                            tensor_metrics)

__all__ = ["Predictions", "predict_crystals", "evaluate_crystals", "write_predictions_csv", "column_name",
           "target_info", "tensor_targets"]


@dataclass
class Predictions:
    """Predictions of one model on a list of crystals.

    Attributes:
        ids: n structure ids.
        y_pred: (n, T) in the targets' units (probabilities of class 1 for classification).
        y_true: (n, T) labels (NaN = missing) or None when the crystals carry no labels.
        names, units: T target names and units.
        task: ``"regression"`` or ``"classification"``.
        tensors: {vector/tensor target: kind} of a model with shaped targets (their flattened columns
            ``name[i,j]`` are among ``names``), else empty.
    """

    ids: list[str]
    y_pred: np.ndarray
    y_true: np.ndarray | None
    names: list[str]
    units: list[str]
    task: str = "regression"
    tensors: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, dict[str, float]]:
        """{column: MAE, RMSE, R², n} (accuracy, ROC-AUC ... for classification), and for each vector/tensor
        target {name: ``fnorm``, ``rel_fnorm``, ``ewt25/10/5`` (see
        :func:`~crystalframer.training.metrics.tensor_metrics`), ``mae`` (mean over its components), n}."""
        if self.y_true is None:
            raise ValueError("these structures have no labels; nothing to score")
        if self.task == "classification":
            check_binary_labels(self.y_true, self.names, self.ids)
            return classification_metrics(self.y_true, self.y_pred, self.names)
        out = regression_metrics(self.y_true, self.y_pred, self.names)
        for name, kind in self.tensors.items():
            cols = [k for k, c in enumerate(self.names) if c in column_names(name, kind)]
            r = tensor_metrics(self.y_true[:, cols], self.y_pred[:, cols])
            r["mae"] = float(np.nanmean([out[self.names[k]]["mae"] for k in cols]))
            out[name] = r
        return out


def tensor_targets(model: torch.nn.Module) -> dict[str, str]:
    """{name: kind} of a model's vector/tensor targets (empty for an all-scalar model)."""
    if not getattr(model, "has_geometric_targets", False):
        return {}
    return {n: k for n, k in zip(model.config["target_names"], model.target_kinds) if k != "scalar"}


def target_info(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(names, units) of a protocol model's output columns (units empty where unknown); a vector/tensor
    target is given by its flattened columns ``name[i,j]``."""
    n = int(model.target_mean.numel())
    cfg = getattr(model, "config", {}) or {}
    names = list(getattr(model, "target_names", None) or cfg.get("target_names") or [f"target_{k}" for k in range(n)])
    units = list(getattr(model, "target_units", None) or cfg.get("target_units") or [""] * n)
    units = [(u or "") for u in units] + [""] * (n - len(units))
    return [str(x) for x in names], [str(u) for u in units[:n]]


@torch.no_grad()
def predict_crystals(model: torch.nn.Module, crystals: Sequence[Crystal], batch_size: int = 64,
                     device: str | torch.device | None = None) -> Predictions:
    """Run ``model`` on ``crystals`` in eval mode; predictions in the targets' units (probabilities for a
    classification model).

    Labels are taken from ``crystal.targets`` when every crystal has them (aligned with the model's
    targets by position).
    """
    names, units = target_info(model)
    task = getattr(model, "task", "regression")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    preds, trues = [], []
    have_labels = len(crystals) > 0 and all(c.targets is not None for c in crystals)
    try:
        with flush_denormals():  # as model.predict: far images' denormal floats are slow on x86 CPUs
            for k in range(0, len(crystals), batch_size):
                chunk = list(crystals[k:k + batch_size])
                batch = model.collate(chunk).to(dev, dtype)
                out = to_target_units(model(batch), model.target_mean, model.target_std, task,
                                      getattr(model, "target_transform", "none"))
                preds.append(out.double().cpu().numpy())
                if have_labels:
                    trues.append(np.stack([np.asarray(c.targets, np.float64) for c in chunk]))
    finally:
        model.train(was_training)
    T = len(names)
    y_pred = np.concatenate(preds) if preds else np.zeros((0, T))
    y_true = (np.concatenate(trues) if trues else np.zeros((0, T))) if have_labels or not crystals else None
    if y_true is not None and y_true.shape[1] != T:
        raise ValueError(f"the structures carry {y_true.shape[1]} labels but the model predicts {T} targets {names}")
    return Predictions([c.id for c in crystals], y_pred, y_true, names, units, task, tensor_targets(model))


def evaluate_crystals(model: torch.nn.Module, crystals: Sequence[Crystal], batch_size: int = 64,
                      device: str | torch.device | None = None) -> tuple[dict[str, dict[str, float]], Predictions]:
    """(metrics per target, predictions) of ``model`` on labelled ``crystals``."""
    p = predict_crystals(model, crystals, batch_size, device)
    if p.y_true is None:
        raise ValueError("the structures have no labels for the model's targets")
    return p.metrics(), p


def column_name(name: str, unit: str, suffix: str = "") -> str:
    """CSV column of a target: ``heat_all [eV]`` (or ``heat_all_true [eV]`` with suffix ``_true``)."""
    return f"{name}{suffix} [{unit}]" if unit else f"{name}{suffix}"


def write_predictions_csv(path: str | os.PathLike, preds: Predictions, with_truth: bool = True) -> Path:
    """CSV with an ``id`` column, one prediction column per target (``<t>_probability`` for classification)
    and, with labels, ``<t>_true`` columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "_probability" if preds.task == "classification" else ""
    header = ["id"] + [column_name(n, u, suffix) for n, u in zip(preds.names, preds.units)]
    truth = with_truth and preds.y_true is not None
    if truth:
        header += [column_name(n, u, "_true") for n, u in zip(preds.names, preds.units)]
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, sid in enumerate(preds.ids):
            row: list[Any] = [sid] + [repr(float(v)) for v in preds.y_pred[i]]
            if truth:
                row += ["" if not np.isfinite(v) else repr(float(v)) for v in preds.y_true[i]]
            w.writerow(row)
    return path
