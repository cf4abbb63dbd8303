"""Tables: CSV / TSV files and pandas DataFrames, one row per structure.

The structure column may hold CIF or POSCAR text, structure dicts (JSON or Python-literal text), pymatgen
``Structure`` / ASE ``Atoms`` objects (DataFrames) or file paths relative to the table's folder; it is found
automatically when not named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crystalframer.data import cache as _cache
from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.io.entries import (
    ID_CANDIDATES,
    STRUCTURE_NAME_HINTS,
    Entry,
    PathLike,
    assemble,
    auto_split_column,
    base_name,
    entry_ids,
    is_blank,
    looks_like_structure_dict,
    read_text,
    reader_settings,
    require_columns,
    target_list,
    text_kind,
)
from crystalframer.data.structures import Crystal, check_on_error


def read_csv(path: PathLike, targets: Sequence[str] | str | None = None, structure_column: str | None = None,
             id_column: str | None = None, split_column: str | None = None, on_error: str = "skip",
             cache_dir: PathLike | None = None, name: str | None = None) -> CrystalDataset:
    """Read a CSV (``.csv``/``.tsv``, optionally gzipped) whose rows are structures plus targets.

    Every cell is read as text (ids keep leading zeros; numbers are parsed with Python's ``float``). The
    structure column may hold CIF or POSCAR text, JSON structure dicts, or file paths relative to the CSV.
    """
    path = Path(path)
    settings = reader_settings("csv", path, targets, structure_column, id_column, split_column, on_error)
    return _cache.cached_build(
        cache_dir, settings, lambda: _cache.file_digest(path),
        lambda: build_from_dataframe(read_table(path), targets, structure_column, id_column, split_column, on_error,
                                 path.parent, name or path.name))


def read_table(path: PathLike) -> Any:
    """A CSV/TSV (text cells) or pandas "split"/records JSON file (gz accepted) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    base = base_name(path)
    if base.endswith((".csv", ".tsv")):
        return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if base.endswith(".tsv") else ",")
    if base.endswith(".json"):
        doc = json.loads(read_text(path))
        if isinstance(doc, dict) and "columns" in doc and "data" in doc:
            return pd.DataFrame(doc["data"], columns=doc["columns"])
        if isinstance(doc, list):
            return pd.DataFrame(doc)
        raise ValueError(f"{path}: not a pandas split/records JSON table")
    raise ValueError(f"{path}: not a CSV or JSON table")


def read_dataframe(df: Any, targets: Sequence[str] | str | None = None, structure_column: str | None = None,
                   id_column: str | None = None, split_column: str | None = None, on_error: str = "skip",
                   cache_dir: PathLike | None = None, base_dir: PathLike | None = None,
                   name: str | None = None) -> CrystalDataset:
    """Read a pandas DataFrame: one row per structure.

    Cells of the structure column may be pymatgen ``Structure``/ASE ``Atoms`` objects, structure dicts
    (or their JSON / Python-literal text), CIF or POSCAR text, or file paths (relative to ``base_dir``,
    default the working directory). Errors are reported with the row's index label.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    settings = reader_settings("dataframe", None, targets, structure_column, id_column, split_column, on_error)
    settings["base_dir"] = str(base.resolve())
    return _cache.cached_build(
        cache_dir, settings, lambda: _cache.content_digest(df),
        lambda: build_from_dataframe(df, targets, structure_column, id_column, split_column, on_error, base,
                                 name or "dataframe"))


def build_from_dataframe(df: Any, targets, structure_column, id_column, split_column, on_error: str, base: Path,
                     name: str) -> tuple[CrystalDataset, list[Path]]:
    check_on_error(on_error)
    target_names = target_list(targets)
    columns = [str(c) for c in df.columns]
    df = df.rename(columns=dict(zip(df.columns, columns)))
    require_columns(columns, target_names, "target", name)
    split_column = auto_split_column(columns, split_column)
    require_columns(columns, [split_column] if split_column else [], "split", name)
    if id_column is not None:
        require_columns(columns, [id_column], "id", name)
    else:
        id_column = next((c for c in ID_CANDIDATES if c in columns), None)
    if structure_column is None:
        structure_column = _detect_structure_column(df, base, exclude={id_column, split_column, *target_names},
                                                    name=name)
    else:
        require_columns(columns, [structure_column], "structure", name)
    n = len(df)
    index = [int(i) if isinstance(i, (int, np.integer)) else k for k, i in enumerate(df.index)]
    structures = df[structure_column].tolist()
    ids = entry_ids(df[id_column].tolist() if id_column else None, structures, index)
    tcols = [df[t].tolist() for t in target_names]
    splits = df[split_column].tolist() if split_column else [None] * n
    entries = (Entry(index[k], ids[k], structures[k], [c[k] for c in tcols], splits[k]) for k in range(n))
    return assemble(entries, target_names, on_error, name, split_column is not None, base)


def _detect_structure_column(df: Any, base: Path, exclude: set, name: str) -> str:
    """The column holding structures: objects/dicts first, then CIF, POSCAR, JSON text, then file paths."""
    rank = {"object": 0, "cif": 1, "poscar": 2, "json": 3, "path": 4}
    best: tuple[int, int, str] | None = None
    columns = [str(c) for c in df.columns]
    for pos, col in enumerate(columns):
        if col in exclude:
            continue
        sample = [v for v in df[col].head(50).tolist() if not is_blank(v)][:5]
        if not sample:
            continue
        kinds = {_cell_kind(v, base) for v in sample}
        if not kinds <= set(rank):  # every sampled cell must hold a structure (mixed forms are fine)
            continue
        kind = max(kinds, key=rank.__getitem__)
        hints = STRUCTURE_NAME_HINTS
        hint = hints.index(col.lower()) if col.lower() in hints else len(hints)
        cand = (rank[kind], hint, pos, col)
        if best is None or cand < best:
            best = cand
    if best is None:
        raise ValueError(f"{name}: no column holds structures (CIF/POSCAR text, structure dicts or existing "
                         f"file paths); columns are {columns}; pass structure_column=")
    return best[-1]


def _cell_kind(v: Any, base: Path) -> str:
    if isinstance(v, Crystal) or hasattr(v, "sites") or (hasattr(v, "get_positions") and hasattr(v, "cell")):
        return "object"
    if isinstance(v, dict):
        return "object" if looks_like_structure_dict(v) else "other"
    if isinstance(v, os.PathLike):
        return "path" if (base / v).exists() else "other"
    if isinstance(v, str):
        kind = text_kind(v)
        if kind == "json":
            return "json" if "lattice" in v else "other"
        if kind == "path":
            p = Path(v.strip())
            return "path" if (p if p.is_absolute() else base / p).is_file() else "other"
        return kind
    return "other"
