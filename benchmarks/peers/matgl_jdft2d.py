"""A peer on the same folds: matgl (PyTorch Geometric backend) MEGNet or M3GNet on Matbench matbench_jdft2d.

Same protocol as ``crystalframer cv``: the official folds, the same validation rows drawn from each fold's
training rows (``crystalframer.training.cv.fold_sets``), the test rows predicted once by the final weights.
Budget: each fold gets the CPU seconds our run spent on it (``--budget-from`` its results.json; CPU time, not
wall time, because the machine is shared) or ``--cpu-budget-s``; training stops at the end of the epoch that
crosses it. Models are built and trained through matgl's public API (``MGLDataset``, ``MGLDataLoader``,
``ModelLightningModule``), as in matgl's own training examples.

    pip install -e ".[peers]"
    python benchmarks/peers/matgl_jdft2d.py --model megnet --budget-from \
        benchmarks/matbench/matbench_jdft2d/crystalframer-matbench/results.json --jobs 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = Path(os.environ.get("CRYSTALFRAMER_SHARED", REPO.parent / "shared")) / "data" / "matbench_jdft2d"


def _fold(job: dict) -> dict:
    import lightning as L
    import torch
    from matgl.ext.pymatgen import Structure2Graph, get_element_list
    from matgl.graph.data import MGLDataLoader, MGLDataset, collate_fn_graph
    from matgl.utils.training import ModelLightningModule

    from crystalframer.training.cv import fold_metrics

    torch.set_num_threads(job["threads"])
    t0, c0 = time.perf_counter(), time.process_time()
    L.seed_everything(job["seed"], verbose=False)
    structures = {k: [c.to_pymatgen() for c in job[k]] for k in ("train", "val", "test")}
    labels = {k: [float(c.targets[0]) for c in job[k]] for k in ("train", "val", "test")}
    elements = get_element_list(structures["train"] + structures["val"] + structures["test"])
    cutoff = 4.0 if job["model"] == "megnet" else 5.0
    conv = Structure2Graph(element_types=elements, cutoff=cutoff)
    root = Path(job["work"]) / f"fold_{job['fold']}"
    sets = {k: MGLDataset(structures=structures[k], labels={"y": labels[k]}, converter=conv,
                          root=str(root / k), include_line_graph=job["model"] == "m3gnet", save_cache=False)
            for k in ("train", "val", "test")}
    kw = {"collate_fn": collate_fn_graph} if job["model"] == "megnet" else {}
    if job["model"] == "m3gnet":
        from functools import partial

        kw = {"collate_fn": partial(collate_fn_graph, include_line_graph=True)}
    train_loader, val_loader, test_loader = MGLDataLoader(train_data=sets["train"], val_data=sets["val"],
                                                          test_data=sets["test"], batch_size=32, num_workers=0,
                                                          **kw)
    if job["model"] == "megnet":
        from matgl.layers import BondExpansion
        from matgl.models import MEGNet

        model = MEGNet(dim_node_embedding=16, dim_edge_embedding=100, dim_state_embedding=2, nblocks=3,
                       hidden_layer_sizes_input=(64, 32), hidden_layer_sizes_conv=(64, 64, 32),
                       nlayers_set2set=1, niters_set2set=2, hidden_layer_sizes_output=(32, 16),
                       is_classification=False, activation_type="softplus2",
                       bond_expansion=BondExpansion(rbf_type="Gaussian", initial=0.0, final=cutoff + 1.0,
                                                    num_centers=100, width=0.5),
                       cutoff=cutoff, gauss_width=0.5, element_types=elements)
    else:
        from matgl.models import M3GNet

        model = M3GNet(element_types=elements, is_intensive=True, readout_type="set2set", cutoff=cutoff)
    y = np.array(labels["train"])
    module = ModelLightningModule(model=model, include_line_graph=job["model"] == "m3gnet",
                                  data_mean=float(y.mean()), data_std=float(y.std()), loss="l1_loss", lr=1e-3,
                                  decay_steps=job["decay_steps"])
    budget = float(job["cpu_budget_s"])

    class CpuBudget(L.Callback):
        """Stop at the end of the epoch in which the process has used its CPU budget."""

        def on_train_epoch_end(self, trainer, pl_module):
            if time.process_time() - c0 >= budget:
                trainer.should_stop = True

    trainer = L.Trainer(max_epochs=100000, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[CpuBudget()])
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    module.eval()
    preds = []
    with torch.no_grad():
        for batch in test_loader:
            if job["model"] == "m3gnet":
                g, lat, l_g, state_attr, _ = batch
                out = module(g=g, lat=lat, l_g=l_g, state_attr=state_attr)
            else:
                g, lat, state_attr, _ = batch
                out = module(g=g, lat=lat, state_attr=state_attr)
            preds.append((out.reshape(-1) * module.data_std + module.data_mean).double().numpy())
    yp = np.concatenate(preds)
    yt = np.array(labels["test"])
    return {"fold": job["fold"], "ids": [c.id for c in job["test"]], "predictions": yp.tolist(), "true": yt.tolist(),
            "metrics": fold_metrics(yt, yp), "epochs": int(trainer.current_epoch), "n_train": len(job["train"]),
            "n_val": len(job["val"]), "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "cpu_budget_s": budget, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["megnet", "m3gnet"], default="megnet")
    p.add_argument("--budget-from", help="our results.json: each fold gets the CPU seconds our fold used")
    p.add_argument("--cpu-budget-s", type=float, help="CPU seconds per fold instead")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--name", help="folder name of the results (default matgl-<model>)")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "matbench" / "matbench_jdft2d"))
    a = p.parse_args()
    import matgl
    import torch

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
    threads = max(1, cores // a.jobs)
    jobs = []
    for k in a.folds:
        tr, va, te = fold_sets(list(task.dataset), folds[k], k, 0.1, 0)
        jobs.append({"fold": k, "train": tr, "val": va, "test": te, "model": a.model, "seed": a.seed,
                     "threads": threads, "cpu_budget_s": budgets[k], "work": f"/tmp/matgl_{a.model}",
                     "decay_steps": 1000})
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    os.environ.update(OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as ex:
            recs = list(ex.map(_fold, jobs))
    else:
        recs = [_fold(j) for j in jobs]
    maes = np.array([r["metrics"]["mae"] for r in recs])
    name = a.name or {"megnet": "matgl-megnet", "m3gnet": "matgl-m3gnet"}[a.model]
    out = {"title": "matbench_jdft2d", "model": name, "target": "exfoliation_en", "target_unit": "meV/atom",
           "complete": len(recs) == 5,
           "metrics": {"mae_mean": float(maes.mean()), "mae_std": float(maes.std())},
           "folds": {f"fold_{r['fold']}": r for r in recs},
           "wall_s": float(sum(r["wall_s"] for r in recs)), "cpu_s": float(sum(r["cpu_s"] for r in recs)),
           "run_wall_s": time.perf_counter() - t0,
           "settings": {"command": "python " + " ".join(sys.argv), "val_fraction": 0.1, "val_seed": 0,
                        "batch_size": 32, "lr": 1e-3, "loss": "l1_loss", "seed": a.seed, "jobs": a.jobs},
           "versions": {"matgl": matgl.__version__, "torch": torch.__version__},
           "machine": {"cpu_count": cores, "load_before": list(load0), "load_after": list(os.getloadavg())}}
    dest = Path(a.output) / name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(out, indent=1))
    print(name, f"MAE {maes.mean():.2f} ± {maes.std():.2f}", [round(float(m), 2) for m in maes],
          [r["epochs"] for r in recs], f"{out['run_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
