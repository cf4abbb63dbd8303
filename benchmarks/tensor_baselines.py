"""Dielectric (or elastic) tensors: equivariant frame head vs. direct component regression with rotation augmentation.

Both methods use the same CrystalFramer backbone, sizes, recipe and the seeded 80/10/10 split of the shared set
(:func:`crystalframer.data.sources.shared.load_shared`), and the same number of optimizer steps per epoch:

* ``direct`` (baseline a): the invariant head regresses the 6 (or 21) independent components of the
  tensor as scalars; every time a training structure is drawn it is rotated by a fresh random rotation, with
  its tensor rotated accordingly (augmentation). The model is not equivariant.
* ``frame`` (b): the equivariant frame head (``target_shapes``), no augmentation needed.

One call trains one method for one seed with ``--epochs`` epochs and scores the live model on the validation
and test rows at every epoch of ``--snapshots`` (the inverse-square-root LR schedule depends only on the step,
and without SWA a run stopped at epoch E is the E-epoch run, so the snapshots are the shorter budgets).
Metrics as in GMTNet: mean Frobenius error and EwT 25/10/5 %
(:func:`crystalframer.training.metrics.tensor_metrics`). CPU seconds are ``time.process_time`` of this process
(run it with one torch thread: ``--threads 1``), training only (the snapshot scoring is subtracted).
Each run writes ``<out>/records/<target>_<method>_seed<k>.json`` (settings, metrics per snapshot) and ``.npz``
(val/test predictions per snapshot); the Lightning run folder (checkpoints, logs) is scratch in ``<out>/runs/``.

``--summarize`` then picks, for each (target, method), the snapshot epoch with the lowest mean validation
Frobenius error over the seeds among the epochs that all runs of both methods have (equal optimizer steps; test
rows are never used to choose), and again for the direct method among all its epochs whose training CPU does
not exceed the frame head's at its chosen epoch (equal CPU, :func:`equal_cpu`), writes the per-row test predictions of
that epoch to ``<out>/<target>_<method>_seed<k>_test.csv``, the summary to ``<out>/<target>_summary.json`` and
prints a Markdown table (mean ± std over seeds), then the frame head against the direct head paired by seed and by
test row (:func:`paired`: is a gap more than noise?).

    PYTHONPATH=src python benchmarks/tensor_baselines.py --data-root /work/shared/data --target e_electronic \
        --method frame --seed 0 --epochs 40 --snapshots 20 30 40 --threads 1
    python benchmarks/tensor_baselines.py --summarize --target e_electronic
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

SETS = {"mp_dielectric_2017": "3x3sym", "mp_elastic_2015": "6x6"}
DATASET_OF = {"e_electronic": "mp_dielectric_2017", "e_total": "mp_dielectric_2017",
              "elastic_tensor": "mp_elastic_2015"}


def independent(t: np.ndarray, kind: str) -> np.ndarray:
    """(…, 3, 3) symmetric → 6 components (xx, yy, zz, yz, xz, xy); (…, 6, 6) Voigt → 21 (upper triangle)."""
    from crystalframer.geometry.tensors import VOIGT_PAIRS

    if kind == "6x6":
        iu = np.triu_indices(6)
        return t[..., iu[0], iu[1]]
    return np.stack([t[..., i, j] for i, j in VOIGT_PAIRS], -1)


def from_independent(c: np.ndarray, kind: str) -> np.ndarray:
    """Inverse of :func:`independent`: (…, 6) → (…, 3, 3) symmetric, (…, 21) → (…, 6, 6) symmetric."""
    from crystalframer.geometry.tensors import VOIGT_PAIRS

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
    """A uniformly distributed proper rotation (unit quaternion with normal components)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def rotate_tensor(t: np.ndarray, R: np.ndarray, kind: str) -> np.ndarray:
    from crystalframer.geometry.tensors import rotate, rotate_voigt

    f = rotate_voigt if kind == "6x6" else rotate
    return f(torch.as_tensor(t), torch.as_tensor(R)).numpy()


def rotated_components(c, shape: tuple[int, ...], kind: str, rng: np.random.Generator | None):
    """The crystal under a random rotation (none without ``rng``), its label the rotated tensor's components."""
    t = np.asarray(c.targets).reshape(shape)
    if rng is None:
        return dataclasses.replace(c, targets=independent(t, kind))
    R = random_rotation(rng)
    return dataclasses.replace(c, lattice=c.lattice @ R.T, positions=c.positions @ R.T,
                               targets=independent(rotate_tensor(t, R, kind), kind))


class RotatingDataset(torch.utils.data.Dataset):
    """Training crystals rotated afresh each time they are drawn (once per epoch), labels rotated with them."""

    def __init__(self, crystals, shape, kind, seed: int):
        self.crystals, self.shape, self.kind = list(crystals), shape, kind
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.crystals)

    def __getitem__(self, i: int):
        return rotated_components(self.crystals[int(i)], self.shape, self.kind, self.rng)


def main_run(args) -> None:
    import lightning as L

    from crystalframer.data.sources.shared import load_shared
    from crystalframer.geometry.tensors import column_names
    from crystalframer.training.data import DataSpec, Splits
    from crystalframer.training.metrics import tensor_metrics
    from crystalframer.training.trainer import TrainConfig, train

    torch.set_num_threads(args.threads)
    dataset = DATASET_OF[args.target]
    kind = SETS[dataset]
    shape = (6, 6) if kind == "6x6" else (3, 3)
    target, method, seed = args.target, args.method, args.seed
    out = Path(args.out)
    (out / "records").mkdir(parents=True, exist_ok=True)
    ds = load_shared(dataset, args.data_root, targets=[target], target_shapes={target: kind})
    parts = ds.split()  # the seeded 80/10/10 split of load_shared
    sets = {s: list(getattr(parts, s).crystals)[: args.limit] for s in ("train", "val", "test")}
    truth = {s: np.stack([np.asarray(c.targets).reshape(shape) for c in sets[s]]) for s in ("val", "test")}
    model = dict(num_layers=args.layers, model_dim=args.dim, num_heads=4, ff_dim=2 * args.dim,
                 head_dims=[args.dim], dist_bins=32, angle_bins=32)
    recipe = dict(epochs=args.epochs, swa_epochs=0, batch_size=args.batch_size, lr=args.lr, loss="mse", seed=seed)
    snapshots = sorted({e for e in args.snapshots if 0 < e <= args.epochs} | {args.epochs})
    common = dict(frame="max", model=model, preset="quick", plots=False, tensorboard=False, progress_bar=False,
                  accelerator="cpu", devices=1, output=str(out / "runs" / f"tmp_{target}_{method}_seed{seed}"))
    if method == "frame":
        cols = column_names(target, kind)
        splits = Splits(sets["train"], sets["val"], sets["test"], cols, [""] * len(cols))
        cfg = TrainConfig(data=DataSpec(dataset=dataset, root=args.data_root, targets=[target],
                                        target_shapes={target: kind}), recipe=recipe, **common)
        rotating = None
    else:
        names = [f"{target}_c{k}" for k in range(21 if kind == "6x6" else 6)]
        # normalisation statistics from one rotated copy of the training set (the distribution trained on)
        rng = np.random.default_rng(10_000 + seed)
        train_stats = [rotated_components(c, shape, kind, rng) for c in sets["train"]]
        fixed = {s: [rotated_components(c, shape, kind, None) for c in sets[s]] for s in ("val", "test")}
        splits = Splits(train_stats, fixed["val"], fixed["test"], names, [""] * len(names))
        cfg = TrainConfig(data=DataSpec(dataset=dataset, root=args.data_root, targets=names), recipe=recipe, **common)
        rotating = RotatingDataset(sets["train"], shape, kind, seed)

    def predict(m, crystals):
        p = m.predict(crystals, batch_size=128)
        return p[target] if isinstance(p, dict) else from_independent(p, kind)

    class Snapshots(L.Callback):
        """Swap in the rotating training set (direct); score val/test at the snapshot epochs."""

        def __init__(self):
            self.records, self.preds, self.eval_cpu = [], {}, 0.0

        def on_fit_start(self, trainer, pl_module):
            if rotating is not None:
                trainer.datamodule.train_set = rotating

        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            if epoch not in snapshots:
                return
            c0 = time.process_time()
            rec = {"epoch": epoch, "steps": int(trainer.global_step)}
            for s in ("val", "test"):
                p = predict(pl_module.model, sets[s])
                self.preds[f"{s}_epoch{epoch}"] = p.astype(np.float32)
                rec[s] = tensor_metrics(truth[s], p)
            self.eval_cpu += time.process_time() - c0
            rec["train_cpu_s"] = time.process_time() - cpu0 - self.eval_cpu
            rec["wall_s"] = time.perf_counter() - wall0
            rec["loadavg_1min"] = os.getloadavg()[0]
            self.records.append(rec)
            print(f"{target} {method} seed{seed} epoch {epoch}: val fnorm {rec['val']['fnorm']:.4g} "
                  f"ewt25 {rec['val']['ewt25']:.3f}; test fnorm {rec['test']['fnorm']:.4g}; "
                  f"train CPU {rec['train_cpu_s']:.0f} s; load {rec['loadavg_1min']:.2f}", flush=True)

    snap = Snapshots()
    load0 = os.getloadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = train(cfg, splits=splits, verbose=False, overwrite=True, callbacks=[snap])
    total_cpu = time.process_time() - cpu0
    settings = {"dataset": dataset, "target": target, "kind": kind, "method": method, "seed": seed,
                "split_sizes": {s: len(v) for s, v in sets.items()}, "model": model, "recipe": recipe,
                "frame": "max", "preset": "quick", "torch_threads": torch.get_num_threads(),
                "num_parameters": int(res.metrics.get("num_parameters", 0)), "snapshots": snapshots}
    summary = {"settings": settings, "snapshots": snap.records, "total_cpu_s": total_cpu,
               "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    stem = out / "records" / f"{target}_{method}_seed{seed}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    np.savez_compressed(stem.with_suffix(".npz"), ids_val=np.array([c.id for c in sets["val"]]),
                        ids_test=np.array([c.id for c in sets["test"]]), true_val=truth["val"], true_test=truth["test"],
                        **snap.preds)


def write_test_csv(out: Path, target: str, kind: str, method: str, seed: int, epoch: int, tag: str = "") -> None:
    """Per-row test predictions of one run at one snapshot epoch: ``<out>/<target>_<method>_seed<k><tag>_test.csv``
    (id, true and predicted components)."""
    import pandas as pd

    from crystalframer.geometry.tensors import column_names

    cols = column_names(target, kind)
    z = np.load(out / "records" / f"{target}_{method}_seed{seed}.npz")
    ids, n = z["ids_test"], len(z["ids_test"])
    table = pd.DataFrame({"id": ids})
    for name, arr in (("true", z["true_test"]), ("pred", z[f"test_epoch{epoch}"])):
        for k, col in enumerate(cols):
            table[f"{name}{col[len(target):]}"] = arr.reshape(n, -1)[:, k].astype(np.float64)
    table.to_csv(out / f"{target}_{method}_seed{seed}{tag}_test.csv", index=False, float_format="%.6g")


def choose(data: list[dict], epochs: list[int], keys: tuple) -> dict:
    """The snapshot epoch among ``epochs`` with the lowest mean validation Frobenius error over the runs ``data``
    (one per seed; test rows are never used), and the runs' metrics there (values, mean and std per split)."""
    by = {e: [next(r for r in d["snapshots"] if r["epoch"] == e) for d in data] for e in epochs}
    val_fnorm = {e: float(np.mean([r["val"]["fnorm"] for r in by[e]])) for e in epochs}
    best = min(epochs, key=lambda e: val_fnorm[e])
    chosen = by[best]
    stat = {split: {k: [r[split][k] for r in chosen] for k in keys} for split in ("val", "test")}
    return {"seeds": [d["settings"]["seed"] for d in data], "chosen_epoch": best, "mean_val_fnorm_by_epoch": val_fnorm,
            "steps": [r["steps"] for r in chosen], "train_cpu_s": [r["train_cpu_s"] for r in chosen],
            "loadavg_1min": [r["loadavg_1min"] for r in chosen], "settings": data[0]["settings"],
            **{split: {k: {"values": v, "mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in st.items()}
               for split, st in stat.items()}}


def common_epochs(runs: list[dict]) -> list[int]:
    """The snapshot epochs that every run has."""
    return sorted(set.intersection(*[{r["epoch"] for r in d["snapshots"]} for d in runs]))


def equal_cpu(direct: list[dict], frame: dict, keys: tuple) -> dict:
    """The direct method at the frame head's training CPU: :func:`choose` among all its snapshot epochs whose
    mean training CPU seconds do not exceed the frame head's at the frame head's chosen epoch (``cap_cpu_s``).
    Direct runs may be longer than the frame runs for this; ``capped`` says whether the cap, not the end of the
    runs, limited the choice."""
    epochs = common_epochs(direct)
    cpu = {e: float(np.mean([next(r["train_cpu_s"] for r in d["snapshots"] if r["epoch"] == e) for d in direct]))
           for e in epochs}
    cap = float(np.mean(frame["train_cpu_s"]))
    allowed = [e for e in epochs if cpu[e] <= cap] or epochs[:1]
    return {"cap_cpu_s": cap, "mean_train_cpu_s_by_epoch": cpu, "allowed_epochs": allowed,
            "capped": allowed[-1] != epochs[-1], **choose(direct, allowed, keys)}


def row_errors(out: Path, target: str, method: str, seeds: list[int], epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Frobenius errors ‖ΔT‖_F and relative errors ‖ΔT‖_F / ‖T‖_F of every test row, each (n_seeds, n_rows),
    at one snapshot epoch."""
    from crystalframer.training.metrics import tensor_errors

    err, rel = [], []
    for seed in seeds:
        z = np.load(out / "records" / f"{target}_{method}_seed{seed}.npz")
        e, r = tensor_errors(z["true_test"], z[f"test_epoch{epoch}"])
        err.append(e)
        rel.append(r)
    return np.stack(err), np.stack(rel)


def paired(out: Path, target: str, frame: dict, direct: dict, keys: tuple) -> dict:
    """The frame head against the direct head, paired two ways, for deciding whether a gap is more than noise.

    * by seed: per-seed differences frame − direct of each test metric, their mean and standard error
      (std with ddof 1 over √n_seeds; the seeds share the split, so this is the spread of training noise);
    * by test row: for each EwT threshold, in how many seeds each row is within it for either head; the rows
      where the frame head is within in more seeds vs. fewer, and the two-sided sign test (exact binomial) of
      that count; for the Frobenius and relative errors, the rows whose seed-mean error is lower for the frame
      head, their sign test, and the Wilcoxon signed-rank test of the seed-mean differences. The rows are the
      sample that varies between test sets, so these say how sure a gap is beyond this test split.
    """
    from scipy.stats import binomtest, wilcoxon

    seeds = sorted(set(frame["seeds"]) & set(direct["seeds"]))
    per_seed = {}
    for k in keys:
        fv = dict(zip(frame["seeds"], frame["test"][k]["values"]))
        dv = dict(zip(direct["seeds"], direct["test"][k]["values"]))
        d = np.array([fv[s] - dv[s] for s in seeds])
        per_seed[k] = {"diffs": d.tolist(), "mean": float(d.mean()),
                       "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")}
    ef, rf = row_errors(out, target, "frame", seeds, frame["chosen_epoch"])
    ed, rd = row_errors(out, target, "direct", seeds, direct["chosen_epoch"])
    seed_mean = {"fnorm": (ef.mean(0), ed.mean(0)), "rel_fnorm": (rf.mean(0), rd.mean(0))}
    by_row = {}
    for k in keys:
        if k.startswith("ewt"):
            cf, cd = (rf < int(k[3:]) / 100).sum(0), (rd < int(k[3:]) / 100).sum(0)
        elif k in seed_mean:
            cf, cd = -seed_mean[k][0], -seed_mean[k][1]  # higher is better, as for the EwT counts
        else:
            continue
        better, worse = int((cf > cd).sum()), int((cf < cd).sum())
        p = binomtest(better, better + worse, 0.5).pvalue if better + worse else 1.0
        rec = {"rows_frame_better": better, "rows_direct_better": worse, "sign_test_p": float(p)}
        if k in seed_mean:
            rec["wilcoxon_p"] = float(wilcoxon(*seed_mean[k]).pvalue)
        by_row[k] = rec
    return {"seeds": seeds, "frame_epoch": frame["chosen_epoch"], "direct_epoch": direct["chosen_epoch"],
            "per_seed": per_seed, "per_row": by_row}


def paired_table(target: str, label: str, pr: dict, keys: tuple) -> list[str]:
    """Markdown rows of a :func:`paired` result."""
    scale = {k: 100 if k.startswith("ewt") else 1 for k in keys}
    rows = []
    for k in keys:
        s, r = pr["per_seed"][k], pr["per_row"].get(k)
        rows_cell = p_cell = ""
        if r:
            rows_cell = f"{r['rows_frame_better']} / {r['rows_direct_better']}"
            p_cell = f"{r['sign_test_p']:.2g}"
            if "wilcoxon_p" in r:
                p_cell += f" (Wilcoxon {r['wilcoxon_p']:.2g})"
        rows.append(f"| `{target}` | {label} | {k} | {s['mean'] * scale[k]:+.3g} ± {s['se'] * scale[k]:.2g} | "
                    f"{rows_cell} | {p_cell} |")
    return rows


def table_row(target: str, label: str, m: dict, keys: tuple) -> str:
    """One Markdown row of the summary table for a :func:`choose` result."""
    scale = {k: 100 if k.startswith("ewt") else 1 for k in keys}
    return (f"| `{target}` | {label} | {m['chosen_epoch']} | {int(np.mean(m['steps']))} | "
            f"{np.mean(m['train_cpu_s']):.0f} ± {np.std(m['train_cpu_s']):.0f} | {len(m['seeds'])} | "
            f"{m['val']['fnorm']['mean']:.3g} | "
            + " | ".join(f"{m['test'][k]['mean'] * scale[k]:.3g} ± {m['test'][k]['std'] * scale[k]:.2g}" for k in keys)
            + " |")


def summarize(args) -> None:
    """Choose each method's epoch budget on the validation rows; write test CSVs, the summary json and a table."""
    out = Path(args.out)
    target = args.target
    kind = SETS[DATASET_OF[target]]
    keys = ("fnorm", "rel_fnorm", "ewt25", "ewt10", "ewt5")
    summary: dict = {}
    rows = []
    found = {m: [json.loads(p.read_text()) for p in sorted((out / "records").glob(f"{target}_{m}_seed*.json"))]
             for m in ("direct", "frame")}
    if args.seeds:  # e.g. the table of an earlier session, before more seeds were added
        found = {m: [d for d in runs if d["settings"]["seed"] in args.seeds] for m, runs in found.items()}
    if not any(found.values()):
        raise SystemExit(f"no run records of {target} in {out / 'records'}")
    # candidate budgets: the snapshot epochs that every run of both methods has
    epochs = common_epochs([d for runs in found.values() for d in runs])
    for method, data in found.items():
        if not data:
            continue
        summary[method] = choose(data, epochs, keys)
        for seed in summary[method]["seeds"]:  # per-row test predictions at the chosen epoch
            write_test_csv(out, target, kind, method, seed, summary[method]["chosen_epoch"])
        rows.append(table_row(target, method, summary[method], keys))
    if found["direct"] and found["frame"]:
        e = summary["direct_at_frame_cpu"] = equal_cpu(found["direct"], summary["frame"], keys)
        if e["chosen_epoch"] != summary["direct"]["chosen_epoch"]:
            for seed in e["seeds"]:
                write_test_csv(out, target, kind, "direct", seed, e["chosen_epoch"], "_equal_cpu")
        rows.append(table_row(target, "direct, CPU ≤ frame's", e, keys))
        summary["paired"] = {"equal_steps": paired(out, target, summary["frame"], summary["direct"], keys),
                             "equal_cpu": paired(out, target, summary["frame"], e, keys)}
    (out / f"{target}_summary.json").write_text(json.dumps(summary, indent=2))
    print("| target | method | epochs (val) | steps | train CPU s | seeds | val ‖ΔT‖_F | test ‖ΔT‖_F | "
          "rel. error | EwT 25 % | EwT 10 % | EwT 5 % |")
    print("| --- " * 12 + "|")
    print("\n".join(rows))
    if "paired" in summary:
        print("\n| target | frame vs. direct | metric | frame − direct per seed (mean ± se) | "
              "test rows frame better / direct better | sign test p |")
        print("| --- " * 6 + "|")
        for tag, label in (("equal_steps", "equal steps"), ("equal_cpu", "equal CPU")):
            print("\n".join(paired_table(target, label, summary["paired"][tag], keys)))
    print("\n| target | method | seed | epoch | steps | train CPU s | load | val ‖ΔT‖_F | test ‖ΔT‖_F | "
          "test EwT 25/10/5 % |")
    print("| --- " * 10 + "|")
    for method, data in found.items():  # every snapshot of every run
        for d in sorted(data, key=lambda d: d["settings"]["seed"]):
            for r in d["snapshots"]:
                ewt = " / ".join(f"{100 * r['test'][k]:.1f}" for k in ("ewt25", "ewt10", "ewt5"))
                print(f"| `{target}` | {method} | {d['settings']['seed']} | {r['epoch']} | {r['steps']} | "
                      f"{r['train_cpu_s']:.0f} | {r['loadavg_1min']:.1f} | {r['val']['fnorm']:.3g} | "
                      f"{r['test']['fnorm']:.3g} | {ewt} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--target", default="e_electronic", choices=sorted(DATASET_OF))
    p.add_argument("--method", default="frame", choices=["frame", "direct"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--snapshots", type=int, nargs="*", default=[], help="epochs at which val/test are scored")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--dim", type=int, default=64, help="model width d (ff 2d, head [d])")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--limit", type=int, default=None, help="at most N structures per split (quick checks)")
    p.add_argument("--out", default="benchmarks/tensors")
    p.add_argument("--summarize", action="store_true", help="choose budgets on val, write CSVs and the table")
    p.add_argument("--seeds", type=int, nargs="*", default=[], help="--summarize only these seeds' runs")
    args = p.parse_args()
    summarize(args) if args.summarize else main_run(args)


if __name__ == "__main__":
    main()
