"""Matbench tasks and k-fold splits.

Matbench v0.1 (Dunn et al., npj Comput. Mater. 6, 138 (2020); https://matbench.materialsproject.org) ships each
task as a pandas "split" JSON (``{"index", "columns": ["structure", <target>], "data"}``) of pymatgen
``Structure`` dicts and one target. Row ``i`` (0-based, file order) has the id ``mb-<task>-<i + 1>``, zero-padded
to the digits of the row count (``mb-jdft2d-001`` ... ``mb-jdft2d-636``). The official folds are
``sklearn.model_selection.KFold(n_splits=5, shuffle=True, random_state=18012019)`` over the rows;
:func:`kfold_test_indices` reproduces that split with numpy alone.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.io.load import load_dataset
from crystalframer.data.structures import Crystal

__all__ = ["MATBENCH_SEED", "MATBENCH_FOLDS", "kfold_test_indices", "matbench_task", "matbench_ids",
           "MatbenchTask", "load_matbench", "is_matbench_file"]

#: ``random_state`` of the official Matbench v0.1 folds.
MATBENCH_SEED = 18012019
#: Number of official folds.
MATBENCH_FOLDS = 5


def kfold_test_indices(n: int, n_splits: int = MATBENCH_FOLDS, seed: int | None = MATBENCH_SEED) -> list[np.ndarray]:
    """Test rows of each fold of ``KFold(n_splits, shuffle=seed is not None, random_state=seed)``.

    As scikit-learn's ``KFold``: the rows ``0..n-1`` are shuffled in place by
    ``np.random.RandomState(seed).shuffle`` (no shuffle when ``seed`` is None), cut into ``n_splits``
    consecutive blocks, the first ``n % n_splits`` of them one row longer, and each block is returned
    sorted (``KFold.split`` yields test rows in ascending order).

    Returns:
        ``n_splits`` int64 arrays of row positions; together they hold every row exactly once.
    """
    n, k = int(n), int(n_splits)
    if k < 2:
        raise ValueError(f"k-fold needs at least 2 folds, got {k}")
    if n < k:
        raise ValueError(f"cannot cut {n} rows into {k} folds")
    rows = np.arange(n)
    if seed is not None:
        np.random.RandomState(int(seed)).shuffle(rows)
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    out, start = [], 0
    for size in sizes:
        out.append(np.sort(rows[start:start + size]).astype(np.int64))
        start += int(size)
    return out


def matbench_task(path: str | os.PathLike) -> str:
    """Short task name of a Matbench file: ``matbench_jdft2d.json.gz`` → ``jdft2d``."""
    name = Path(path).name
    for suffix in (".gz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name[len("matbench_"):] if name.startswith("matbench_") else name


def matbench_ids(task: str, n: int) -> list[str]:
    """Row ids ``mb-<task>-<row + 1>``, zero-padded to the digits of ``n`` (at least 3)."""
    width = max(3, len(str(int(n))))
    return [f"mb-{task}-{i + 1:0{width}d}" for i in range(int(n))]


def _split_table_head(path: Path) -> dict:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        doc = json.load(f)
    if not (isinstance(doc, dict) and "columns" in doc and "data" in doc):
        raise ValueError(f"{path}: not a Matbench file (expected a pandas 'split' JSON with 'columns' and 'data')")
    return doc


def is_matbench_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a Matbench task file (``matbench_<task>.json[.gz]``)."""
    name = Path(path).name
    return name.startswith("matbench_") and name.endswith((".json", ".json.gz"))


@dataclass
class MatbenchTask:
    """A Matbench task read from its file.

    Attributes:
        task: short name (``jdft2d``).
        target: the target column (``exfoliation_en``).
        dataset: the crystals in file order (rows that could not be read are in ``dataset.errors``);
            ``crystal.id`` is the Matbench id.
        rows: (n,) int64 file row of each crystal of ``dataset``.
        n_rows: rows in the file (the folds are cut over all of them).
    """

    task: str
    target: str
    dataset: CrystalDataset
    rows: np.ndarray
    n_rows: int

    def fold_test_ids(self, n_splits: int = MATBENCH_FOLDS, seed: int = MATBENCH_SEED) -> list[list[str]]:
        """Matbench ids of the test rows of each official fold (over every file row, read or not)."""
        ids = matbench_ids(self.task, self.n_rows)
        return [[ids[i] for i in fold] for fold in kfold_test_indices(self.n_rows, n_splits, seed)]


def load_matbench(path: str | os.PathLike, on_error: str = "skip",
                  cache_dir: str | os.PathLike | None = None) -> MatbenchTask:
    """Read a Matbench task file (pandas "split" JSON: a ``structure`` column and one target column).

    Rows that cannot be read are reported in ``dataset.errors`` (with their Matbench id) and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Matbench file {path} not found")
    doc = _split_table_head(path)
    cols = [str(c) for c in doc["columns"]]
    if "structure" not in cols or len(cols) != 2:
        raise ValueError(f"{path}: a Matbench file has a 'structure' column and one target column, got {cols}")
    target = next(c for c in cols if c != "structure")
    n_rows = len(doc["data"])
    del doc
    task = matbench_task(path)
    ds = load_dataset(path, targets=[target], structure_column="structure", on_error=on_error,
                      cache_dir=cache_dir, format="json", name=path.name)
    ids = matbench_ids(task, n_rows)
    bad = {int(e.index) for e in ds.errors}
    rows = np.array([i for i in range(n_rows) if i not in bad], dtype=np.int64)
    if len(rows) != len(ds):
        raise ValueError(f"{path}: {len(ds)} structures read and {len(bad)} skipped, but the file has {n_rows} rows")
    crystals = [Crystal(c.lattice, c.positions, c.species, ids[r], c.targets, dict(c.info))
                for c, r in zip(ds.crystals, rows)]
    errors = [(e.index, ids[e.index], e.message) for e in ds.errors]
    out = CrystalDataset(crystals, ds.target_names, errors, None, name=path.name)
    return MatbenchTask(task, target, out, rows, n_rows)

