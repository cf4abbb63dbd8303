"""Rotation invariants of predicted vs. true tensors, from the per-row CSVs of ``tensor_baselines.py``: one panel
per CSV.

* rank-2 (3×3) tensors: the three principal values (eigenvalues);
* elastic tensors (6×6 Voigt, GPa): the Voigt bulk and shear moduli
  K_V = (C11+C22+C33 + 2(C12+C13+C23))/9, G_V = (C11+C22+C33 − (C12+C13+C23) + 3(C44+C55+C66))/15
  (Voigt 1928; both unchanged by a rotation of the crystal).

    python benchmarks/tensor_plot.py benchmarks/tensors/e_electronic_frame_seed0_test.csv \
        benchmarks/tensors/e_electronic_direct_seed0_test.csv -o benchmarks/tensors/e_electronic_principal.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def tensors(df: pd.DataFrame, prefix: str) -> np.ndarray:
    """(n, 3, 3) or (n, 6, 6) tensors from the ``<prefix>[i,j]`` columns."""
    n = 6 if f"{prefix}[5,5]" in df.columns else 3
    cols = [f"{prefix}[{i},{j}]" for i in range(n) for j in range(n)]
    return df[cols].to_numpy(float).reshape(-1, n, n)


def invariants(t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(n, k) rotation invariants and their labels: principal values (3×3) or K_V, G_V (6×6 Voigt)."""
    if t.shape[-1] == 3:
        return np.linalg.eigvalsh(0.5 * (t + t.transpose(0, 2, 1))), ["λ1", "λ2", "λ3"]
    d = np.einsum("nii->ni", t)
    normal = d[:, :3].sum(1)
    off = t[:, 0, 1] + t[:, 0, 2] + t[:, 1, 2]
    k = (normal + 2 * off) / 9
    g = (normal - off + 3 * d[:, 3:].sum(1)) / 15
    return np.stack([k, g], 1), ["K_V", "G_V"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--max", type=float, default=None, help="axis limit")
    args = p.parse_args()
    fig, axes = plt.subplots(1, len(args.csv), figsize=(4.2 * len(args.csv), 4), squeeze=False)
    for ax, path in zip(axes[0], args.csv):
        df = pd.read_csv(path)
        (a, labels), (b, _) = invariants(tensors(df, "true")), invariants(tensors(df, "pred"))
        lim = args.max or float(np.quantile(a, 0.98)) * 1.1
        for k, c in enumerate(("tab:blue", "tab:orange", "tab:green")[: a.shape[1]]):
            ax.scatter(a[:, k], b[:, k], s=6, c=c, alpha=0.6, label=labels[k])
        ax.plot([0, lim], [0, lim], "k--", lw=0.8)
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        what = "principal value" if a.shape[1] == 3 else "Voigt modulus (GPa)"
        ax.set_xlabel(f"true {what}")
        ax.set_ylabel(f"predicted {what}")
        ax.set_title(Path(path).stem.replace("_test", ""))
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
