"""Regression metrics per target, with missing labels (NaN) left out, and the masked training loss."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["regression_metrics", "masked_loss", "population_stats"]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """MAE, RMSE, R² and count for each target column.

    Args:
        y_true, y_pred: (n, n_targets) in the targets' units; NaN in ``y_true`` marks a missing label.
        names: n_targets target names (the keys of the result).
    Returns:
        {name: {"mae", "rmse", "r2", "n"}}; values are NaN when a target has no label (R² also when the
        labels have zero variance).
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if y_true.shape[1] != len(names):
        raise ValueError(f"{y_true.shape[1]} target columns but {len(names)} names")
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        m = np.isfinite(y_true[:, k])
        t, p = y_true[m, k], y_pred[m, k]
        n = int(m.sum())
        if n == 0:
            out[str(name)] = {"mae": float("nan"), "rmse": float("nan"), "r2": float("nan"), "n": 0}
            continue
        err = p - t
        ss_tot = float(np.sum((t - t.mean()) ** 2))
        r2 = 1.0 - float(np.sum(err ** 2)) / ss_tot if ss_tot > 0 else float("nan")
        out[str(name)] = {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
                          "r2": r2, "n": n}
    return out


def masked_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Loss on the normalised scale: per target the mean over labelled structures, summed over targets.

    With one target and no missing labels this is the official ``L1Loss()`` (mean over the batch).
    Targets without any label in the batch contribute 0 (and keep the graph connected, so DDP's
    gradient all-reduce sees every parameter).

    Args:
        pred, target: (B, n_targets); NaN in ``target`` marks a missing label.
    """
    mask = torch.isfinite(target)
    diff = torch.where(mask, pred - torch.where(mask, target, torch.zeros_like(target)), torch.zeros_like(pred))
    if kind == "l1":
        per = diff.abs()
    elif kind == "mse":
        per = diff.pow(2)
    elif kind == "smooth_l1":
        a = diff.abs()
        per = torch.where(a < 1.0, 0.5 * a.pow(2), a - 0.5)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    count = mask.sum(dim=0)
    per_target = per.sum(dim=0) / count.clamp(min=1)
    return per_target.sum() + 0.0 * pred.sum()


def population_stats(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (divide by N) of each column of (n, n_targets), NaNs ignored.

    A column with no label gets mean 0 and std 1; a constant column gets std 1 (nothing to scale).
    """
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    mean = np.zeros(y.shape[1])
    std = np.ones(y.shape[1])
    for k in range(y.shape[1]):
        col = y[np.isfinite(y[:, k]), k]
        if col.size:
            mean[k] = col.mean()
            s = col.std(ddof=0)
            std[k] = s if s > 0 else 1.0
    return mean, std
