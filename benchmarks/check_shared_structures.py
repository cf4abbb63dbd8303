"""Every structure of the shared data sets through the validation: counts of unphysical-cell and duplicate-id
warnings, the smallest nearest-neighbour distance and the density range.

Usage: python benchmarks/check_shared_structures.py [DATA_ROOT]   (default ../shared/data)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from crystalframer.data import load_dataset, load_shared
from crystalframer.data.sources.shared import SHARED_SETS
from crystalframer.data.structures import UnphysicalStructureWarning, density, min_distance


def main(root: Path) -> None:
    sources = {name: (lambda n=name: load_shared(n, root)) for name in SHARED_SETS}
    jdft = root / "matbench_jdft2d" / "matbench_jdft2d.json.gz"
    if jdft.exists():
        sources["matbench_jdft2d"] = lambda: load_dataset(jdft)
    total = {"structures": 0, "unphysical": 0, "duplicate": 0, "skipped": 0}
    for name, load in sources.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = load()
        unphys = [w for w in caught if issubclass(w.category, UnphysicalStructureWarning)]
        dup = [w for w in caught if "duplicate id" in str(w.message)]
        dmin = min(min_distance(c.lattice, c.positions)[0] for c in ds)
        rho = np.array([density(c.lattice, c.species) for c in ds])
        print(f"{name}: {len(ds)} structures, {len(ds.errors)} skipped, {len(unphys)} unphysical-cell warnings, "
              f"{len(dup)} duplicate-id warnings; min NN distance {dmin:.3f} Å; density "
              f"{rho.min():.3f}-{rho.max():.3f} g/cm³")
        for w in unphys[:3] + dup[:3]:
            print("   ", w.message)
        total["structures"] += len(ds)
        total["unphysical"] += len(unphys)
        total["duplicate"] += len(dup)
        total["skipped"] += len(ds.errors)
    print("total:", total)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1].parent / "shared" / "data")
