"""Frame overhead of a training step, interleaved (issue 5, target 1): ``python benchmarks/bench_ratio.py``.

The machine's speed drifts between processes and over minutes, so the ratio of two separately timed rows
(``run.py``) carries that drift. This script builds the models of ``run.py`` (default hyperparameters,
random initialisation, batch48) in one process and alternates their forward + backward steps, so each round
times every model within a fraction of a second. Prints min / median seconds per model and, for each frame
method, the median over rounds of its step time divided by the ``none`` step of the same round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", nargs="+", default=["none", "max"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fixed-cutoff", type=float, default=None,
                    help="also time each frame method with this fixed sphere radius (Å), e.g. 6.928, the "
                         "default before the σ-following sphere (rows NAME@R)")
    ap.add_argument("--worker-images", action="store_true",
                    help="also time each σ-following model on a batch that carries its sphere images, searched "
                         "beforehand as a DataLoader worker does (rows NAME+img); prints the search time")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import crystalframer as cf
    from crystalframer.numba_support import numba_enabled
    from run import _load  # this script's folder is on sys.path

    frames = ["none"] + [f for f in args.frames if f != "none"]
    batch, _ = _load("batch48.json")
    models = {}
    for frame in frames:
        for cutoff in [None] + ([args.fixed_cutoff] if args.fixed_cutoff else []):
            torch.manual_seed(0)
            name = frame if cutoff is None else f"{frame}@{cutoff:g}"
            models[name] = cf.CrystalFramer(frame=frame, cutoff=cutoff).train()
            models[name](batch)  # freezes the σ normalisation, as after the first training step
    batches = {name: batch for name in models}
    result = {"rounds": args.rounds, "threads": args.threads, "numba": numba_enabled(), "frames": {}}
    if args.worker_images:
        from crystalframer.geometry.images import sphere_candidates

        for name in list(models):
            radius = models[name].image_radius()
            t = time.perf_counter()
            with_images = dataclasses.replace(batch, sphere=sphere_candidates(batch.lattice, batch.pos, batch.ptr,
                                                                              radius))
            search_s = time.perf_counter() - t
            models[f"{name}+img"], batches[f"{name}+img"] = models[name], with_images
            result.setdefault("image_search_s", {})[name] = search_s
            print(f"  sphere images of {name} up to {radius:g} Å (the worker's part): {search_s:.3f} s")
    frames = list(models)

    def step(name: str) -> float:
        model = models[name]
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        (model(batches[name]) - 0.1).abs().mean().backward()
        return time.perf_counter() - t

    for name in frames:  # warm-up: kernels compiled or loaded, allocator primed
        step(name), step(name)
    times = {f: [] for f in frames}
    for _ in range(args.rounds):
        for f in frames:
            times[f].append(step(f))
    result["load_average"] = list(os.getloadavg())
    print(f"batch48 fwd+bwd, {args.rounds} interleaved rounds, {args.threads} threads, load {os.getloadavg()[0]:.1f}, "
          f"Numba {'on' if numba_enabled() else 'off'}")
    for f in frames:
        t = times[f]
        ratio = statistics.median(a / b for a, b in zip(t, times["none"]))
        result["frames"][f] = {"min_s": min(t), "median_s": statistics.median(t), "paired_ratio": ratio,
                               "times_s": t}
        print(f"  {f:14s} {min(t):.3f} / {statistics.median(t):.3f} s (min / median)   "
              f"× none: {ratio:.2f} (median of paired rounds), {min(t) / min(times['none']):.2f} (min / min)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
