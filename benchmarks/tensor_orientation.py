"""Which tensor column of the shared data sets is expressed in the frame of the stored structure?

For every structure: the Cartesian point-group operations R (spglib, R = Lᵀ W L⁻ᵀ with lattice rows L) are
applied to each tensor column and the misfit max_R ‖R·T − T‖/‖T‖ is measured
(:func:`crystalframer.data.tensors.orientation_report`). A column in the structure's frame has misfits at the
level of DFT noise; one in another frame has misfits of order 1.

    PYTHONPATH=src python benchmarks/tensor_orientation.py --data-root /work/shared/data
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from crystalframer.data.tensors import orientation_report, tensor_value

SETS = {"mp_dielectric_2017": ("dielectric_constant.json.gz", ["e_total", "e_electronic"], "3x3"),
        "mp_elastic_2015": ("elastic_tensor_2015.json.gz", ["elastic_tensor", "elastic_tensor_original"], "6x6")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--limit", type=int, default=None, help="first N rows of each set")
    p.add_argument("--symprec", type=float, default=1e-3)
    p.add_argument("-o", "--output", default="benchmarks/tensors/orientation.json")
    args = p.parse_args()
    summary = {}
    for name, (fname, cols, kind) in SETS.items():
        j = json.load(gzip.open(Path(args.data_root) / name / fname))
        c = j["columns"]
        rows = j["data"][: args.limit]
        structs = [Structure.from_dict(r[c.index("structure")]) for r in rows]
        rep = orientation_report(structs, {col: [r[c.index(col)] for r in rows] for col in cols}, kind,
                                 symprec=args.symprec)
        summary[name] = {col: {k: v for k, v in r.items() if k != "misfit"} for col, r in rep.items()}
        summary[name]["rows"] = len(rows)
        for col, r in rep.items():
            print(f"{name:20s} {col:24s} checked {r['checked']:5d}  misfit median {r['median']:.2e}  "
                  f"p90 {r['p90']:.2e}  max {r['max']:.2e}  misaligned (>1e-2) {r['misaligned']}")
        if len(cols) == 2:
            a, b = (rep[col]["misfit"] for col in cols)
            both = ~np.isnan(a) & ~np.isnan(b)
            summary[name]["better_column_counts"] = {cols[0]: int((a[both] < b[both]).sum()),
                                                     cols[1]: int((b[both] < a[both]).sum())}
            vals = [np.stack([tensor_value(r[c.index(col)], kind) for r in rows]) for col in cols]
            summary[name]["identical_rows"] = int(np.all(np.isclose(vals[0], vals[1]), axis=(1, 2)).sum())
            print(f"{name:20s} rows where the two columns are identical: {summary[name]['identical_rows']}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
