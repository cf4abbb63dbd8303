"""Dielectric (or elastic) tensors: equivariant frame head vs. direct component regression with rotation augmentation.

Both runs use the same CrystalFramer backbone, sizes, recipe and the seeded 80/10/10 split of the shared set
(:func:`crystalframer.data.sources.shared.load_shared`), and the same number of optimizer steps:

* ``direct`` (baseline a): the invariant head regresses the 6 (or 21) independent components of the
  tensor as scalars; each epoch sees every training structure under a fresh random rotation, with the tensor
  rotated accordingly (augmentation). The model is not equivariant.
* ``frame`` (b): the equivariant frame head (``target_shapes``), no augmentation needed.

Metrics on the test split (GMTNet): mean Frobenius error and EwT 25/10/5 %
(:func:`crystalframer.training.metrics.tensor_metrics`). Per-row predictions go to ``<out>/<run>_test.csv``.

    PYTHONPATH=src python benchmarks/tensor_baselines.py --data-root /work/shared/data --epochs 6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from crystalframer.data.sources.shared import load_shared
from crystalframer.geometry.tensors import VOIGT_PAIRS, column_names, rotate, rotate_voigt
from crystalframer.training.data import DataSpec, Splits
from crystalframer.training.metrics import tensor_metrics
from crystalframer.training.trainer import TrainConfig, train

SETS = {"mp_dielectric_2017": ("e_total", "3x3sym"), "mp_elastic_2015": ("elastic_tensor", "6x6")}


def independent(t: np.ndarray, kind: str) -> np.ndarray:
    """(…, 3, 3) symmetric → 6 components (xx, yy, zz, yz, xz, xy); (…, 6, 6) Voigt → 21 (upper triangle)."""
    if kind == "6x6":
        iu = np.triu_indices(6)
        return t[..., iu[0], iu[1]]
    return np.stack([t[..., i, j] for i, j in VOIGT_PAIRS], -1)


def from_independent(c: np.ndarray, kind: str) -> np.ndarray:
    if kind == "6x6":
        iu = np.triu_indices(6)
        m = np.zeros(c.shape[:-1] + (6, 6))
        m[..., iu[0], iu[1]] = c
        return m + np.swapaxes(m, -1, -2) - np.einsum("...ii->...i", m)[..., None] * np.eye(6)
    m = np.zeros(c.shape[:-1] + (3, 3))
    for k, (i, j) in enumerate(VOIGT_PAIRS):
        m[..., i, j] = m[..., j, i] = c[..., k]
    return m


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def rotate_tensor(t: np.ndarray, R: np.ndarray, kind: str) -> np.ndarray:
    f = rotate_voigt if kind == "6x6" else rotate
    return f(torch.as_tensor(t), torch.as_tensor(R)).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--dataset", default="mp_dielectric_2017", choices=sorted(SETS))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--limit", type=int, default=None, help="at most N structures per split (quick checks)")
    p.add_argument("--runs", nargs="+", default=["frame", "direct"], choices=["frame", "direct"])
    p.add_argument("--out", default="benchmarks/tensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", help="tensor column (default: e_total / elastic_tensor)")
    args = p.parse_args()
    target, kind = SETS[args.dataset]
    target = args.target or target
    shape = (6, 6) if kind == "6x6" else (3, 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_shared(args.dataset, args.data_root, targets=[target], target_shapes={target: kind})
    parts = ds.split()  # the seeded 80/10/10 split of load_shared
    sets = {s: list(getattr(parts, s).crystals)[: args.limit] for s in ("train", "val", "test")}
    cols = column_names(target, kind)
    model = dict(num_layers=2, model_dim=32, num_heads=4, ff_dim=64, head_dims=[32], dist_bins=32, angle_bins=32)
    recipe = dict(epochs=args.epochs, swa_epochs=0, batch_size=args.batch_size, lr=args.lr, loss="mse",
                  seed=args.seed)
    settings = {"dataset": args.dataset, "target": target, "kind": kind, "split_sizes": {s: len(v) for s, v in sets.items()},
                "model": model, "recipe": recipe, "frame": "max", "preset": "quick"}
    results = {}
    for run in args.runs:
        common = dict(frame="max", model=model, preset="quick", plots=False, tensorboard=False, progress_bar=False,
                      accelerator="cpu", devices=1, output=str(out / f"run_{target}_{run}"))
        if run == "frame":
            splits = Splits(sets["train"], sets["val"], sets["test"], cols, [""] * len(cols))
            cfg = TrainConfig(data=DataSpec(dataset=args.dataset, root=args.data_root, targets=[target],
                                            target_shapes={target: kind}), recipe=recipe, **common)
        else:
            rng = np.random.default_rng(args.seed)
            names = [f"{target}_c{k}" for k in range(6 if kind != "6x6" else 21)]

            def comps(c, R=None):
                t = np.asarray(c.targets).reshape(shape)
                if R is not None:
                    t = rotate_tensor(t, R, kind)
                return independent(t, kind)

            train_rot = []
            for _ in range(args.epochs):  # one freshly rotated copy of each structure per epoch
                for c in sets["train"]:
                    R = random_rotation(rng)
                    train_rot.append(dataclasses.replace(c, lattice=c.lattice @ R.T, positions=c.positions @ R.T,
                                                         targets=comps(c, R)))
            fix = {s: [dataclasses.replace(c, targets=comps(c)) for c in sets[s]] for s in ("val", "test")}
            splits = Splits(train_rot, fix["val"], fix["test"], names, [""] * len(names))
            cfg = TrainConfig(data=DataSpec(dataset=args.dataset, root=args.data_root, targets=names),
                              recipe={**recipe, "epochs": 1}, **common)
        t0 = time.perf_counter()
        res = train(cfg, splits=splits, verbose=False, overwrite=True)
        fit = time.perf_counter() - t0
        m = res.model.eval()
        test = sets["test"]
        truth = np.stack([np.asarray(c.targets).reshape(shape) for c in test])
        pred = m.predict(test)
        pred = pred[target] if isinstance(pred, dict) else from_independent(pred, kind)
        results[run] = {**tensor_metrics(truth, pred), "train_time_s": fit,
                        "steps": int(res.metrics.get("global_steps", 0))}
        import pandas as pd

        table = pd.DataFrame({"id": [c.id for c in test]})
        for name, arr in (("true", truth), ("pred", pred)):
            for k, col in enumerate(cols):
                table[f"{name}{col[len(target):]}"] = arr.reshape(len(test), -1)[:, k]
        table.to_csv(out / f"{target}_{run}_test.csv", index=False, float_format="%.6g")
        print(run, json.dumps(results[run]), flush=True)
    (out / f"{target}_results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))


if __name__ == "__main__":
    main()
