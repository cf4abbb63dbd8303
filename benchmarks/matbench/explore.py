"""Nested validation for the small-data recipe: train on an inner split of matbench_jdft2d fold 0's training
rows, score on the rest of them. The test rows of every fold stay unseen.

    python benchmarks/matbench/explore.py NAME --model num_layers=2 ... [--recipe epochs=100 lr=1e-3 ...]
        [--transform log] [--fold 1] [--seeds 3]
    python benchmarks/matbench/explore.py --combine biglog_e16 biglog_e16_mse   # average recorded runs

``--combine`` averages the recorded inner-validation predictions of runs ``f<K>_<NAME>`` for K = 0, 1 and
prints the MAE of the average, for the rows below / above 200 meV/atom too (no training).

Each run appends {name, settings, inner-val MAE (final and best-epoch model), wall time, load} to
benchmarks/matbench/explore.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from crystalframer.data.sources.matbench import kfold_test_indices, load_matbench
from crystalframer.data.splits import split_indices
from crystalframer.training.data import Splits
from crystalframer.training.evaluation import predict_crystals
from crystalframer.training.trainer import TrainConfig, train

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CRYSTALFRAMER_SHARED", HERE.parents[2] / "shared")) / "data" / "matbench_jdft2d"
LOG = HERE / "explore.json"


def _kv(items):
    out = {}
    for it in items or []:
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def inner_splits(fold: int = 0, fraction: float = 0.2, seed: int = 0):
    """Fold ``fold``'s training rows (the other four folds), cut into inner train / inner val."""
    task = load_matbench(DATA / "matbench_jdft2d.json.gz")
    test0 = set(kfold_test_indices(task.n_rows)[fold].tolist())
    pool = [c for c, r in zip(task.dataset, task.rows) if int(r) not in test0]
    idx = split_indices(len(pool), (1 - fraction, fraction, 0.0), seed)
    return [pool[i] for i in sorted(idx["train"])], [pool[i] for i in sorted(idx["val"])]


def combine(names: list[str]) -> None:
    runs = {r["name"]: r for r in json.loads(LOG.read_text())}
    for fold in (0, 1):
        yt = np.array([c.targets[0] for c in inner_splits(fold)[1]])
        for mean in ("arithmetic", "geometric"):
            preds = np.array([runs[f"f{fold}_{n}"]["members"][0]["val_predictions"] for n in names])
            yp = preds.mean(0) if mean == "arithmetic" else np.exp(np.log(preds).mean(0))
            e = np.abs(yp - yt)
            print(f"fold {fold} {mean} mean of {names}: {e.mean():.2f} (bulk {e[yt < 200].mean():.1f}, "
                  f"tail {e[yt >= 200].mean():.1f})")


def main() -> None:
    import sys

    if sys.argv[1:2] == ["--combine"]:
        combine(sys.argv[2:])
        return
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--frame", default="max")
    p.add_argument("--preset", default="quick")
    p.add_argument("--model", nargs="*", default=[])
    p.add_argument("--recipe", nargs="*", default=[])
    p.add_argument("--seeds", type=int, default=1, help="ensemble members (seeds 123, 124, ...)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fold", type=int, default=0, help="the outer fold whose training rows are split")
    p.add_argument("--transform", choices=["none", "log"], default="none",
                   help="train on log(y) (targets all > 0), predictions mapped back with exp before scoring")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    tr, va = inner_splits(a.fold)
    if a.transform == "log":
        tr_fit, va_fit = ([dataclasses.replace(c, targets=np.log(np.asarray(c.targets, np.float64))) for c in s]
                          for s in (tr, va))
    else:
        tr_fit, va_fit = tr, va
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    preds, members = [], []
    yt = np.array([c.targets[0] for c in va])
    for j in range(a.seeds):
        recipe = _kv(a.recipe)
        recipe["seed"] = int(recipe.get("seed", 123)) + j
        cfg = TrainConfig(frame=a.frame, preset=a.preset, model=_kv(a.model), recipe=recipe, accelerator="cpu",
                          devices=1, progress_bar=False, tensorboard=False, plots=False,
                          output=f"/tmp/mb_explore/{a.name}/m{j}")
        res = train(cfg, splits=Splits(tr_fit, va_fit, [], ["exfoliation_en"], ["meV/atom"]), verbose=False,
                    resume=True)
        final = res.metrics["final_model"]
        yp = predict_crystals(res.model, va, 128, "cpu").y_pred[:, 0]
        if a.transform == "log":  # the trainer's val MAEs below are then on the log scale
            yp = np.exp(yp)
        preds.append(yp)
        yb = predict_crystals(res.best_model, va, 128, "cpu").y_pred[:, 0]
        yb = np.exp(yb) if a.transform == "log" else yb
        members.append({"seed": recipe["seed"], "val_mae_final": res.metrics[final]["val"]["exfoliation_en"]["mae"],
                        "val_mae_best": res.metrics["best"]["val"]["exfoliation_en"]["mae"],
                        "best_epoch": res.metrics["best_epoch"], "fit_time_s": res.metrics["fit_time_s"],
                        "params": res.metrics["num_parameters"], "val_predictions": yp.tolist(),
                        "mae_final_units": float(np.mean(np.abs(yp - yt))),  # meV/atom, also with --transform log
                        "mae_best_units": float(np.mean(np.abs(yb - yt)))})
    wall = time.perf_counter() - t0
    ens = float(np.mean(np.abs(np.mean(preds, axis=0) - yt)))
    row = {"name": a.name, "fold": a.fold, "transform": a.transform, "frame": a.frame, "preset": a.preset,
           "model": _kv(a.model), "recipe": _kv(a.recipe), "seeds": a.seeds, "n_train": len(tr),
           "n_val": len(va), "inner_val_mae": ens, "members": members,
           "wall_s": wall, "cpu_s": time.process_time() - c0, "threads": a.threads,
           "load_before": list(load0), "load_after": list(os.getloadavg()),
           "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    log = json.loads(LOG.read_text()) if LOG.is_file() else []
    log.append(row)
    LOG.write_text(json.dumps(log, indent=1))  # runs in parallel: read-append-write right away
    print(json.dumps({k: row[k] for k in ("name", "inner_val_mae", "wall_s", "cpu_s")}),
          [(m["mae_best_units"], m["best_epoch"]) for m in members])


if __name__ == "__main__":
    main()
