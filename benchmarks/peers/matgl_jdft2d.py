"""A peer on the same folds: matgl (PyTorch Geometric backend) MEGNet, M3GNet or TensorNet on Matbench matbench_jdft2d.

Same protocol as ``crystalframer cv``: the official folds, the same validation rows drawn from each fold's
training rows (``crystalframer.training.cv.fold_sets``), the test rows predicted once by the final weights.
Budget: each fold gets the CPU seconds our run spent on it (``--budget-from`` its results.json; CPU time, not
wall time, because the machine is shared) or ``--cpu-budget-s``; training stops at the end of the epoch that
crosses it. Models are built and trained through matgl's public API (``MGLDataset``, ``MGLDataLoader``,
``ModelLightningModule``), as in matgl's own training examples.

    pip install -e ".[peers]"
    python benchmarks/peers/matgl_jdft2d.py --model megnet --budget-from \
        benchmarks/matbench/matbench_jdft2d/crystalframer-matbench/results.json --jobs 5
    python benchmarks/peers/matgl_jdft2d.py --model m3gnet --jobs 1 --threads 1 --budget-from \
        benchmarks/matbench/matbench_jdft2d/crystalframer-small-data/results.json
    python benchmarks/peers/matgl_jdft2d.py --model tensornet --jobs 1 --threads 1 --budget-from \
        benchmarks/matbench/matbench_jdft2d/crystalframer-small-data/results.json

Each fold's record holds its per-epoch validation MAE (``history``). The data folder is
``$CRYSTALFRAMER_SHARED/data/matbench_jdft2d`` (default: ``shared`` beside the repository).
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

import lightning as L
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = Path(os.environ.get("CRYSTALFRAMER_SHARED", REPO.parent / "shared")) / "data" / "matbench_jdft2d"


class EpochLog(L.Callback):
    """Record, after every training epoch, the validation MAE (metric ``key``, in target units) against the wall
    and CPU seconds (``time.process_time``, every thread) since ``start`` (default: the start of training), and
    stop at the end of the epoch in which the CPU time passes ``cpu_budget_s``."""

    def __init__(self, key: str, cpu_budget_s: float | None = None, start: tuple[float, float] | None = None):
        self.key, self.budget, self.start = key, cpu_budget_s, start
        self.history: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        if self.start is None:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning 2 runs the epoch's validation before this hook, so callback_metrics hold this epoch's value.
        val = trainer.callback_metrics.get(self.key)
        cpu = time.process_time() - self.start[1]
        self.history.append({"epoch": int(trainer.current_epoch) + 1, "wall_s": time.perf_counter() - self.start[0],
                             "cpu_s": cpu, "val_mae": None if val is None else float(val)})
        if self.budget is not None and cpu >= self.budget:
            trainer.should_stop = True


def matgl_setup(model_name: str, train: list, val: list, test: list | None = None, seed: int = 123,
                lr: float = 1e-3, decay_steps: int = 1000) -> tuple:
    """matgl ``ModelLightningModule`` (``megnet``, ``m3gnet`` or ``tensornet``, PyG backend) and its
    (train, val[, test]) loaders for crystalframer ``Crystal`` lists (first target). L1 loss on the target
    standardised with the training rows' mean and std; batch 32. M3GNet builds its three-body line graph inside
    its forward pass."""
    from matgl.ext.pymatgen import Structure2Graph, get_element_list
    from matgl.graph.data import MGLDataLoader, MGLDataset, collate_fn_graph
    from matgl.utils.training import ModelLightningModule

    L.seed_everything(seed, verbose=False)
    parts = {"train": train, "val": val, **({"test": test} if test else {})}
    structures = {k: [c.to_pymatgen() for c in v] for k, v in parts.items()}
    labels = {k: [float(c.targets[0]) for c in v] for k, v in parts.items()}
    elements = get_element_list([s for v in structures.values() for s in v])
    cutoff = 4.0 if model_name == "megnet" else 5.0
    conv = Structure2Graph(element_types=elements, cutoff=cutoff)
    with tempfile.TemporaryDirectory() as root:  # save_cache=False: nothing is written there
        sets = {k: MGLDataset(structures=structures[k], labels={"y": labels[k]}, converter=conv,
                              root=str(Path(root) / k), save_cache=False) for k in parts}
    loaders = MGLDataLoader(train_data=sets["train"], val_data=sets["val"], test_data=sets.get("test"), batch_size=32,
                            num_workers=0, collate_fn=collate_fn_graph)
    if model_name == "megnet":
        from matgl.layers import BondExpansion
        from matgl.models import MEGNet

        model = MEGNet(dim_node_embedding=16, dim_edge_embedding=100, dim_state_embedding=2, nblocks=3,
                       hidden_layer_sizes_input=(64, 32), hidden_layer_sizes_conv=(64, 64, 32),
                       nlayers_set2set=1, niters_set2set=2, hidden_layer_sizes_output=(32, 16),
                       is_classification=False, activation_type="softplus2",
                       bond_expansion=BondExpansion(rbf_type="Gaussian", initial=0.0, final=cutoff + 1.0,
                                                    num_centers=100, width=0.5),
                       cutoff=cutoff, gauss_width=0.5, element_types=elements)
    elif model_name == "m3gnet":
        from matgl.models import M3GNet

        model = M3GNet(element_types=elements, is_intensive=True, readout_type="set2set", cutoff=cutoff)
    elif model_name == "tensornet":
        from matgl.models import TensorNet

        # matgl's defaults (2 blocks, 64 units, O(3) invariants, weighted-atom readout) for an intensive target
        model = TensorNet(element_types=elements, is_intensive=True, cutoff=cutoff)
    else:
        raise ValueError(f"unknown matgl model {model_name!r} (megnet, m3gnet or tensornet)")
    y = np.array(labels["train"])
    module = ModelLightningModule(model=model, data_mean=float(y.mean()), data_std=float(y.std()),
                                  loss="l1_loss", lr=lr, decay_steps=decay_steps)
    return module, loaders


def matgl_trainer(callbacks: list) -> L.Trainer:
    """A CPU Lightning trainer that runs until a callback stops it (no logger, checkpoints or progress bar)."""
    return L.Trainer(max_epochs=100000, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)


def matgl_predict(module, loader) -> np.ndarray:
    """Predictions (target units) of a matgl module over a loader, in loader order."""
    module.eval()
    preds = []
    with torch.no_grad():
        for g, lat, state_attr, _ in loader:
            out = module(g=g, lat=lat, state_attr=state_attr)
            preds.append((out.reshape(-1) * module.data_std + module.data_mean).double().numpy())
    return np.concatenate(preds)


def _fold(job: dict) -> dict:
    from crystalframer.training.cv import fold_metrics

    torch.set_num_threads(job["threads"])
    t0, c0 = time.perf_counter(), time.process_time()
    module, (train_loader, val_loader, test_loader) = matgl_setup(job["model"], job["train"], job["val"],
                                                                  job["test"], job["seed"],
                                                                  decay_steps=job["decay_steps"])
    budget = float(job["cpu_budget_s"])
    log = EpochLog("val_MAE", budget, start=(t0, c0))  # the budget counts the graph building too
    trainer = matgl_trainer([log])
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    yp = matgl_predict(module, test_loader)
    yt = np.array([float(c.targets[0]) for c in job["test"]])
    return {"fold": job["fold"], "ids": [c.id for c in job["test"]], "predictions": yp.tolist(), "true": yt.tolist(),
            "metrics": fold_metrics(yt, yp), "epochs": int(trainer.current_epoch), "n_train": len(job["train"]),
            "n_val": len(job["val"]), "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "cpu_budget_s": budget, "threads": torch.get_num_threads(), "history": log.history}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["megnet", "m3gnet", "tensornet"], default="megnet")
    p.add_argument("--budget-from", help="our results.json: each fold gets the CPU seconds our fold used")
    p.add_argument("--cpu-budget-s", type=float, help="CPU seconds per fold instead")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores // jobs)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--name", help="folder name of the results (default matgl-<model>)")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "matbench" / "matbench_jdft2d"))
    a = p.parse_args()
    import matgl

    from crystalframer.data.sources.matbench import load_matbench
    from crystalframer.training.cv import fold_sets

    task = load_matbench(DATA / "matbench_jdft2d.json.gz")
    folds = task.fold_test_ids()
    budgets = {}
    if a.budget_from:
        ours = json.loads(Path(a.budget_from).read_text())
        budgets = {k: ours["folds"][f"fold_{k}"]["cpu_s"] for k in a.folds}
    elif a.cpu_budget_s:
        budgets = {k: a.cpu_budget_s for k in a.folds}
    else:
        sys.exit("give --budget-from or --cpu-budget-s")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = a.threads or max(1, cores // a.jobs)
    jobs = []
    for k in a.folds:
        tr, va, te = fold_sets(list(task.dataset), folds[k], k, 0.1, 0)
        jobs.append({"fold": k, "train": tr, "val": va, "test": te, "model": a.model, "seed": a.seed,
                     "threads": threads, "cpu_budget_s": budgets[k], "decay_steps": 1000})
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    os.environ.update(OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as ex:
            recs = list(ex.map(_fold, jobs))
    else:
        recs = [_fold(j) for j in jobs]
    maes = np.array([r["metrics"]["mae"] for r in recs])
    name = a.name or f"matgl-{a.model}"
    out = {"title": "matbench_jdft2d", "model": name, "target": "exfoliation_en", "target_unit": "meV/atom",
           "complete": len(recs) == 5,
           "metrics": {"mae_mean": float(maes.mean()), "mae_std": float(maes.std())},
           "folds": {f"fold_{r['fold']}": r for r in recs},
           "wall_s": float(sum(r["wall_s"] for r in recs)), "cpu_s": float(sum(r["cpu_s"] for r in recs)),
           "run_wall_s": time.perf_counter() - t0,
           "settings": {"command": "python " + " ".join(sys.argv), "val_fraction": 0.1, "val_seed": 0,
                        "batch_size": 32, "lr": 1e-3, "loss": "l1_loss", "seed": a.seed, "jobs": a.jobs,
                        "threads": threads, "budget_from": a.budget_from, "cpu_budget_s": a.cpu_budget_s},
           "versions": {"matgl": matgl.__version__, "torch": torch.__version__},
           "machine": {"cpu_count": cores, "load_before": list(load0), "load_after": list(os.getloadavg())}}
    dest = Path(a.output) / name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(out, indent=1))
    print(name, f"MAE {maes.mean():.2f} ± {maes.std():.2f}", [round(float(m), 2) for m in maes],
          [r["epochs"] for r in recs], f"{out['run_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
