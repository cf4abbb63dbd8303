"""Small real data and tiny models for the training, checkpoint and CLI tests."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

#: A tiny CrystalFramer: 1 layer, width 32, 4 heads, small cutoff and bases, no tie-break noise (so runs
#: are bit-reproducible and DDP ranks draw no random numbers).
TINY = dict(num_layers=1, model_dim=32, num_heads=4, ff_dim=64, head_dims=[32], cutoff=4.0, dist_bins=16,
            angle_bins=16, frame_noise=0.0)

PEROV_FILES = {"train": "dev_train.csv.gz", "val": "val.csv.gz", "test": "test.csv.gz"}


@lru_cache(maxsize=None)
def _perov_rows(data_root: str, split: str, n: int):
    import pandas as pd

    return pd.read_csv(Path(data_root) / "perov_5" / PEROV_FILES[split], nrows=n)


def perov_crystals(data_root: Path, split: str, n: int):
    """The first ``n`` perov_5 structures of ``split`` as labelled Crystals (target heat_all, eV)."""
    from pymatgen.core import Structure

    from crystalframer.data.structures import to_crystal

    df = _perov_rows(str(data_root), split, n)
    return [to_crystal(Structure.from_str(c, "cif"), id=str(i), targets=[y])
            for c, i, y in zip(df.cif, df.material_id, df.heat_all)]


def perov_splits(data_root: Path, n_train: int = 32, n_val: int = 8, n_test: int = 8):
    from crystalframer.training.data import Splits

    return Splits(perov_crystals(data_root, "train", n_train), perov_crystals(data_root, "val", n_val),
                  perov_crystals(data_root, "test", n_test), ["heat_all"], ["eV"])


def write_perov_csv(data_root: Path, path: Path, n_train: int = 32, n_val: int = 8, n_test: int = 8) -> Path:
    """A CSV (material_id, cif, heat_all, split) of the first perov_5 rows of each split."""
    import pandas as pd

    parts = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        df = _perov_rows(str(data_root), split, n)[["material_id", "cif", "heat_all"]].copy()
        df["split"] = split
        parts.append(df)
    pd.concat(parts).to_csv(path, index=False)
    return path


def write_fake_shared_root(data_root: Path, root: Path, n: int = 16) -> Path:
    """A shared-data folder holding a perov_5 with only the first ``n`` rows of each real file."""
    folder = root / "perov_5"
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in PEROV_FILES.items():
        df = _perov_rows(str(data_root), split, n)
        with gzip.open(folder / name, "wt") as f:
            df.to_csv(f, index=False)
    return root


def tiny_model(**kw):
    from crystalframer.models import CrystalFramer

    return CrystalFramer(**{**TINY, "target_names": ["heat_all"], "target_units": ["eV"], **kw})
