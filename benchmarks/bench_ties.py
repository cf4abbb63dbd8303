"""Tie policies of frames (issue 4): cost on batch48 and invariance errors on the golden class-D structures.

    python benchmarks/bench_ties.py                   # everything (a few minutes on 2 CPU cores)
    python benchmarks/bench_ties.py --part cost       # only the cost table
    python benchmarks/bench_ties.py --part invariance --json out.json

Cost: forward (eval, no gradient) and training step (forward + backward) of the default 4-layer model on
``../shared/bench/batch48.json`` (48 structures, 529 atoms), for ``ties="noise"`` (published, frame_noise 1e-5),
``"first"`` and ``"average"``; runs interleaved, CPU time (``time.process_time``) with ``--threads``
(default 1: CPU time is robust to other processes on a shared machine; OpenMP spin-waits make multi-threaded
CPU time meaningless there, use wall time with ``--wall``). Also tie statistics of the average policy:
share of (atom, head) rows with a tie, frames per row, distinct axis directions per atom.

Invariance: prediction change (relative) and largest per-atom state change (absolute) under rotation,
translation, permutation, periodic image, unimodular change of cell and supercell, and between repeated
calls, on the golden class-D structures (JVASP-35497, JVASP-116604, mp-11202, mp-567345, mp-30180), for
(a) random-initialised default models (sphere images) of each frame method (and max with W_k × 100),
policies noise / first / average (weighted_pca with its default signs: random for noise / first), and (b) the
golden ``maxframe`` weights (official box images, as ``../shared/golden`` README section 8), policies
noise / first / average (box images depend on the cell and the raw positions, so only rotation,
translation and permutation apply there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import crystalframer as cf
from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal
from crystalframer.nn.angular import compact_directions

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTALFRAMER_SHARED", REPO.parent / "shared"))
CLASS_D = ["JVASP-35497", "JVASP-116604", "mp-11202", "mp-567345", "mp-30180"]
POLICIES = {"noise": ({"ties": "noise"}, 1e-5), "first": ({"ties": "first"}, 0.0),
            "average": ({"ties": "average"}, 1e-5)}


# -- structures and transformations (pymatgen) --------------------------------------------------------------

def structures(path: Path, ids=None):
    from pymatgen.core import Lattice, Structure

    out = []
    for o in json.loads(path.read_text()):
        if ids is None or o["id"] in ids:
            out.append(Structure(Lattice(o["lattice"]), o["species"], o["cart_coords"], coords_are_cartesian=True,
                                 properties={"id": o["id"]}))
    return out


def rotation(seed: int) -> np.ndarray:
    from crystalframer.testing import random_rotation

    return random_rotation(seed)


def _new(s, lattice, species, cart):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(lattice), species, cart, coords_are_cartesian=True)


SKEW = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]])


def transforms(k: int):
    """name → (structure → (structure, atom order of the result in terms of the original or None))."""
    rng = np.random.default_rng(k)
    R = rotation(12345 + k)
    t = rng.normal(scale=3.0, size=3)

    def rot(s):
        return _new(s, s.lattice.matrix @ R.T, s.species, s.cart_coords @ R.T), np.arange(len(s))

    def trans(s):
        return _new(s, s.lattice.matrix, s.species, s.cart_coords + t), np.arange(len(s))

    def perm(s):
        p = np.random.default_rng(k + 1).permutation(len(s))
        return _new(s, s.lattice.matrix, [s.species[i] for i in p], s.cart_coords[p]), p

    def image(s):
        n = np.random.default_rng(k).integers(-2, 3, size=(len(s), 3))
        return _new(s, s.lattice.matrix, s.species, s.cart_coords + n @ s.lattice.matrix), np.arange(len(s))

    def cell(s):
        return _new(s, SKEW @ s.lattice.matrix, s.species, s.cart_coords), np.arange(len(s))

    def sup(s):
        return s * ([2, 1, 1] if k % 2 else [1, 1, 2]), None

    return {"rotation": rot, "translation": trans, "permutation": perm, "periodic image": image,
            "unimodular cell": cell, "supercell": sup}


# -- invariance -----------------------------------------------------------------------------------------------

def run(model, structs):
    batch = collate([to_crystal(s) for s in structs]).to(dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        out = model(batch, return_all=True)
    ptr = batch.ptr.tolist()
    return [(float(out["pred"][b, 0]), out["states"][ptr[b]:ptr[b + 1]].double().numpy()) for b in range(len(structs))]


def invariance(model, structs, names, box: bool = False) -> dict:
    """{transformation: {structure id: (relative pred change, max |state change| or nan)}}."""
    ref = run(model, structs)
    res = {"repeat": {}}
    again = run(model, structs)
    for nm, (p0, s0), (p1, s1) in zip(names, ref, again):
        res["repeat"][nm] = (abs(p1 - p0) / abs(p0), float(np.abs(s1 - s0).max()))
    for k, s in enumerate(structs):
        for tname, fn in transforms(k).items():
            if box and tname in ("periodic image", "unimodular cell", "supercell"):
                continue
            moved, order = fn(s)
            (p1, s1), = run(model, [moved])
            p0, s0 = ref[k]
            ds = float(np.abs(s1 - s0[order]).max()) if order is not None else float("nan")
            res.setdefault(tname, {})[names[k]] = (abs(p1 - p0) / abs(p0), ds)
    return res


def random_model(policy: str, frame: str = "max", layers: int = 4, k_boost: float = 1.0):
    opts, noise = POLICIES[policy]
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, num_layers=layers, frame_noise=noise, frame_options=opts).eval()
    with torch.no_grad():
        for blk in m.layers:
            blk.attn.w_k.mul_(k_boost)
    return m


def golden_model(policy: str):
    opts, noise = POLICIES[policy]
    return cf.load_official_checkpoint(SHARED / "golden" / "weights_maxframe.pt", frame_noise=noise,
                                       frame_options=opts).eval()


def print_invariance(title: str, table: dict) -> None:
    print(f"\n### {title}\n")
    print("| transformation | policy | " + " | ".join(CLASS_D) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in CLASS_D) + " |")
    for tname in table[next(iter(table))]:
        for policy, res in table.items():
            cells = []
            for sid in CLASS_D:
                rel, ds = res[tname][sid]
                cells.append(f"{rel:.1e} / {ds:.1e}" if ds == ds else f"{rel:.1e} / –")
            print(f"| {tname} | {policy} | " + " | ".join(cells) + " |")
    print("\n(entries: relative prediction change / largest per-atom state change; – : atoms not comparable)")
    for policy, res in table.items():
        worst = max(r for t in res.values() for r, _ in t.values())
        worst_s = max((d for t in res.values() for _, d in t.values() if d == d), default=float("nan"))
        print(f"- {policy}: worst relative prediction change {worst:.1e}, worst state change {worst_s:.1e}")


# -- cost ------------------------------------------------------------------------------------------------------

def timed(fn, wall: bool) -> float:
    clock = time.perf_counter if wall else time.process_time
    t = clock()
    fn()
    return clock() - t


def cost(reps: int, frames, wall: bool) -> dict:
    batch = collate([to_crystal(s) for s in structures(SHARED / "bench" / "batch48.json")])
    out = {}
    for frame in frames:
        models = {}
        for policy, (opts, noise) in POLICIES.items():
            torch.manual_seed(0)
            models[policy] = cf.CrystalFramer(frame=frame, frame_noise=noise, frame_options=opts)
        times = {p: {"forward": [], "train step": []} for p in models}

        def fwd(m):
            m.eval()
            with torch.no_grad():
                m(batch)

        def step(m):
            m.train()
            m.zero_grad(set_to_none=True)
            m(batch).pow(2).mean().backward()

        for m in models.values():  # warm-up (and σ calibration in training mode)
            fwd(m)
            step(m)
        for _ in range(reps):
            for p, m in models.items():
                times[p]["forward"].append(timed(lambda: fwd(m), wall))
                times[p]["train step"].append(timed(lambda: step(m), wall))
        stats = {p: {k: {"min": min(v), "median": float(np.median(v))} for k, v in d.items()} for p, d in times.items()}
        # tie statistics of the average policy (eval)
        sets = []
        hooks = [blk.attn.frame.register_forward_hook(lambda mod, a, o: sets.append(o))
                 for blk in models["average"].layers]
        fwd(models["average"])
        for h in hooks:
            h.remove()
        tied, frames_per_row, dirs_per_atom = [], [], []
        for o in sets:
            if not isinstance(o, tuple):
                continue
            F, W = o
            n = (W > 0).sum(-1).float()
            tied.append(float((n > 1).float().mean()))
            frames_per_row.append(float(n.mean()))
            atom, dirs, *_ = compact_directions(F, W, symmetric=True)
            dirs_per_atom.append(dirs.shape[0] / F.shape[0])
        stats["ties"] = {"rows with a tie": float(np.mean(tied)) if tied else 0.0,
                         "frames per row": float(np.mean(frames_per_row)) if tied else 1.0,
                         "distinct directions per atom (all heads)": float(np.mean(dirs_per_atom)) if tied else 0.0}
        out[frame] = stats
    return out


def print_cost(res: dict, wall: bool, threads: int) -> None:
    unit = "wall" if wall else "CPU"
    print(f"\n### Cost on batch48 (48 structures, 529 atoms), {unit} seconds, {threads} thread(s), min / median\n")
    print("| frame | step | noise | first | average | average / noise (min, median) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for frame, st in res.items():
        for step in ("forward", "train step"):
            c = {p: st[p][step] for p in POLICIES}
            r_min = c["average"]["min"] / c["noise"]["min"]
            r_med = c["average"]["median"] / c["noise"]["median"]
            print(f"| {frame} | {step} | " + " | ".join(f"{c[p]['min']:.3f} / {c[p]['median']:.3f}" for p in POLICIES)
                  + f" | {r_min:.2f}, {r_med:.2f} |")
    for frame, st in res.items():
        t = st["ties"]
        print(f"- {frame}, average policy: {100 * t['rows with a tie']:.0f}% of (atom, head) rows tied, "
              f"{t['frames per row']:.2f} frames per row, "
              f"{t['distinct directions per atom (all heads)']:.1f} distinct axis directions per atom")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["all", "cost", "invariance"], default="all")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall time instead of CPU time")
    ap.add_argument("--frames", nargs="+", default=["max", "static", "weighted_pca"])
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": args.threads}
    if args.part in ("all", "invariance"):
        structs = structures(SHARED / "golden" / "structures.json", set(CLASS_D))
        structs.sort(key=lambda s: CLASS_D.index(s.properties["id"]))
        for frame in args.frames:
            table = {p: invariance(random_model(p, frame), structs, CLASS_D) for p in POLICIES}
            print_invariance(f"{frame}: random-initialised default model (4 layers, sphere images), class-D structures",
                             table)
            results[f"invariance_random_init_{frame}"] = table
        table = {p: invariance(random_model(p, k_boost=100.0), structs, CLASS_D) for p in POLICIES}
        print_invariance("max, W_k × 100 (q·k spread ~0.2, so attention and not only distance picks the max frames)",
                         table)
        results["invariance_random_init_max_kboost100"] = table
        table = {p: invariance(golden_model(p), structs, CLASS_D, box=True) for p in POLICIES}
        print_invariance("Golden maxframe weights (official box images)", table)
        results["invariance_golden_weights"] = table
    if args.part in ("all", "cost"):
        res = cost(args.reps, args.frames, args.wall)
        print_cost(res, args.wall, args.threads)
        results["cost"] = res
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
