"""The shared data sets: six real sets in one folder, read with their natural targets and splits.

Each set is a folder (``perov_5``, ``jarvis_supercon``, ``carbon_24``, ``mp_20_subset``, ``mp_elastic_2015``,
``mp_dielectric_2017``) holding one file per split, or one file that gets the seeded 80/10/10 split of
:func:`crystalframer.data.splits.split_indices`. :data:`SHARED_SETS` says how to read each one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.io.load import load_dataset
from crystalframer.data.io.tables import read_dataframe, read_table
from crystalframer.data.splits import DEFAULT_FRACTIONS, DEFAULT_SEED, SPLITS, normalize_split_label, split_indices
from crystalframer.data.tensors import expand_targets, flatten_tensor_columns


@dataclass(frozen=True)
class SharedSet:
    """How to read one folder of the shared data: files per split, structure/id columns and targets."""

    files: dict[str, str]  # split → file name; key "" = one file without a split
    structure_column: str
    id_column: str
    targets: tuple[str, ...]


SHARED_SETS: dict[str, SharedSet] = {
    "perov_5": SharedSet({"train": "dev_train.csv.gz", "val": "val.csv.gz", "test": "test.csv.gz"},
                         "cif", "material_id", ("heat_all",)),
    "jarvis_supercon": SharedSet({"train": "train.csv.gz", "val": "val.csv.gz", "test": "test.csv.gz"},
                                 "cif", "material_id", ("prop",)),
    "carbon_24": SharedSet({"val": "val.csv.gz", "test": "test.csv.gz"}, "cif", "material_id",
                           ("energy_per_atom",)),
    "mp_20_subset": SharedSet({"": "mp20_resplit_test_subset.csv.gz"}, "cif", "material_id",
                              ("formation_energy_per_atom", "band_gap", "e_above_hull")),
    "mp_elastic_2015": SharedSet({"": "elastic_tensor_2015.json.gz"}, "structure", "material_id",
                                 ("K_VRH", "G_VRH")),
    "mp_dielectric_2017": SharedSet({"": "dielectric_constant.json.gz"}, "structure", "material_id",
                                    ("band_gap",)),
}


def load_shared(name: str, root: str | os.PathLike, split: str | None = None, on_error: str = "skip",
                cache_dir: str | os.PathLike | None = None, limit: int | None = None,
                targets: Sequence[str] | None = None,
                target_shapes: dict[str, Any] | None = None) -> CrystalDataset:
    """Load one of the real data sets of the shared data folder with its natural targets.

    * perov_5: ``heat_all`` (eV); train = the 1,024-row ``dev_train`` subset, val, test.
    * jarvis_supercon: ``prop`` (= −Tc, K); train / val / test.
    * carbon_24: ``energy_per_atom`` (eV/atom); val / test only.
    * mp_20_subset: ``formation_energy_per_atom``, ``band_gap``, ``e_above_hull``;
      mp_elastic_2015: ``K_VRH``, ``G_VRH`` (GPa); mp_dielectric_2017: ``band_gap`` (eV, PBE, from the
      ``structure`` column). These have no split of their own: the file's rows get the seeded
      80/10/10 split of :func:`split_indices` (seed 123), computed over all rows before parsing.

    CIF cells are kept as given (``primitive=False``, no reduction). Every crystal carries its split label.

    Args:
        name: one of :data:`SHARED_SETS`.
        root: the shared data folder (holding ``<name>/``) or the set's own folder.
        split: None for every available split, or "train" / "val" / "test" (only that part is parsed).
        on_error, cache_dir: as for :func:`crystalframer.data.load_dataset`.
        limit: read only the first ``limit`` rows of each split (quick checks); None reads everything.
        targets: other label columns of the file than the natural targets (e.g. ``e_total``).
        target_shapes: {target: shape} for tensor-valued columns (e.g. ``{"e_total": "3x3sym"}``, see
            :mod:`crystalframer.geometry.tensors`): they become flattened columns ``e_total[i,j]``.
    """
    import pandas as pd  # imported here: reading a table is the only use, and pandas is slow to import

    if name not in SHARED_SETS:
        raise ValueError(f"unknown shared data set {name!r}; known: {', '.join(SHARED_SETS)}")
    spec = SHARED_SETS[name]
    root = Path(root)
    folder = root / name if (root / name).is_dir() else root
    want = None if split is None else normalize_split_label(split)
    wanted = list(targets) if targets is not None else list(spec.targets)
    kw = dict(targets=expand_targets(wanted, target_shapes), structure_column=spec.structure_column,
              id_column=spec.id_column,
              on_error=on_error, cache_dir=cache_dir)
    if target_shapes and "" not in spec.files:
        raise ValueError(f"{name} has no tensor-valued targets (target_shapes {dict(target_shapes)})")
    if "" not in spec.files:
        splits = [s for s in SPLITS if s in spec.files and (want is None or s == want)]
        if not splits:
            raise ValueError(f"{name} has no {want!r} split (available: {', '.join(spec.files)})")
        parts = []
        for s in splits:
            path = folder / spec.files[s]
            if not path.exists():
                raise FileNotFoundError(f"{path} not found (shared data set {name})")
            if limit is None:
                ds = load_dataset(path, **kw)
            else:
                ds = read_dataframe(read_table(path).head(limit), base_dir=folder,
                                            name=path.name, **kw)
            ds.split_labels = [s] * len(ds)
            ds.name = f"{name}[{s}]"
            parts.append(ds)
        out = parts[0] if len(parts) == 1 else CrystalDataset.concat(parts, name=name)
        out.name = name if want is None else f"{name}[{want}]"
        return out
    path = folder / spec.files[""]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (shared data set {name})")
    df = read_table(path)
    if target_shapes:
        df = flatten_tensor_columns(df, target_shapes)
    labels = np.empty(len(df), dtype=object)
    for s, idx in split_indices(len(df), DEFAULT_FRACTIONS, DEFAULT_SEED).items():
        labels[idx] = s
    df = df.assign(_split=labels)
    if want is not None:
        df = df[df["_split"] == want]
    if limit is not None:
        df = df.groupby("_split", sort=False, group_keys=False).head(limit)
    ds = read_dataframe(pd.DataFrame(df), split_column="_split", base_dir=folder,
                                name=name if want is None else f"{name}[{want}]", **kw)
    return ds
