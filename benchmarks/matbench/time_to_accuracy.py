"""Time to accuracy on one matbench_jdft2d fold: validation MAE after every epoch against CPU and wall seconds.

Each model trains on the fold's training rows and is validated on the same validation rows as
``crystalframer cv`` uses (``crystalframer.training.cv.fold_sets``, 10 %, seed 0 + fold), in its own process with
one torch thread, one model at a time: crystalframer with the configuration of the ``small-data`` cv run (its
``results.json`` settings, so the run is that fold's member bit for bit), matgl MEGNet, M3GNet and TensorNet (PyG
backend, set up as in ``benchmarks/peers/matgl_jdft2d.py``). Every model gets the same CPU budget (``--budget-factor`` ×
the CPU seconds our small-data run spent on the fold); the peers stop at the end of the epoch that crosses it,
crystalframer's preset ends at its own schedule (16 epochs, SWA over the last 4). Clocks start when training
starts (graph building is recorded apart). The validation MAE is in meV/atom on the original scale for every
model (crystalframer's ``val/mae_<target>`` converts the log-target predictions back before the error; matgl's
``val_MAE`` is that of the de-standardised predictions). The plot also draws the validation MAE of two
constants, the training rows' median and mean.

    python benchmarks/matbench/time_to_accuracy.py                  # train all four, then plot
    python benchmarks/matbench/time_to_accuracy.py --models megnet  # (re)run one; others kept in the JSON
    python benchmarks/matbench/time_to_accuracy.py --plot-only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "peers"))
from matgl_jdft2d import DATA, EpochLog, matgl_setup, matgl_trainer  # noqa: E402

SMALL = HERE / "matbench_jdft2d" / "crystalframer-small-data" / "results.json"
OUT = HERE / "time_to_accuracy.json"
MODELS = ("crystalframer", "megnet", "m3gnet", "tensornet")
LABELS = {"crystalframer": "crystalframer small-data", "megnet": "matgl MEGNet", "m3gnet": "matgl M3GNet",
          "tensornet": "matgl TensorNet"}


def _run(job: dict) -> dict:
    """Train one model on the fold (in a fresh process) and return its per-epoch curve."""
    import torch

    from crystalframer.data.sources.matbench import load_matbench
    from crystalframer.training.cv import MATBENCH_UNITS, fold_sets

    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    task = load_matbench(DATA / "matbench_jdft2d.json.gz")
    k = job["fold"]
    train_set, val_set, _ = fold_sets(list(task.dataset), task.fold_test_ids()[k], k, 0.1, 0)
    y_train = np.array([float(c.targets[0]) for c in train_set])
    y_val = np.array([float(c.targets[0]) for c in val_set])
    rec = {"model": job["model"], "n_train": len(train_set), "n_val": len(val_set), "threads": 1,
           "cpu_budget_s": job["budget"], "mean_predictor_val_mae": float(np.abs(y_val - y_train.mean()).mean()),
           "median_predictor_val_mae": float(np.abs(y_val - np.median(y_train)).mean())}
    if job["model"] == "crystalframer":
        from crystalframer.training.data import Splits
        from crystalframer.training.trainer import TrainConfig, train

        cfg_doc = json.loads(SMALL.read_text())["settings"]["config"]
        log = EpochLog(f"val/mae_{task.target}")  # the preset's schedule decides when it ends
        with tempfile.TemporaryDirectory() as d:
            cfg = TrainConfig.from_dict({**cfg_doc, "output": str(Path(d) / "run"), "plots": False})
            splits = Splits(train_set, val_set, [], [task.target], [MATBENCH_UNITS[task.target]])
            res = train(cfg, splits=splits, callbacks=[log], verbose=False)
        final = res.metrics.get("final_model", "swa")
        rec["final"] = {"model": final, "val_mae": res.metrics[final]["val"][task.target]["mae"],
                        "best_epoch": res.metrics.get("best_epoch")}
    else:
        module, (train_loader, val_loader) = matgl_setup(job["model"], train_set, val_set, None, job["seed"])
        log = EpochLog("val_MAE", job["budget"])
        matgl_trainer([log]).fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        rec["final"] = {"model": "last", "val_mae": log.history[-1]["val_mae"]}
    # setup = reading the data and building graphs/caches, before training starts
    rec["setup_cpu_s"] = log.start[1] - c0
    rec["setup_wall_s"] = log.start[0] - t0
    rec.update(history=log.history, wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
               load_before=load0, load_after=os.getloadavg()[0])
    return rec


def plot(doc: dict, path: Path) -> None:
    """Validation MAE against CPU seconds (left) and wall seconds (right), log x axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, clock in zip(axes, ("cpu_s", "wall_s")):
        for name, rec in doc["models"].items():
            h = [e for e in rec["history"] if e["val_mae"] is not None]
            line, = ax.plot([e[clock] for e in h], [e["val_mae"] for e in h], ".-", ms=3, lw=1,
                            label=LABELS.get(name, name))
            if rec["final"]["model"] == "swa":
                ax.plot([h[-1][clock]], [rec["final"]["val_mae"]], "*", ms=11, color=line.get_color(),
                        label=f"{LABELS.get(name, name)}: SWA model")
        ax.axhline(doc["median_predictor_val_mae"], color="0.4", ls="--", lw=1,
                   label="constant: the training rows' median")
        ax.axhline(doc["mean_predictor_val_mae"], color="0.4", ls="-.", lw=1, label="constant: their mean")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xscale("log")
        ax.set_xlabel(f"{'CPU' if clock == 'cpu_s' else 'wall-clock'} seconds since the start of training (1 thread)")
        ax.grid(alpha=0.3, which="both")
    allv = [e["val_mae"] for r in doc["models"].values() for e in r["history"] if e["val_mae"] is not None]
    axes[0].set_ylim(min(allv) * 0.9, max(allv + [doc["mean_predictor_val_mae"]]) * 1.03)
    axes[0].set_ylabel("validation MAE (meV/atom)")
    axes[0].axvline(doc["budget_cpu_s"] / doc["budget_factor"], color="0.6", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"matbench_jdft2d fold {doc['fold']}: validation MAE ({doc['n_val']} rows) vs training time; "
                 f"dotted: our small-data run's CPU s on this fold", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--budget-factor", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--plot-only", action="store_true")
    a = p.parse_args()
    doc = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if not a.plot_only:
        ours_cpu = json.loads(SMALL.read_text())["folds"][f"fold_{a.fold}"]["cpu_s"]
        if doc and (doc.get("fold"), doc.get("budget_factor")) != (a.fold, a.budget_factor):
            doc = {}  # other settings: start a new record
        command = "python " + " ".join(sys.argv)
        doc.update(fold=a.fold, budget_factor=a.budget_factor, budget_cpu_s=a.budget_factor * ours_cpu,
                   machine={"cpu_count": os.cpu_count()})
        doc.setdefault("command", command)
        doc.setdefault("models", {})
        os.environ.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        for name in a.models:  # one process at a time, each with one thread
            job = {"model": name, "fold": a.fold, "budget": doc["budget_cpu_s"], "seed": a.seed}
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
                rec = ex.submit(_run, job).result()
            doc["models"][name] = {**rec, "command": command}
            doc.update({k: rec[k] for k in ("n_val", "mean_predictor_val_mae", "median_predictor_val_mae")})
            OUT.write_text(json.dumps(doc, indent=1))
            last = rec["history"][-1]
            print(f"{name}: {len(rec['history'])} epochs, final val MAE {rec['final']['val_mae']:.2f} meV/atom, "
                  f"{last['cpu_s']:.0f} CPU s, {last['wall_s']:.0f} s wall of training")
    plot(doc, OUT.with_suffix(".png"))


if __name__ == "__main__":
    main()
