"""Per-layer cost of the frame kernels on batch48 (issue 5): ``python benchmarks/bench_kernels.py``.

Captures the first layer's inputs of a `max`-frame model in training mode, then times, on those inputs
alone: the angular features (Chebyshev moments) (forward, and forward + backward to the weights and the projection), the
two-axis frame search with and without the published noise, and the noise draws as an array against ``torch.rand``.
Prints min / median milliseconds over ``--rounds`` rounds of ``--reps`` calls, the kernels interleaved so that
a change in the machine's speed hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import crystalframer as cf
    from crystalframer.frames.noise import uniform
    from crystalframer.frames.search import two_axis_search
    from crystalframer.nn import attention
    from crystalframer.numba_support import numba_enabled
    from run import _load  # this script's folder is on sys.path

    batch, _ = _load("batch48.json")
    torch.manual_seed(0)
    model = cf.CrystalFramer(frame="max").train()
    model(batch)  # freezes the σ normalisation
    seen: dict = {}
    dense = attention.dense_angle_features

    def spy(*a):
        seen.setdefault("dense", a)
        return dense(*a)

    attention.dense_angle_features = spy
    def capture(mod, a, out):  # a forward hook that returned a value would replace the frames
        seen.setdefault("frame", a[0])

    model.layers[0].attn.frame.register_forward_hook(capture)
    model(batch)
    attention.dense_angle_features = dense
    if "dense" not in seen:
        raise SystemExit("the moment kernel did not run: install the fast extra and unset CRYSTALFRAMER_NUMBA=0")

    w, unit, axes, has_dir, floor, basis, proj = seen["dense"]
    w, proj = w.detach().requires_grad_(), proj.detach().requires_grad_()
    grad = torch.randn(w.shape[0], w.shape[2], proj.shape[2])
    inp = seen["frame"]
    shape = tuple(inp.qk.shape)

    def features():
        with torch.no_grad():
            dense(w, unit, axes, has_dir, floor, basis, proj)

    def features_backward():
        torch.autograd.grad(dense(w, unit, axes, has_dir, floor, basis, proj), (w, proj), grad)

    def search(seed):
        two_axis_search(inp.qk, inp.a, inp.d2, seed, 1e-5, inp.candidate, inp.unit)

    cases = {"angular features, forward": features, "angular features, forward + backward": features_backward,
             "frame search with noise": lambda: search(12345), "frame search, no noise": lambda: search(None),
             "noise draws (array)": lambda: uniform(12345, shape, torch.float32),
             "torch.rand, same shape": lambda: torch.rand(shape)}
    times = {k: [] for k in cases}
    for f in cases.values():
        f()  # compiles or loads the kernels
    for _ in range(args.rounds):
        for k, f in cases.items():
            t = time.perf_counter()
            for _ in range(args.reps):
                f()
            times[k].append((time.perf_counter() - t) / args.reps * 1e3)
    print(f"batch48, layer 0 of a max-frame model: {w.shape[0]} atoms × {w.shape[1]} slots × {w.shape[2]} heads; "
          f"{args.threads} threads, Numba {'on' if numba_enabled() else 'off'}")
    for k, v in times.items():
        print(f"  {k:38s} {min(v):7.2f} / {statistics.median(v):7.2f} ms (min / median)")


if __name__ == "__main__":
    main()
