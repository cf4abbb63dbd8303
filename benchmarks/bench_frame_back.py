"""Cost of mapping in-frame tensors back with tie-averaged frames: every padded candidate slot vs. only the
weighted ones (:func:`crystalframer.nn.tensor_heads.frame_back`).

    python benchmarks/bench_frame_back.py [--data-root ../shared/data] [--batches 6] [--rounds 3]

Random batches of 32 ``mp_elastic_2015`` training structures (seeded) go through an untrained ``max``-frame model
with a (6, 6) target (the backbone of ``tensor_baselines.py``); the last layer's candidate frames and tie weights
are captured. Then, for Voigt (6, 6), rank-2 and vector inputs, forward + backward of ``frame_back`` is timed
(one torch thread) for the dense form, which rotates all N·H·T slots (T padded to the batch's largest tie set),
and for the library's, which rotates the P slots with a weight; prints the slot counts, the times per batch and
the largest relative difference of the outputs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def dense_frame_back(local: torch.Tensor, frames: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t w_t F_t⁻¹(local) over every slot t, padding included (the form before the compaction)."""
    from crystalframer.geometry.tensors import rotate, rotate_voigt

    ft = frames.transpose(-1, -2)
    loc = local[:, :, None].expand(local.shape[:2] + (frames.shape[2],) + local.shape[2:])
    out = rotate_voigt(loc, ft) if local.shape[-2:] == (6, 6) else rotate(loc, ft)
    return (out * weights.to(out.dtype).reshape(weights.shape + (1,) * (local.dim() - 2))).sum(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    import crystalframer as cf
    from crystalframer.data.sources.shared import load_shared
    from crystalframer.nn import tensor_heads

    ds = load_shared("mp_elastic_2015", a.data_root, targets=["elastic_tensor"],
                     target_shapes={"elastic_tensor": "6x6"})
    train = list(ds.split().train.crystals)
    torch.manual_seed(0)
    model = cf.CrystalFramer(frame="max", num_layers=2, model_dim=48, num_heads=4, ff_dim=96, head_dims=[48],
                             dist_bins=32, angle_bins=32, target_names=["elastic_tensor"], target_shapes=[(6, 6)])
    captured = []
    library = tensor_heads.frame_back

    def capture(local, frames, weights):
        captured.append((frames.detach(), weights.detach()))
        return library(local, frames, weights)

    tensor_heads.frame_back = capture
    rng = np.random.default_rng(0)
    try:
        for _ in range(a.batches):
            model.predict([train[i] for i in rng.choice(len(train), 32, replace=False)], batch_size=32)
    finally:
        tensor_heads.frame_back = library
    slots = sum(w.numel() for _, w in captured)
    used = sum(int((w > 0).sum()) for _, w in captured)
    print(f"{a.batches} batches: {slots} candidate slots, {used} with a weight ({used / slots:.0%}); "
          f"largest tie set {max(int((w > 0).sum(-1).max()) for _, w in captured)}")
    g = torch.Generator().manual_seed(0)
    for shape in [(6, 6), (3, 3), (3,)]:
        inputs = [(torch.randn(w.shape[:2] + shape, generator=g), f, w) for f, w in captured]
        times: dict[str, list[float]] = {"dense": [], "weighted slots only": []}
        worst = 0.0
        for r in range(a.rounds + 1):
            for name, fn in (("dense", dense_frame_back), ("weighted slots only", library)):
                t0 = time.perf_counter()
                for local, frames, weights in inputs:
                    x = local.clone().requires_grad_(True)
                    fn(x, frames, weights).square().sum().backward()
                if r:  # the first round warms up
                    times[name].append((time.perf_counter() - t0) / len(inputs))
        for local, frames, weights in inputs:
            ref = dense_frame_back(local, frames, weights)
            worst = max(worst, float((library(local, frames, weights) - ref).abs().max() / ref.abs().max()))
        dense, sparse = (statistics.median(v) * 1e3 for v in times.values())
        print(f"{shape}: dense {dense:.1f} ms, weighted slots only {sparse:.1f} ms per batch (forward + backward, "
              f"median of {a.rounds}); ×{dense / sparse:.1f}; max rel. difference {worst:.1e}")


if __name__ == "__main__":
    main()
