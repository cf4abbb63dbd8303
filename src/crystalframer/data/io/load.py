"""Reading the user's own data → :class:`~crystalframer.data.datasets.CrystalDataset`.

One entry point, :func:`load_dataset`, recognises the source and calls the reader of its format
(modules of :mod:`crystalframer.data.io`):

* ``read_csv`` (:mod:`~crystalframer.data.io.tables`) — CSV (``.csv``, ``.csv.gz``) with a structure column
  holding CIF text, POSCAR text, a structure dict (JSON) or a file path relative to the CSV (auto-detected,
  or ``structure_column``).
* ``read_folder`` (:mod:`~crystalframer.data.io.folders`) — a folder of structure files (CIF,
  POSCAR/``*.vasp``, extxyz, ...) with a cgcnn-style ``id_prop.csv``: no header, column 1 the id or file
  name (with or without extension), then one or more target columns. Without ``id_prop.csv`` every
  structure file is read, without targets.
* ``read_ase_db`` (:mod:`~crystalframer.data.io.ase_files`) — an ASE database (``.db``); targets from the
  row's key-value pairs or data.
* ``read_ase_file`` (:mod:`~crystalframer.data.io.ase_files`) — extxyz (or any multi-frame file ASE reads);
  targets from ``atoms.info`` (or the results ASE moves to ``atoms.calc``, such as ``energy``).
* ``read_json`` (:mod:`~crystalframer.data.io.json_files`) — a JSON list, JSON lines, or a pandas "split"
  JSON (the matminer format) of pymatgen ``Structure`` dicts (or entries holding one) plus target keys.
* ``read_dataframe`` (:mod:`~crystalframer.data.io.tables`) — a pandas DataFrame (cells may hold
  ``Structure``/``Atoms`` objects too).
* ``read_structure_list`` (:mod:`~crystalframer.data.io.lists`) — a list of structures with targets given
  as {name: values}.

A multi-block CIF file gives one structure per block, ids ``<file id>#<k>`` with k = 0, 1, ... in file order
(refused where one row of targets would label them all); a VASP 4 POSCAR without element names is refused.
Paths given to a reader are relative to the working directory; paths inside a CSV or DataFrame to its
``base_dir`` (the CSV's folder). Repeated ids are warned about once. Every ``.gz`` variant is accepted. Each
entry is validated (see :func:`crystalframer.data.structures.to_crystal`); with ``on_error="skip"`` a bad
entry (unreadable text, overlapping atoms, unknown element, NaN coordinates, unknown split label, ...) is
recorded in ``dataset.errors`` as (index in the source, id, message) and skipped, and everything else is
kept. A missing or non-numeric target value becomes NaN and the structure is kept. ``on_error="raise"``
raises :class:`~crystalframer.data.structures.InvalidStructureError` at the first bad entry.

``cache_dir`` stores the parsed data set (see :mod:`crystalframer.data.cache`); it is reused only for the
same input bytes, reader settings and parser versions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.io.ase_files import read_ase_db, read_ase_file
from crystalframer.data.io.entries import STRUCTURE_SUFFIXES, PathLike, base_name
from crystalframer.data.io.folders import read_folder
from crystalframer.data.io.json_files import read_json
from crystalframer.data.io.lists import read_single_file, read_structure_list
from crystalframer.data.io.tables import read_csv, read_dataframe


def load_dataset(source: Any, targets: Sequence[str] | str | Mapping[str, Sequence[Any]] | None = None,
                 structure_column: str | None = None, id_column: str | None = None,
                 split_column: str | None = None, on_error: str = "skip", cache_dir: PathLike | None = None,
                 *, format: str | None = None, name: str | None = None) -> CrystalDataset:
    """Read crystals and their targets from a file, folder, DataFrame or list of structures.

    Args:
        source: a path (CSV, JSON/JSON lines, ASE ``.db``, extxyz, a folder with ``id_prop.csv``, or a
            single structure file; ``.gz`` accepted), a pandas DataFrame, or a list of structures
            (pymatgen ``Structure``, ASE ``Atoms``, dicts, paths or :class:`Crystal`).
        targets: names of the target columns / keys / ``info`` entries, in order. None: no targets
            (for prediction), except for ``id_prop.csv`` whose columns are all targets. For a list of
            structures: a mapping {name: values aligned with the list}.
        structure_column: column or key holding the structures; auto-detected when None.
        id_column: column or key holding the ids; default the first of :data:`ID_CANDIDATES` present,
            else the row number (or file name).
        split_column: column with "train" / "val" ("valid", "validation") / "test"; a column named
            ``split`` is used when None. Rows with another value are reported and skipped.
        on_error: "skip" (report in ``dataset.errors`` and go on) or "raise".
        cache_dir: folder of the preprocessing cache, or None.
        format: force a reader: "csv", "json", "jsonl", "folder", "ase_db", "ase" (extxyz, ...),
            "structure" (one structure file), "dataframe" or "list".
        name: label of the data set in messages (default: the file name).

    Returns:
        A :class:`CrystalDataset`; ``dataset.errors`` lists the skipped entries.
    """
    fmt = format or _detect_format(source)
    kw = dict(on_error=on_error, cache_dir=cache_dir)
    if fmt == "list":
        if targets is not None and not isinstance(targets, Mapping):
            raise TypeError("for a list of structures, targets must be a mapping {name: values}")
        return read_structure_list(source, targets, name=name, **kw)
    if isinstance(targets, Mapping):
        raise TypeError("targets as a mapping of values is only for a list of structures; "
                        "for files and DataFrames give the column names")
    cols = dict(targets=targets, id_column=id_column, split_column=split_column, name=name, **kw)
    if fmt == "dataframe":
        return read_dataframe(source, structure_column=structure_column, **cols)
    path = Path(source)
    if fmt == "csv":
        return read_csv(path, structure_column=structure_column, **cols)
    if fmt in ("json", "jsonl"):
        return read_json(path, structure_column=structure_column, lines=fmt == "jsonl" or None, **cols)
    if fmt == "folder":
        return read_folder(path, targets=targets, split_column=split_column, name=name, **kw)
    if fmt == "ase_db":
        return read_ase_db(path, **cols)
    if fmt == "ase":
        return read_ase_file(path, **cols)
    if fmt == "structure":
        return read_single_file(path, name=name, **kw)
    raise ValueError(f"unknown format {fmt!r}; use csv, json, jsonl, folder, ase_db, ase, structure, "
                     "dataframe or list")


def _detect_format(source: Any) -> str:
    if hasattr(source, "columns") and hasattr(source, "iloc"):
        return "dataframe"
    if isinstance(source, (list, tuple)):
        return "list"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cannot load a data set from an object of type {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    base = base_name(path)
    if base.endswith((".csv", ".tsv")):
        return "csv"
    if base.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if base.endswith(".json"):
        return "json"
    if base.endswith((".db", ".sqlite", ".sqlite3")):
        return "ase_db"
    if base.endswith((".extxyz", ".xyz", ".traj")):
        return "ase"
    if base.endswith(STRUCTURE_SUFFIXES) or base.startswith(("poscar", "contcar")):
        return "structure"
    raise ValueError(f"cannot tell the format of {path}; pass format= (csv, json, jsonl, ase_db, ase, structure)")
