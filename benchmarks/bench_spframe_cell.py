"""SPFrame with the reduced global frame under a change of unit cell: ``python benchmarks/bench_spframe_cell.py``.

Builds random-init ``spframe_quat`` models (``global_frame="reduced"``; a 2-layer width-32 model in float64 and
float32, and the default 4-layer model in float32) and reports, for cubic, tetragonal and hexagonal cells (built
with pymatgen, plus the first MP cells of those lattice systems from ``mp_20_subset`` when present), the worst
relative prediction change |Δy| / |y| under a unimodular change of basis and under 2×2×1 and 2×2×2 supercells.
Then times the default model's forward (eval, no grad) on the original cells with ``global_frame="qr"`` and
``"reduced"``, interleaved. Uses the public API only, so it runs on older commits too (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

SKEW = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]])  # det = 1
MOTIF = [[0.0, 0.0, 0.0], [0.37, 0.21, 0.13], [0.61, 0.77, 0.44]]


def built_cells() -> dict[str, Structure]:
    return {
        "NaCl (cubic)": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                                  [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "SrTiO3 (cubic)": Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                                    [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "TiO2 rutile (tetragonal)": Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96),
                                                              ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]),
        "ZnO wurtzite (hexagonal)": Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                                              [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]),
        # symmetric lattices with a low-symmetry (P1) motif: the lattice's ties are not the crystal's symmetry
        "P1 motif, cubic lattice": Structure(Lattice.cubic(4.2), ["Na", "Cl", "O"], MOTIF),
        "P1 motif, tetragonal lattice": Structure(Lattice.tetragonal(4.2, 5.3), ["Na", "Cl", "O"], MOTIF),
        "P1 motif, hexagonal lattice": Structure(Lattice.hexagonal(4.2, 5.3), ["Na", "Cl", "O"], MOTIF),
    }


def mp_cells(root: Path, per_system: int) -> dict[str, Structure]:
    path = root / "mp_20_subset" / "mp20_resplit_test_subset.csv.gz"
    if not path.exists():
        print(f"({path} absent: no MP cells)")
        return {}
    out, count = {}, {"cubic": 0, "tetragonal": 0, "hexagonal": 0}
    csv.field_size_limit(sys.maxsize)
    with gzip.open(path, "rt") as f:
        for row in csv.DictReader(f):
            s = Structure.from_str(row["cif"], fmt="cif")
            system = SpacegroupAnalyzer(s).get_lattice_type()
            if system in count and count[system] < per_system and len(s) <= 12:
                count[system] += 1
                out[f"{row['material_id']} ({system})"] = s
            if all(v >= per_system for v in count.values()):
                break
    return out


def predict(model, structures, dtype) -> np.ndarray:
    from crystalframer.data.batch import collate
    from crystalframer.data.structures import to_crystal

    with torch.no_grad():
        return model(collate([to_crystal(s) for s in structures], dtype=dtype)).numpy()[:, 0]


def errors(model, cells: dict[str, Structure], dtype) -> dict[str, dict[str, float]]:
    names = list(cells)
    ref = predict(model, [cells[n] for n in names], dtype)
    out = {}
    for what, f in [("basis", lambda s: Structure(Lattice(SKEW @ s.lattice.matrix), s.species, s.cart_coords,
                                                  coords_are_cartesian=True)),
                    ("2x2x1", lambda s: s * (2, 2, 1)), ("2x2x2", lambda s: s * (2, 2, 2))]:
        y = predict(model, [f(cells[n]) for n in names], dtype)
        out[what] = {n: float(abs(y[k] - ref[k]) / abs(ref[k])) for k, n in enumerate(names)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="/work/shared/data")
    ap.add_argument("--mp-per-system", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing-only", action="store_true", help="skip the invariance tables")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import crystalframer as cf

    print("crystalframer from", cf.__file__)
    cells = {**built_cells(), **mp_cells(Path(args.data_root), args.mp_per_system)}
    small = dict(num_layers=2, model_dim=32, num_heads=4, ff_dim=64, head_dims=(32,))
    setups = [("small float64", small, torch.float64), ("small float32", small, torch.float32),
              ("default float32", {}, torch.float32)]
    if args.timing_only:
        setups = []
    for label, size, dtype in setups:
        torch.manual_seed(0)
        m = cf.CrystalFramer(frame="spframe_quat", frame_options={"global_frame": "reduced"}, **size).to(dtype).eval()
        err = errors(m, cells, dtype)
        print(f"\n{label}: relative prediction change |dy|/|y|")
        print("| cell | basis | 2x2x1 | 2x2x2 |")
        for n in cells:
            print(f"| {n} | " + " | ".join(f"{err[w][n]:.1e}" for w in ("basis", "2x2x1", "2x2x2")) + " |")
        print("| worst | " + " | ".join(f"{max(err[w].values()):.1e}" for w in ("basis", "2x2x1", "2x2x2")) + " |")

    from crystalframer.data.batch import collate
    from crystalframer.data.structures import to_crystal

    batches = {f"the {len(cells)} symmetric cells above": collate([to_crystal(s) for s in cells.values()])}
    b48 = Path(args.data_root).parent / "bench" / "batch48.json"
    if b48.exists():
        batches["batch48 (48 MP structures)"] = collate([to_crystal(o) for o in json.loads(b48.read_text())])
    models = {}
    for gf in ("qr", "reduced"):
        torch.manual_seed(0)
        models[gf] = cf.CrystalFramer(frame="spframe_quat", frame_options={"global_frame": gf}).eval()
    for label, batch in batches.items():
        cold = None
        try:  # the frame sets' first computation (spglib + tie search), cached afterwards
            from crystalframer.frames import global_frames

            global_frames._REDUCED_CACHE.clear()
            t = time.perf_counter()
            global_frames.primitive_reduced_frame_sets(batch.lattice, batch.pos, batch.species, batch.ptr)
            cold = (time.perf_counter() - t) / batch.num_graphs
        except (AttributeError, ImportError):
            pass
        times = {gf: [] for gf in models}
        with torch.no_grad():
            for m in models.values():
                m(batch)
            for _ in range(args.rounds):
                for gf, m in models.items():
                    t = time.perf_counter()
                    m(batch)
                    times[gf].append(time.perf_counter() - t)
        print(f"\nforward of the default model on {label}, eval, {args.rounds} interleaved rounds:")
        for gf, t in times.items():
            print(f"  {gf}: min {min(t):.3f} s, median {statistics.median(t):.3f} s")
        ratio = statistics.median(r / q for r, q in zip(times["reduced"], times["qr"]))
        print(f"  reduced / qr (median of paired ratios): {ratio:.2f}")
        if cold is not None:
            print(f"  frame sets, first computation (cached afterwards): {1e3 * cold:.1f} ms per structure")


if __name__ == "__main__":
    main()
