"""Principal values (eigenvalues) of predicted vs. true rank-2 tensors, from the per-row CSVs of
``tensor_baselines.py``: one panel per run.

    python benchmarks/tensor_plot.py benchmarks/tensors/e_electronic_frame_test.csv \
        benchmarks/tensors/e_electronic_direct_test.csv -o benchmarks/tensors/e_electronic_principal.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def principal(df: pd.DataFrame, prefix: str) -> np.ndarray:
    cols = [f"{prefix}[{i},{j}]" for i in range(3) for j in range(3)]
    t = df[cols].to_numpy(float).reshape(-1, 3, 3)
    return np.linalg.eigvalsh(0.5 * (t + t.transpose(0, 2, 1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--max", type=float, default=None, help="axis limit")
    args = p.parse_args()
    fig, axes = plt.subplots(1, len(args.csv), figsize=(4.2 * len(args.csv), 4), squeeze=False)
    for ax, path in zip(axes[0], args.csv):
        df = pd.read_csv(path)
        a, b = principal(df, "true"), principal(df, "pred")
        lim = args.max or float(np.quantile(a, 0.98)) * 1.1
        for k, c in enumerate(("tab:blue", "tab:orange", "tab:green")):
            ax.scatter(a[:, k], b[:, k], s=6, c=c, alpha=0.6, label=f"λ{k + 1}")
        ax.plot([0, lim], [0, lim], "k--", lw=0.8)
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        ax.set_xlabel("true principal value")
        ax.set_ylabel("predicted principal value")
        ax.set_title(Path(path).stem.replace("_test", ""))
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
