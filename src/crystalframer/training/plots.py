"""PNG figures of a run: parity plots and learning curves (matplotlib, no global backend changes)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["parity_plot", "learning_curves"]


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
    # Figure + Agg canvas directly: works headless and never touches pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _label(name: str, unit: str) -> str:
    return f"{name} [{unit}]" if unit else name


def parity_plot(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], target_names: Sequence[str],
                target_units: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Predicted vs true values, one column per panel (e.g. "SWA", "best") and one row per target.

    Args:
        panels: {panel title: (y_true (n, T), y_pred (n, T))} in the targets' units (NaN true = missing).
        target_names, target_units: T names and units (axis labels).
        path: PNG file to write.
    """
    from crystalframer.training.metrics import regression_metrics

    T = len(target_names)
    fig, axes = _figure(T, max(1, len(panels)), (4.2 * max(1, len(panels)), 4.0 * T))
    for col, (ptitle, (yt, yp)) in enumerate(panels.items()):
        yt = np.asarray(yt, np.float64).reshape(len(yt), -1)
        yp = np.asarray(yp, np.float64).reshape(len(yp), -1)
        m = regression_metrics(yt, yp, target_names)
        for k, name in enumerate(target_names):
            ax = axes[k][col]
            ok = np.isfinite(yt[:, k]) & np.isfinite(yp[:, k])
            t, p = yt[ok, k], yp[ok, k]
            if t.size:
                lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
                pad = 0.03 * (hi - lo if hi > lo else 1.0)
                ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, ls="--", zorder=1)
                ax.scatter(t, p, s=6, alpha=0.5, lw=0, zorder=2)
                ax.set_xlim(lo - pad, hi + pad)
                ax.set_ylim(lo - pad, hi + pad)
            ax.set_aspect("equal", adjustable="box")
            unit = target_units[k] if k < len(target_units) else ""
            ax.set_xlabel("true " + _label(name, unit))
            ax.set_ylabel("predicted " + _label(name, unit))
            s = m[name]
            stats = (f"MAE {s['mae']:.4g}\nRMSE {s['rmse']:.4g}\nR² {s['r2']:.4f}\nn {s['n']}"
                     if s["n"] else "no labels")
            ax.text(0.03, 0.97, stats, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                    bbox=dict(boxstyle="round", fc="white", ec="0.8"))
            ax.set_title(f"{ptitle}: {name}" if T > 1 else ptitle, fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def learning_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, swa_start_epoch: int | None = None,
                    target_names: Sequence[str] = (), target_units: Sequence[str] = ()) -> Path:
    """Training/validation loss, validation MAE (or accuracy, for classification) per target and the LR
    against the epoch.

    Args:
        history: one dict per epoch (``epoch``, ``train_loss``, ``val_loss``, ``val_mae_<t>`` or
            ``val_acc_<t>``, ``lr``).
        swa_start_epoch: draws a vertical line where SWA starts.
    """
    def col(key: str) -> np.ndarray:
        return np.array([float(h.get(key, math.nan)) if h.get(key) is not None else math.nan for h in history])

    ep = col("epoch") + 1  # epochs counted from 1 in figures
    n_panels = 2 + len(target_names)
    fig, axes = _figure(1, n_panels, (4.2 * n_panels, 3.6))
    ax = axes[0][0]
    ax.plot(ep, col("train_loss"), label="train", marker=".")
    if np.isfinite(col("val_loss")).any():
        ax.plot(ep, col("val_loss"), label="val", marker=".")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (normalised)")
    if np.nanmin(np.r_[col("train_loss"), col("val_loss"), np.inf]) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    for k, name in enumerate(target_names):
        a = axes[0][1 + k]
        acc = any(f"val_acc_{name}" in h for h in history)  # a classification run
        a.plot(ep, col(f"val_acc_{name}" if acc else f"val_mae_{name}"), marker=".", color="C1")
        a.set_xlabel("epoch")
        unit = target_units[k] if k < len(target_units) else ""
        a.set_ylabel(f"val accuracy {name}" if acc else "val MAE " + _label(name, unit))
    a = axes[0][n_panels - 1]
    a.plot(ep, col("lr"), color="C2")
    a.set_xlabel("epoch")
    a.set_ylabel("learning rate (end of epoch)")
    for row in axes:
        for a in row:
            if swa_start_epoch is not None and 0 < swa_start_epoch < len(history):
                a.axvline(swa_start_epoch + 0.5, color="0.6", ls=":", lw=1)
            a.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
