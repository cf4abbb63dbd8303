"""Regression and binary-classification metrics per target, with missing labels (NaN) left out, and the
masked training loss."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["regression_metrics", "classification_metrics", "format_target_metrics", "masked_loss",
           "population_stats", "check_binary_labels"]


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


def _roc_auc(t: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties counted ½); NaN with a single class."""
    n1 = int(t.sum())
    n0 = t.size - n1
    if n0 == 0 or n1 == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size, dtype=np.float64)
    sp = p[order]
    # average ranks of tied scores
    bounds = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        ranks[order[a:b]] = 0.5 * (a + b - 1) + 1
    return float((ranks[t == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray, names: Sequence[str],
                           threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Binary classification metrics for each target column.

    Args:
        y_true: (n, n_targets) labels 0/1 (NaN = missing); y_prob: (n, n_targets) probabilities of class 1.
        threshold: probability at or above which class 1 is predicted.
    Returns:
        {name: {"accuracy", "balanced_accuracy", "roc_auc", "precision", "recall" (of class 1),
        "recall_0" (of class 0), "f1", "log_loss", "positive_fraction", "n"}}; NaN where undefined.
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_prob = np.asarray(y_prob, dtype=np.float64).reshape(len(y_prob), -1)
    if y_true.shape != y_prob.shape:
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} differ in shape")
    if y_true.shape[1] != len(names):
        raise ValueError(f"{y_true.shape[1]} target columns but {len(names)} names")
    nan = float("nan")
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        m = np.isfinite(y_true[:, k])
        t, p = y_true[m, k], y_prob[m, k]
        n = int(m.sum())
        if n == 0:
            out[str(name)] = {key: nan for key in ("accuracy", "balanced_accuracy", "roc_auc", "precision",
                                                   "recall", "recall_0", "f1", "log_loss", "positive_fraction")}
            out[str(name)]["n"] = 0
            continue
        pred = p >= threshold
        pos = t == 1
        tp, fp = int((pred & pos).sum()), int((pred & ~pos).sum())
        fn, tn = int((~pred & pos).sum()), int((~pred & ~pos).sum())
        recall = tp / (tp + fn) if tp + fn else nan
        recall0 = tn / (tn + fp) if tn + fp else nan
        precision = tp / (tp + fp) if tp + fp else nan
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else (0.0 if fp + fn else nan)
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        out[str(name)] = {
            "accuracy": (tp + tn) / n, "balanced_accuracy": float(np.nanmean([recall, recall0])),
            "roc_auc": _roc_auc(t, p), "precision": precision, "recall": recall, "recall_0": recall0, "f1": f1,
            "log_loss": float(-np.mean(t * np.log(pc) + (1 - t) * np.log(1 - pc))),
            "positive_fraction": float(pos.mean()), "n": n}
    return out


def format_target_metrics(r: dict[str, float], unit: str = "") -> str:
    """One line for a target's metrics (regression: MAE/RMSE/R²; classification: accuracy/AUC/recalls; a
    vector/tensor target: Frobenius error, EwT and the mean component MAE)."""
    if "fnorm" in r:
        u = f" {unit}" if unit else ""
        ewt = "  ".join(f"EwT{k[3:]} {v:.3f}" for k, v in r.items() if k.startswith("ewt"))
        return (f"Frobenius error {r['fnorm']:.6g}{u} (relative {r['rel_fnorm']:.4f})  {ewt}  "
                f"component MAE {r['mae']:.6g}{u}  (n={r['n']})")
    if "accuracy" in r:
        return (f"accuracy {r['accuracy']:.4f}  ROC-AUC {r['roc_auc']:.4f}  recall(1) {r['recall']:.4f}  "
                f"recall(0) {r['recall_0']:.4f}  log loss {r['log_loss']:.4f}  (n={r['n']})")
    u = f" {unit}" if unit else ""
    return f"MAE {r['mae']:.6g}{u}  RMSE {r['rmse']:.6g}{u}  R² {r['r2']:.4f}  (n={r['n']})"


def check_binary_labels(y: np.ndarray, names: Sequence[str], ids: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` naming the first structure whose label is not 0, 1 or missing (NaN)."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    bad = np.isfinite(y) & (y != 0) & (y != 1)
    if bad.any():
        i, k = map(int, np.argwhere(bad)[0])
        who = f"structure {ids[i]!r}" if ids is not None else f"row {i}"
        raise ValueError(f"classification needs labels 0 or 1, but {who} has {names[k]} = {y[i, k]:g} "
                         f"({int(bad.sum())} such labels); binarise the target first (e.g. band_gap > 0)")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Loss on the normalised scale: per target the mean over labelled structures, summed over targets.

    With one target and no missing labels this is the official ``L1Loss()`` (mean over the batch).
    ``kind="bce"``: binary cross-entropy of logits ``pred`` against 0/1 labels (classification).
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
    elif kind == "bce":
        labels = torch.where(mask, target, torch.zeros_like(target))
        per = torch.nn.functional.binary_cross_entropy_with_logits(pred, labels, reduction="none")
        per = torch.where(mask, per, torch.zeros_like(per))
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


def tensor_errors(t_true: np.ndarray, t_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure Frobenius error ‖T_pred − T_true‖_F and relative error ‖ΔT‖_F / ‖T_true‖_F, each (n,)
    (NaN where the label or the prediction has a NaN). ``t_true``, ``t_pred``: (n, …) tensors."""
    a = np.asarray(t_true, np.float64).reshape(len(t_true), -1)
    b = np.asarray(t_pred, np.float64).reshape(len(t_pred), -1)
    err = np.linalg.norm(a - b, axis=1)
    return err, err / np.maximum(np.linalg.norm(a, axis=1), 1e-300)


def tensor_metrics(t_true: np.ndarray, t_pred: np.ndarray,
                   thresholds: Sequence[float] = (0.25, 0.10, 0.05)) -> dict[str, float]:
    """Errors of predicted tensors as in GMTNet (Yan et al., "A space group symmetry informed network for O(3)
    equivariant crystal tensor prediction", ICML 2024): Frobenius-norm error and EwT.

    Args:
        t_true, t_pred: (n, …) tensors (e.g. (n, 3, 3) or (n, 6, 6)); rows with a NaN label are left out.
    Returns:
        ``fnorm``: mean Frobenius norm ‖T_pred − T_true‖_F; ``rel_fnorm``: mean of ‖ΔT‖_F / ‖T_true‖_F;
        ``ewt<p>``: fraction of structures with ‖ΔT‖_F / ‖T_true‖_F < p (p in %); ``n``: structures scored.
    """
    ok = ~np.isnan(np.asarray(t_true, np.float64).reshape(len(t_true), -1)).any(1)
    err, rel = (x[ok] for x in tensor_errors(t_true, t_pred))
    out = {"n": int(ok.sum()), "fnorm": float(err.mean()) if ok.any() else float("nan"),
           "rel_fnorm": float(rel.mean()) if ok.any() else float("nan")}
    for p in thresholds:
        out[f"ewt{round(100 * p)}"] = float((rel < p).mean()) if ok.any() else float("nan")
    return out
