"""Training-step time of two checkouts, interleaved: ``python benchmarks/bench_versions.py OLD/src NEW/src``.

For a change that must not slow the step (a code move, a refactor), each round runs one short process per
checkout, alternating, on the same model (seeded random initialisation, default hyperparameters) and the same
batch (``../shared/bench/batch48.json``); each process times ``--steps`` forward + backward steps after two
warm-up steps and reports the median. The paired ratio NEW / OLD per round cancels most of the machine's
drift; the median over rounds is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = Path(os.environ.get("CRYSTALFRAMER_SHARED", HERE.parent.parent / "shared")) / "bench" / "batch48.json"

CHILD = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
import crystalframer as cf
from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal
items = json.load(open(sys.argv[1]))
batch = collate([to_crystal(o) for o in items])
torch.manual_seed(0)
model = cf.CrystalFramer(frame=sys.argv[2]).train()
def step():
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    (model(batch) - 0.1).abs().mean().backward()
    return time.perf_counter() - t
step(); step()
print(json.dumps(statistics.median(step() for _ in range(int(sys.argv[4])))))
"""


def run(src: str, frame: str, threads: int, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, "-c", CHILD, str(BENCH), frame, str(threads), str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old"), ap.add_argument("new")
    ap.add_argument("--frames", nargs="+", default=["none", "max"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    result = {"old": args.old, "new": args.new, "rounds": args.rounds, "steps": args.steps,
              "threads": args.threads, "load_before": os.getloadavg()[0], "frames": {}}
    for frame in args.frames:
        old, new = [], []
        for k in range(args.rounds):
            pair = [(args.old, old), (args.new, new)]
            for src, times in (pair if k % 2 == 0 else pair[::-1]):
                times.append(run(src, frame, args.threads, args.steps))
        ratio = statistics.median(n / o for n, o in zip(new, old))
        result["frames"][frame] = {"old_s": old, "new_s": new, "paired_ratio": ratio}
        print(f"{frame:8s} old {statistics.median(old):.3f} s  new {statistics.median(new):.3f} s  "
              f"new/old {ratio:.3f} (median of {args.rounds} paired rounds)")
    result["load_after"] = os.getloadavg()[0]
    print(f"load average {result['load_before']:.1f} -> {result['load_after']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
