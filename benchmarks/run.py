"""Speed and memory benchmark suite (issue 5): ``python benchmarks/run.py``.

Measures, for every frame method, forward+backward and inference time, peak memory (RSS) and operation
counts on ``../shared/bench/batch48.json`` (48 MP structures, 529 atoms) and on each cell of
``large.json`` (96 to 768 atoms), the scaling exponent of time vs atoms over the supercell series, and
the effect of the sphere cutoff on outputs against a converged ("exact") cutoff. Every measurement runs
in a fresh process (as the published reference numbers do) so peak memory is per configuration.

Writes ``benchmarks/results.json``, ``benchmarks/results.md`` (the table for BENCHMARKS.md) and
``benchmarks/scaling.png``. ``--device cuda`` runs the same rows on a GPU (``results_cuda.*``; times
synchronised, GPU peak memory from ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = Path(os.environ.get("CRYSTALFRAMER_SHARED", HERE.parent.parent / "shared")) / "bench"
FRAMES = ["none", "max", "static", "weighted_pca", "pca", "lattice"]
#: A sphere radius at which the dropped weight is below float32 resolution for every σ <= σ_max:
#: exp(−r²/2σ_max²) < 1e-7 for r = 5.7 σ_max = 11.3 Å. The reference for the cutoff's effect.
EXACT_CUTOFF = 11.3


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load(name: str, index: int | None = None):
    from crystalframer.data.batch import collate
    from crystalframer.data.structures import to_crystal

    items = json.loads((BENCH / name).read_text())
    if index is not None:
        items = [items[index]]
    return collate([to_crystal(o) for o in items]), items


def one(cfg: dict) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch

    torch.set_num_threads(cfg.get("threads", 2))
    import crystalframer as cf
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(cfg.get("device", "cpu"))
    batch, items = _load(cfg["input"], cfg.get("index"))
    batch = batch.to(device)
    torch.manual_seed(0)
    model = cf.CrystalFramer(frame=cfg["frame"], cutoff=cfg.get("cutoff")).to(device)
    base_mb = _peak_mb()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    mode = cfg["mode"]
    times = []
    reps, warm = (cfg.get("reps", 5), cfg.get("warmup", 2)) if mode == "train" else (cfg.get("reps", 3), 1)
    if mode == "train":
        model.train()
        model(batch)  # freezes the σ normalisation, as after the first training step
        for r in range(warm + reps):
            model.zero_grad(set_to_none=True)
            sync()
            t = time.perf_counter()
            y = model(batch)
            (y - 0.1).abs().mean().backward()
            sync()
            if r >= warm:
                times.append(time.perf_counter() - t)
        with FlopCounterMode(display=False) as fc:
            model(batch).abs().mean().backward()
    else:
        model.eval()
        with torch.no_grad():
            for r in range(warm + reps):
                sync()
                t = time.perf_counter()
                model(batch)
                sync()
                if r >= warm:
                    times.append(time.perf_counter() - t)
            with FlopCounterMode(display=False) as fc:
                model(batch)
    with torch.no_grad():
        geo = model.geometry(batch)
        if geo.images is not None:
            slots = int(geo.images.mask.sum())
        else:  # σ-following sphere: the slots each layer used, averaged over the layers
            sig = torch.sqrt(-0.5 / model(batch, return_all=True)["a"].amax(2))  # (N, L)
            slots = round(sum(int(geo.pool.within(geo.pool.k * sig[:, l])[0].mask.sum())
                              for l in range(sig.shape[1])) / sig.shape[1])
    gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {**cfg, "atoms": int(batch.pos.shape[0]), "structures": len(items), "time_s": statistics.median(times),
            "times_s": times, "peak_mb": _peak_mb(), "model_mb_before": base_mb, "gpu_peak_mb": gpu_mb,
            "matmul_gflop": fc.get_total_flops() / 1e9, "image_slots": slots,
            "slot_head_evals": slots * model.config["num_heads"] * model.config["num_layers"]}


def cutoff_effect() -> dict:
    """Max |Δ| of predictions and pooled embeddings, default cutoff vs EXACT_CUTOFF, random-init models."""
    import torch

    import crystalframer as cf

    batch, _ = _load("batch48.json")
    out = {}
    for frame in ("none", "max"):
        res = []
        for cutoff in (None, EXACT_CUTOFF):
            torch.manual_seed(0)
            m = cf.CrystalFramer(frame=frame, cutoff=cutoff, frame_noise=0.0).eval()
            with torch.no_grad():
                r = m(batch, return_all=True)
            res.append((r["pred"], r["pooled"], m.config["cutoff"] or "sigma-following"))
        out[frame] = {"default_cutoff": res[0][2], "exact_cutoff": EXACT_CUTOFF,
                      "max_abs_pred": float((res[0][0] - res[1][0]).abs().max()),
                      "max_abs_pooled": float((res[0][1] - res[1][1]).abs().max()),
                      "pred_scale": float(res[1][0].abs().max())}
    return out


def spawn(cfg: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(cfg)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timeout > {timeout} s"}
    if p.returncode != 0:
        return {**cfg, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def exponent(rows: list[dict]) -> float:
    """Least-squares slope of log(time) vs log(atoms)."""
    xs = [math.log(r["atoms"]) for r in rows]
    ys = [math.log(r["time_s"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _gpu_name(device: str) -> str:
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def machine() -> dict:
    import torch

    import crystalframer
    from crystalframer.numba_support import numba, numba_enabled

    return {"python": platform.python_version(), "torch": torch.__version__, "crystalframer": crystalframer.__version__,
            "numba": numba.__version__ if numba_enabled() else None,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 2,
            "platform": platform.platform()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="batch48 only, frames none and max")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]: the same rows on a GPU")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    frames = ["none", "max"] if args.quick else FRAMES
    rows = []
    for frame in frames:
        for mode in ("train", "infer"):
            r = spawn({"input": "batch48.json", "frame": frame, "mode": mode, "device": args.device}, 900)
            rows.append(r)
            print(_fmt(r), flush=True)
    if not args.quick:
        for idx in range(5):
            for frame in ("none", "max"):
                for cutoff in (None, EXACT_CUTOFF):
                    for mode in ("infer", "train"):
                        r = spawn({"input": "large.json", "index": idx, "frame": frame, "mode": mode,
                                   "cutoff": cutoff, "reps": 2, "warmup": 1, "device": args.device}, 900)
                        rows.append(r)
                        print(_fmt(r), flush=True)
    result = {"machine": machine(), "rows": rows}
    if not args.quick:
        series = {}
        for frame in ("none", "max"):
            for cutoff in (None, EXACT_CUTOFF):
                for mode in ("infer", "train"):
                    sel = [r for r in rows if r["input"] == "large.json" and r.get("index", 0) >= 1
                           and r["frame"] == frame and r.get("cutoff") == cutoff and r["mode"] == mode
                           and "error" not in r]
                    if len(sel) >= 2:
                        series[f"{frame}/{'default' if cutoff is None else 'exact'}/{mode}"] = exponent(sel)
        result["scaling_exponents"] = series
        result["cutoff_effect"] = cutoff_effect()
        _plot(rows, Path(args.out) / ("scaling.png" if args.device == "cpu" else "scaling_cuda.png"))
    out = Path(args.out)
    stem = ("results_quick" if args.quick else "results") + ("" if args.device == "cpu" else "_cuda")
    result["machine"]["device"] = args.device if args.device == "cpu" else _gpu_name(args.device)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    md = _table(result)
    (out / f"{stem}.md").write_text(md)
    print(md)


def _fmt(r: dict) -> str:
    if "error" in r:
        return f"{r['input']}[{r.get('index', '')}] {r['frame']} {r['mode']}: {r['error']}"
    return (f"{r['input']}[{r.get('index', '')}] {r['frame']:>12s} cutoff={r.get('cutoff') or 'default'} "
            f"{r['mode']:5s} atoms={r['atoms']:4d} time={r['time_s']:.3f}s peak={r['peak_mb']:.0f}MB "
            f"matmul={r['matmul_gflop']:.2f}GF slots={r['image_slots']}")


def _table(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['platform']}, {m['cores']} cores ({m['threads']} threads used), Python {m['python']}, "
             f"torch {m['torch']}, crystalframer {m['crystalframer']}, "
             f"Numba kernels: {m['numba'] or 'off'}.", "",
             "| input | frame | cutoff (Å) | run | atoms | time (s) | peak RSS (MB) | matmul GFLOP | image slots |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        name = r["input"] + (f"[{r['index']}]" if "index" in r else "")
        cut = r.get("cutoff") or "6.93 (default)"
        if "error" in r:
            lines.append(f"| {name} | {r['frame']} | {cut} | {r['mode']} | | {r['error']} | | | |")
            continue
        run = "fwd+bwd" if r["mode"] == "train" else "forward"
        lines.append(f"| {name} | {r['frame']} | {cut} | {run} | {r['atoms']} | {r['time_s']:.3f} | "
                     f"{r['peak_mb']:.0f} | {r['matmul_gflop']:.2f} | {r['image_slots']} |")
    if "scaling_exponents" in result:
        lines += ["", "Scaling exponent of time vs atoms (96 → 768-atom supercells):", ""]
        lines += [f"- {k}: {v:.2f}" for k, v in result["scaling_exponents"].items()]
    if "cutoff_effect" in result:
        lines += ["", f"Effect of the default cutoff vs {EXACT_CUTOFF} Å on batch48 (random-init models):", ""]
        for k, v in result["cutoff_effect"].items():
            lines.append(f"- {k}: max |Δpred| = {v['max_abs_pred']:.2e} (|pred| ≤ {v['pred_scale']:.3f}), "
                         f"max |Δpooled| = {v['max_abs_pooled']:.2e}")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for frame in ("none", "max"):
        for cutoff, ls in ((None, "-"), (EXACT_CUTOFF, "--")):
            for mode, marker in (("infer", "o"), ("train", "s")):
                sel = sorted((r for r in rows if r["input"] == "large.json" and r["frame"] == frame
                              and r.get("cutoff") == cutoff and r["mode"] == mode and "error" not in r),
                             key=lambda r: r["atoms"])
                if sel:
                    ax.loglog([r["atoms"] for r in sel], [r["time_s"] for r in sel], ls, marker=marker,
                              label=f"{frame}, {'6.93' if cutoff is None else cutoff} Å, "
                                    f"{'forward' if mode == 'infer' else 'fwd+bwd'}")
    ax.set_xlabel("atoms per cell")
    ax.set_ylabel("time (s), 2 CPU threads")
    ax.legend(fontsize=6)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
