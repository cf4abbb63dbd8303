"""How far the trained models of ``tensor_baselines.py`` attend, and what that costs per training step.

    python benchmarks/tensor_attention_range.py --runs benchmarks/tensors_e80/runs --target elastic_tensor

For every seed, the final checkpoints (``<runs>/tmp_<target>_<method>_seed<k>/checkpoints/last.pt``, kept by
``tensor_baselines.py``) of the direct and the frame model are loaded. On the validation structures of the split
each layer's Gaussian widths σ_ih = sqrt(−1 / 2a_ih) are read (``encode(keep=True)``); an atom attends to the
images within R_i = k · max_h σ_ih (k = 5.82 for the default image tolerance), whose number per atom is counted.
Then one training step (forward + backward, train mode, one torch thread) is timed on the same random batches of
32 training structures for both models, alternately. Writes ``<out>`` (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def layer_ranges(model, crystals, batch_size: int = 32) -> list[dict]:
    """Per layer: mean and 90th percentile of max_h σ_ih (Å) and the mean number of images within k · max_h σ_ih
    per atom, over ``crystals``."""
    from crystalframer.data.batch import collate
    from crystalframer.geometry.images import sphere_factor, sphere_images

    k = sphere_factor(model.config.get("image_tol", 1e-6))
    sig, counts = [], []
    model.eval()
    with torch.no_grad():
        for b0 in range(0, len(crystals), batch_size):
            batch = collate(crystals[b0:b0 + batch_size])
            a = model.encode(batch, keep=True)["a"].double()  # (N, L, H)
            s = torch.sqrt(-0.5 / a.amax(-1))  # (N, L): max over heads of σ
            img = sphere_images(batch.lattice, batch.pos.double(), batch.ptr, float(k * s.max()))
            inside = img.mask[:, :, None] & (img.d2[:, :, None] <= (k * s[:, None, :]) ** 2)
            sig.append(s)
            counts.append(inside.sum(1).double())  # (N, L)
    s, c = torch.cat(sig), torch.cat(counts)
    return [{"sigma_mean": float(s[:, i].mean()), "sigma_p90": float(s[:, i].quantile(0.9)),
             "radius_mean": float(k * s[:, i].mean()), "images_per_atom": float(c[:, i].mean())}
            for i in range(s.shape[1])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--runs", default="benchmarks/tensors_e80/runs")
    p.add_argument("--target", default="elastic_tensor")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON output (default: <runs>/../<target>_attention_range.json)")
    a = p.parse_args()
    torch.set_num_threads(1)
    import crystalframer as cf
    from crystalframer.data.batch import collate
    from crystalframer.data.sources.shared import load_shared
    from tensor_baselines import DATASET_OF, SETS

    dataset = DATASET_OF[a.target]
    ds = load_shared(dataset, a.data_root, targets=[a.target], target_shapes={a.target: SETS[dataset]})
    parts = ds.split()
    val, train = list(parts.val.crystals), list(parts.train.crystals)
    rng = np.random.default_rng(0)
    batches = [collate([train[i] for i in rng.choice(len(train), 32, replace=False)]) for _ in range(a.batches)]
    rows = []
    for seed in a.seeds:
        models = {}
        for method in ("direct", "frame"):
            path = Path(a.runs) / f"tmp_{a.target}_{method}_seed{seed}" / "checkpoints" / "last.pt"
            models[method] = (cf.load(path), int(torch.load(path, weights_only=True)["training"]["epoch"]))
        rec = {"seed": seed}
        for method, (m, epoch) in models.items():
            rec[method] = {"epoch": epoch, "layers": layer_ranges(m, val), "step_s": []}
        for r in range(a.rounds + 1):
            for method, (m, _) in models.items():
                m.train()
                t0 = time.process_time()
                for b in batches:
                    m(b).sum().backward()
                if r:  # the first round warms up
                    rec[method]["step_s"].append((time.process_time() - t0) / len(batches))
        for method in models:
            rec[method]["step_s"] = statistics.median(rec[method]["step_s"])
        rows.append(rec)
    out = Path(a.out) if a.out else Path(a.runs).parent / f"{a.target}_attention_range.json"
    out.write_text(json.dumps({"target": a.target, "runs": a.runs, "batches": a.batches, "rows": rows}, indent=1))
    print("| seed | method | epoch | per layer: mean max_h σ (Å) | per layer: images per atom | step (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rec in rows:
        for method in ("direct", "frame"):
            d = rec[method]
            print(f"| {rec['seed']} | {method} | {d['epoch']} | "
                  + " / ".join(f"{x['sigma_mean']:.2f}" for x in d["layers"]) + " | "
                  + " / ".join(f"{x['images_per_atom']:.0f}" for x in d["layers"]) + f" | {d['step_s'] * 1e3:.0f} |")


if __name__ == "__main__":
    main()
