"""CPU training step with and without flushing denormal floats, and the cost of the image search.

    python benchmarks/bench_denormals.py [--data-root ../shared/data] [--batches 8] [--rounds 3]

Two workloads, one torch thread, forward + backward of random batches of 32: Perov-5 with the quick
``max`` model (2 layers, d = 64) and ``mp_elastic_2015`` with the tensor-baseline backbone (2 layers, d = 48,
21 outputs). Flushing on and off alternate on the same batches, so load on the machine hits both alike.
Also times ``sphere_candidates`` at the largest radius of the σ-following sphere (11.5 Å) on the same
batches. Prints medians and writes ``benchmarks/bench_denormals.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    import crystalframer as cf
    from crystalframer.cpu import flush_denormals
    from crystalframer.data.batch import collate
    from crystalframer.data.sources.shared import load_shared
    from crystalframer.geometry.images import sphere_candidates

    sys.path.insert(0, str(HERE))
    from experiments import splits_for

    elastic = load_shared("mp_elastic_2015", a.data_root, targets=["elastic_tensor"],
                          target_shapes={"elastic_tensor": "6x6"})
    cases = {
        "perov_5 (max, 2x64)": (list(splits_for("perov_5").train),
                                dict(num_layers=2, model_dim=64, num_heads=4, ff_dim=128, n_targets=1)),
        "mp_elastic_2015 (max, 2x48, 21 outputs)": (
            [c for c in elastic.crystals if np.isfinite(np.asarray(c.targets)).all()],
            dict(num_layers=2, model_dim=48, num_heads=4, ff_dim=96, head_dims=[48], dist_bins=32, angle_bins=32,
                 n_targets=21)),
    }
    rng = np.random.default_rng(0)
    out = {}
    for name, (crystals, kw) in cases.items():
        torch.manual_seed(0)
        model = cf.CrystalFramer(frame="max", **kw)
        batches = [collate([crystals[i] for i in rng.choice(len(crystals), 32, replace=False)])
                   for _ in range(a.batches)]
        times: dict[str, list[float]] = {"kept": [], "flushed": [], "search": []}
        model(batches[0]).sum().backward()  # warm-up
        for _ in range(a.rounds):
            for b in batches:
                for key, on in (("kept", False), ("flushed", True)):
                    with flush_denormals(on):
                        t = time.perf_counter()
                        model(b).sum().backward()
                        times[key].append(time.perf_counter() - t)
                t = time.perf_counter()
                sphere_candidates(b.lattice, b.pos, b.ptr, 11.5)
                times["search"].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[name] = {"median_s": med, "speed-up": med["kept"] / med["flushed"], "steps": len(times["kept"])}
        print(f"{name}: step {med['kept'] * 1e3:.0f} ms with denormals, {med['flushed'] * 1e3:.0f} ms flushed "
              f"({med['kept'] / med['flushed']:.2f}x); image search at 11.5 A {med['search'] * 1e3:.0f} ms per batch",
              flush=True)
    (HERE / "bench_denormals.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
