"""Training-step cost of the equivariant frame head vs. direct regression of the Voigt components.

    python benchmarks/bench_tensor_step.py [--data-root ../shared/data] [--rounds 7]

``--batches`` random batches of 32 ``mp_elastic_2015`` structures (seeded), the backbone of
``tensor_baselines.py`` (``max`` frames, 2 layers, d = 48, 4 heads), untrained; (a) 21 scalar outputs, (b) the
frame head with a (6, 6) target. Forward + backward in training mode (one frame per atom and head), one torch
thread, the two models timed alternately; prints, per model, the median over rounds of the time for all batches,
and their ratio. Trained models differ in the range of attention they learn, and with it in cost
(``tensor_attention_range.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batches", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(1)
    import crystalframer as cf
    from crystalframer.data.batch import collate
    from crystalframer.data.sources.shared import load_shared

    ds = load_shared("mp_elastic_2015", a.data_root, targets=["elastic_tensor"],
                     target_shapes={"elastic_tensor": "6x6"})
    good = [c for c in ds.crystals if np.isfinite(np.asarray(c.targets)).all()]
    rng = np.random.default_rng(0)
    batches = [collate([good[i] for i in rng.choice(len(good), 32, replace=False)]) for _ in range(a.batches)]
    kw = dict(frame="max", num_layers=2, model_dim=48, num_heads=4, ff_dim=96, head_dims=[48], dist_bins=32,
              angle_bins=32)
    torch.manual_seed(0)
    models = {"direct (21 scalars)": cf.CrystalFramer(n_targets=21, **kw),
              "frame head (6x6)": cf.CrystalFramer(target_names=["elastic_tensor"], target_shapes=["6x6"], **kw)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(a.rounds + 1):
        for name, m in models.items():
            t = time.perf_counter()
            for batch in batches:
                m(batch).sum().backward()
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k}: {v * 1e3 / a.batches:.0f} ms per step (median of {a.rounds} rounds of {a.batches} batches)")
    d, f = med.values()
    print(f"frame / direct: {f / d:.2f}")


if __name__ == "__main__":
    main()
