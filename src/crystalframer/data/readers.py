"""Readers: the user's own data → :class:`~crystalframer.data.datasets.CrystalDataset`.

One entry point, :func:`load_dataset`, recognises the source and calls one of:

* :func:`read_csv` — CSV (``.csv``, ``.csv.gz``) with a structure column holding CIF text, POSCAR text,
  a structure dict (JSON) or a file path relative to the CSV (auto-detected, or ``structure_column``).
* :func:`read_folder` — a folder of structure files (CIF, POSCAR/``*.vasp``, extxyz, ...) with a cgcnn-style
  ``id_prop.csv``: no header, column 1 the id or file name (with or without extension), then one or
  more target columns. Without ``id_prop.csv`` every structure file is read, without targets.
* :func:`read_ase_db` — an ASE database (``.db``); targets from the row's key-value pairs or data.
* :func:`read_ase_file` — extxyz (or any multi-frame file ASE reads); targets from ``atoms.info``
  (or the results ASE moves to ``atoms.calc``, such as ``energy``).
* :func:`read_json` — a JSON list, JSON lines, or a pandas "split" JSON (the matminer format) of
  pymatgen ``Structure`` dicts (or entries holding one) plus target keys.
* :func:`read_dataframe` — a pandas DataFrame (cells may hold ``Structure``/``Atoms`` objects too).
* :func:`read_structure_list` — a list of structures with targets given as {name: values}.

A multi-block CIF file gives one structure per block, ids ``<file id>#<k>`` with k = 0, 1, ... in file order
(refused where one row of targets would label them all); a VASP 4 POSCAR without element names is refused.
Paths given to a reader are relative to the working directory; paths inside a CSV or DataFrame to its
``base_dir`` (the CSV's folder). Repeated ids are warned about once. Every ``.gz`` variant is accepted. Each entry is validated (see
:func:`crystalframer.data.structures.to_crystal`); with ``on_error="skip"`` a bad entry (unreadable text,
overlapping atoms, unknown element, NaN coordinates, unknown split label, ...) is recorded in
``dataset.errors`` as (index in the source, id, message) and skipped, and everything else is kept. A
missing or non-numeric target value becomes NaN and the structure is kept. ``on_error="raise"`` raises
:class:`~crystalframer.data.structures.InvalidStructureError` at the first bad entry.

``cache_dir`` stores the parsed data set (see :mod:`crystalframer.data.cache`); it is reused only for the
same input bytes, reader settings and parser versions.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from crystalframer.data import cache as _cache
from crystalframer.data.datasets import CrystalDataset, LoadError, normalize_split_label
from crystalframer.data.structures import (
    ON_ERROR,
    Crystal,
    InvalidStructureError,
    block_ids,
    check_on_error,
    check_poscar_warnings,
    parse_cif_text,
    read_path,
    to_crystal,
    warn_duplicate_ids,
)

PathLike = str | os.PathLike
#: Column / key names tried, in order, when no ``id_column`` is given.
ID_CANDIDATES = ("material_id", "id", "jid", "mpid", "mp_id", "structure_id", "name", "uid")
#: Column names preferred (in this order) among columns that hold structures.
STRUCTURE_NAME_HINTS = ("structure", "structures", "atoms", "cif", "poscar", "file", "filename", "file_name",
                        "path", "structure_file", "cif_file")
#: Extensions of single-structure files found in a folder (``.gz`` variants too).
STRUCTURE_SUFFIXES = (".cif", ".mcif", ".vasp", ".poscar", ".contcar", ".xyz", ".extxyz", ".xsf", ".cssr",
                      ".res", ".json")
_MISSING_STRINGS = {"", "nan", "na", "n/a", "none", "null", "-", "--", "?"}


class _Entry(NamedTuple):
    index: int  # position in the source (row, line, frame)
    id: str
    structure: Any  # object, text, path, or a zero-argument callable returning one of these
    targets: Sequence[Any]
    split: Any = None


# -- public entry point -------------------------------------------------------------------------------


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
        return _read_single(path, name=name, **kw)
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
    base = _base_name(path)
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


def _base_name(path: Path) -> str:
    """Lower-case file name without a trailing ``.gz``."""
    n = path.name.lower()
    return n[:-3] if n.endswith(".gz") else n


# -- format readers ------------------------------------------------------------------------------------


def read_csv(path: PathLike, targets: Sequence[str] | str | None = None, structure_column: str | None = None,
             id_column: str | None = None, split_column: str | None = None, on_error: str = "skip",
             cache_dir: PathLike | None = None, name: str | None = None) -> CrystalDataset:
    """Read a CSV (``.csv``/``.tsv``, optionally gzipped) whose rows are structures plus targets.

    Every cell is read as text (ids keep leading zeros; numbers are parsed with Python's ``float``). The
    structure column may hold CIF or POSCAR text, JSON structure dicts, or file paths relative to the CSV.
    """
    path = Path(path)
    settings = _settings("csv", path, targets, structure_column, id_column, split_column, on_error)
    return _cache.cached_build(
        cache_dir, settings, lambda: _cache.file_digest(path),
        lambda: _dataframe_build(read_table(path), targets, structure_column, id_column, split_column, on_error,
                                 path.parent, name or path.name))


def read_table(path: PathLike) -> Any:
    """A CSV/TSV (text cells) or pandas "split"/records JSON file (gz accepted) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    base = _base_name(path)
    if base.endswith((".csv", ".tsv")):
        return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if base.endswith(".tsv") else ",")
    if base.endswith(".json"):
        doc = json.loads(_read_text(path))
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
    settings = _settings("dataframe", None, targets, structure_column, id_column, split_column, on_error)
    settings["base_dir"] = str(base.resolve())
    return _cache.cached_build(
        cache_dir, settings, lambda: _cache.content_digest(df),
        lambda: _dataframe_build(df, targets, structure_column, id_column, split_column, on_error, base,
                                 name or "dataframe"))


def _dataframe_build(df: Any, targets, structure_column, id_column, split_column, on_error: str, base: Path,
                     name: str) -> tuple[CrystalDataset, list[Path]]:
    check_on_error(on_error)
    target_names = _target_list(targets)
    columns = [str(c) for c in df.columns]
    df = df.rename(columns=dict(zip(df.columns, columns)))
    _require_columns(columns, target_names, "target", name)
    split_column = _auto_split(columns, split_column)
    _require_columns(columns, [split_column] if split_column else [], "split", name)
    if id_column is not None:
        _require_columns(columns, [id_column], "id", name)
    else:
        id_column = next((c for c in ID_CANDIDATES if c in columns), None)
    if structure_column is None:
        structure_column = _detect_structure_column(df, base, exclude={id_column, split_column, *target_names},
                                                    name=name)
    else:
        _require_columns(columns, [structure_column], "structure", name)
    n = len(df)
    index = [int(i) if isinstance(i, (int, np.integer)) else k for k, i in enumerate(df.index)]
    structures = df[structure_column].tolist()
    ids = _ids(df[id_column].tolist() if id_column else None, structures, index)
    tcols = [df[t].tolist() for t in target_names]
    splits = df[split_column].tolist() if split_column else [None] * n
    entries = (_Entry(index[k], ids[k], structures[k], [c[k] for c in tcols], splits[k]) for k in range(n))
    return _assemble(entries, target_names, on_error, name, split_column is not None, base)


def read_folder(path: PathLike, targets: Sequence[str] | str | None = None, split_column: str | None = None,
                on_error: str = "skip", cache_dir: PathLike | None = None, name: str | None = None,
                id_prop: str | None = None) -> CrystalDataset:
    """Read a folder of structure files with a cgcnn-style ``id_prop.csv`` (or ``id_prop.csv.gz``).

    ``id_prop.csv``: column 1 is a structure id or file name (with or without extension; the file is
    found by name, then by name without extension), the other columns are targets. It has no header;
    if its first row is not numeric it is taken as a header naming the columns. Without a header the
    targets are called ``target`` (one column) or ``target_1`` … ``target_k``, or ``targets`` names them
    (all of them, in order); with a header ``targets`` selects columns by name. Without any
    ``id_prop.csv`` every structure file in the folder is read, without targets, id = file name stem.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    prop = Path(id_prop) if id_prop else next((path / n for n in ("id_prop.csv", "id_prop.csv.gz")
                                               if (path / n).is_file()), None)
    listing = sorted(p.name for p in path.iterdir() if p.is_file())

    def content() -> str:
        return _cache.content_digest(["folder", listing, None if prop is None else _cache.file_digest(prop)])

    settings = _settings("folder", path, targets, None, None, split_column, on_error)
    return _cache.cached_build(cache_dir, settings, content,
                               lambda: _folder_build(path, prop, targets, split_column, on_error,
                                                     name or path.name))


def _folder_build(path: Path, prop: Path | None, targets, split_column, on_error: str,
                  name: str) -> tuple[CrystalDataset, list[Path]]:
    check_on_error(on_error)
    path = path.absolute()  # listed files then name their folder whatever the working directory
    files = sorted(p for p in path.iterdir() if p.is_file() and _is_structure_file(p))
    if prop is None:
        if targets:
            raise ValueError(f"{path}: no id_prop.csv, so there are no targets to read ({targets})")
        entries = (_Entry(k, _stem(p), p, []) for k, p in enumerate(files))
        return _assemble(entries, [], on_error, name, False, path)
    import pandas as pd

    raw = pd.read_csv(prop, header=None, dtype=str, keep_default_na=False, skipinitialspace=True)
    if raw.shape[1] < 2:
        raise ValueError(f"{prop}: expected an id column and at least one target column, "
                         f"got {raw.shape[1]} column")
    # an exact file name may have any extension; names without one are matched among structure files
    by_name = {p.name: p for p in path.iterdir() if p.is_file() and p != prop}
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        for key in {_stem(p), p.name[:-3] if p.name.endswith(".gz") else p.name}:
            by_stem.setdefault(key, []).append(p)
    first = [str(v).strip() for v in raw.iloc[0]]
    header = not _numeric(first[1:]) and first[0] not in by_name and first[0] not in by_stem
    if header:
        names = first
        body = raw.iloc[1:]
        row0 = 1
    else:
        k = raw.shape[1] - 1
        names = ["id"] + (["target"] if k == 1 else [f"target_{i + 1}" for i in range(k)])
        body = raw
        row0 = 0
        if split_column is not None:
            raise ValueError(f"{prop} has no header, so split_column {split_column!r} cannot be found")
    tnames = _target_list(targets)
    if header:
        split_column = _auto_split(names[1:], split_column)
        _require_columns(names[1:], tnames + ([split_column] if split_column else []), "target/split", str(prop))
        tnames = tnames or [n for n in names[1:] if n != split_column]
        cols = [names.index(t) for t in tnames]
        scol = names.index(split_column) if split_column else None
    else:
        if tnames and len(tnames) != len(names) - 1:
            raise ValueError(f"{prop} has {len(names) - 1} target columns; targets= must name all of them, "
                             f"got {tnames}")
        tnames = tnames or names[1:]
        cols = list(range(1, len(names)))
        scol = None

    def locate(key: str, sid: str) -> Callable[[], Any]:
        def get():
            if key in by_name:
                return by_name[key]
            hits = by_stem.get(key, [])
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                names = ", ".join(p.name for p in hits)
                raise InvalidStructureError(sid, f"several files match {key!r}: {names}")
            raise InvalidStructureError(sid, f"no structure file named {key!r} (with or without extension) "
                                             f"in {path}")
        return get

    values = body.to_numpy()
    entries = (_Entry(row0 + k, str(r[0]).strip(), locate(str(r[0]).strip(), str(r[0]).strip()),
                      [r[c] for c in cols], r[scol] if scol is not None else None)
               for k, r in enumerate(values))
    ds, deps = _assemble(entries, tnames, on_error, name, scol is not None, path)
    return ds, deps + [prop]


def read_ase_db(path: PathLike, targets: Sequence[str] | str | None = None, id_column: str | None = None,
                split_column: str | None = None, on_error: str = "skip", cache_dir: PathLike | None = None,
                name: str | None = None) -> CrystalDataset:
    """Read an ASE database (``.db`` SQLite or ASE JSON db; gzip accepted).

    Targets and the split label come from each row's key-value pairs, columns (``energy``, ...) or
    ``data``. Ids: ``id_column`` or the first of :data:`ID_CANDIDATES` among the key-value pairs, else
    the row id.
    """
    path = Path(path)
    settings = _settings("ase_db", path, targets, None, id_column, split_column, on_error)
    return _cache.cached_build(cache_dir, settings, lambda: _cache.file_digest(path),
                               lambda: _ase_db_build(path, targets, id_column, split_column, on_error,
                                                     name or path.name))


def _ase_db_build(path: Path, targets, id_column, split_column, on_error, name):
    from ase.db import connect

    check_on_error(on_error)
    tnames = _target_list(targets)
    with _plain_copy(path) as plain:
        kind = "json" if _base_name(path).endswith(".json") else "db"
        db = connect(str(plain), type=kind)
        rows = list(db.select())
    entries = []
    for k, row in enumerate(rows):
        kvp = row.key_value_pairs
        if id_column is not None:
            sid = _row_value(row, id_column)
        else:
            sid = next((kvp[c] for c in ID_CANDIDATES if c in kvp), None)
        sid = str(row.id) if sid is None else str(sid)
        split = _row_value(row, split_column or "split") if (split_column or "split" in kvp) else None
        entries.append(_Entry(k, sid, row.toatoms, [_row_value(row, t) for t in tnames], split))
    has_split = split_column is not None or any("split" in r.key_value_pairs for r in rows)
    return _assemble(entries, tnames, on_error, name, has_split, path.parent)


def _row_value(row: Any, key: str) -> Any:
    v = row.get(key)
    if v is None:
        data = getattr(row, "data", None) or {}
        v = data.get(key)
    return v


def read_ase_file(path: PathLike, targets: Sequence[str] | str | None = None, id_column: str | None = None,
                  split_column: str | None = None, on_error: str = "skip", cache_dir: PathLike | None = None,
                  name: str | None = None, ase_format: str | None = None) -> CrystalDataset:
    """Read every frame of an extxyz file (or another multi-frame format ASE reads; gzip accepted).

    Targets come from ``atoms.info[name]``, or from ``atoms.calc.results[name]`` where ASE moved
    the value there (``energy``, ``free_energy``, ...). Ids: ``info[id_column]``, the first of
    :data:`ID_CANDIDATES` in ``info``, else ``<file name>#<frame>``. Frames that ASE cannot parse make the
    whole file unreadable (ASE stops at the first bad frame), so that error is raised, naming the file.
    """
    path = Path(path)
    settings = _settings("ase", path, targets, None, id_column, split_column, on_error)
    settings["ase_format"] = ase_format
    return _cache.cached_build(cache_dir, settings, lambda: _cache.file_digest(path),
                               lambda: _ase_file_build(path, targets, id_column, split_column, on_error,
                                                       name or path.name, ase_format))


def _ase_file_build(path, targets, id_column, split_column, on_error, name, ase_format):
    from ase.io import read

    check_on_error(on_error)
    tnames = _target_list(targets)
    fmt = ase_format
    if fmt is None and _base_name(path).endswith((".xyz", ".extxyz")):
        fmt = "extxyz"
    with _plain_copy(path) as plain:
        try:
            frames = read(str(plain), index=":", format=fmt)
        except Exception as e:  # noqa: BLE001 - ASE raises many types; name the file
            raise ValueError(f"{path}: ASE could not read the file ({type(e).__name__}: {e})") from e
    entries = []
    has_split = split_column is not None or any("split" in a.info for a in frames)
    for k, atoms in enumerate(frames):
        info = atoms.info
        if id_column is not None:
            sid = info.get(id_column)
        else:
            sid = next((info[c] for c in ID_CANDIDATES if c in info), None)
        sid = f"{path.name}#{k}" if sid is None else str(sid)
        tv = [_atoms_value(atoms, t) for t in tnames]
        split = info.get(split_column or "split") if has_split else None
        entries.append(_Entry(k, sid, atoms, tv, split))
    return _assemble(entries, tnames, on_error, name, has_split, path.parent)


def _atoms_value(atoms: Any, key: str) -> Any:
    if key in atoms.info:
        return atoms.info[key]
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    return results.get(key)


#: ``read_extxyz`` is :func:`read_ase_file` (extxyz is its default for ``.xyz``/``.extxyz``).
read_extxyz = read_ase_file


def read_json(path: PathLike, targets: Sequence[str] | str | None = None, structure_column: str | None = None,
              id_column: str | None = None, split_column: str | None = None, on_error: str = "skip",
              cache_dir: PathLike | None = None, name: str | None = None,
              lines: bool | None = None) -> CrystalDataset:
    """Read JSON structures plus targets (``.json``, ``.jsonl``/``.ndjson``, gzip accepted).

    Layouts: a list of entries; JSON lines (one entry per line; an unparseable line is reported and
    skipped); a pandas "split" table (``{"columns", "data"}``, the matminer format); an ASE JSON db. An
    entry is either a pymatgen ``Structure`` dict (targets then come from its top-level keys or its
    ``properties``) or a dict holding one under ``structure_column`` (auto-detected) next to the target
    keys. Structure dicts may also be ``{"lattice", "cart_coords", "species"}`` or jarvis ``atoms`` dicts
    (``lattice_mat``, ``coords``, ``elements``, ``cartesian``).
    """
    path = Path(path)
    settings = _settings("json", path, targets, structure_column, id_column, split_column, on_error)
    settings["lines"] = lines
    return _cache.cached_build(
        cache_dir, settings, lambda: _cache.file_digest(path),
        lambda: _json_build(path, targets, structure_column, id_column, split_column, on_error,
                            name or path.name, lines))


def _json_build(path: Path, targets, structure_column, id_column, split_column, on_error, name, lines):
    check_on_error(on_error)
    text = _read_text(path)
    bad_lines: list[LoadError] = []
    doc: Any = None
    if not lines:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            if lines is not None:  # lines=False: the file must be one JSON document
                raise ValueError(f"{path}: not valid JSON ({e})") from e
            lines = True
    if lines:
        doc = []
        for k, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                doc.append((k, json.loads(line)))
            except json.JSONDecodeError as e:
                msg = f"structure 'line {k + 1}': not valid JSON ({e})"
                if on_error == "raise":
                    raise InvalidStructureError(f"line {k + 1}", f"not valid JSON ({e})") from e
                bad_lines.append(LoadError(k, f"line {k + 1}", msg))
    if isinstance(doc, dict) and "columns" in doc and "data" in doc:  # pandas/matminer "split" table
        import pandas as pd

        df = pd.DataFrame(doc["data"], columns=doc["columns"])
        return _dataframe_build(df, targets, structure_column, id_column, split_column, on_error, path.parent,
                                name)
    if isinstance(doc, dict) and "ids" in doc and "nextid" in doc:  # an ASE JSON database
        return _ase_db_build(path, targets, id_column, split_column, on_error, name)
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a JSON list, JSON lines or a pandas split table")
    items = doc if lines else list(enumerate(doc))
    tnames = _target_list(targets)
    entries = [_json_entry(k, item, tnames, structure_column, id_column, split_column or "split")
               for k, item in items]
    has_split = split_column is not None or any(isinstance(item, dict) and "split" in item for _, item in items)
    ds, deps = _assemble(iter(entries), tnames, on_error, name, has_split, path.parent)
    if bad_lines:
        ds.errors = sorted(bad_lines + ds.errors, key=lambda e: e.index)
    return ds, deps


def _json_entry(k: int, item: Any, tnames: list[str], structure_column, id_column, split_column) -> _Entry:
    if not isinstance(item, dict):
        return _Entry(k, str(k), item, [None] * len(tnames))
    props = {}
    if structure_column is not None:
        s = item.get(structure_column)
    elif _looks_like_structure_dict(item):
        s = item
        props = item.get("properties") or {}
    else:
        key = next((c for c in STRUCTURE_NAME_HINTS if c in item), None)
        if key is None:
            key = next((c for c, v in item.items() if isinstance(v, dict) and _looks_like_structure_dict(v)), None)
        s = item.get(key) if key is not None else None
    if isinstance(s, dict):
        props = {**(s.get("properties") or {}), **props}

    def get(key: str) -> Any:
        v = item.get(key)
        return props.get(key) if v is None else v

    if id_column is not None:
        sid = get(id_column)
    else:
        sid = next((get(c) for c in ID_CANDIDATES if get(c) is not None), None)
    sid = str(k) if sid is None else str(sid)
    return _Entry(k, sid, s, [get(t) for t in tnames], get(split_column))


def read_structure_list(items: Sequence[Any], targets: Mapping[str, Sequence[Any]] | None = None,
                        ids: Sequence[str] | None = None, split: Sequence[str] | None = None,
                        on_error: str = "skip", cache_dir: PathLike | None = None,
                        name: str | None = None) -> CrystalDataset:
    """Read a list of structures (``Structure``, ``Atoms``, dicts, file paths, CIF/POSCAR text, Crystal).

    Args:
        targets: {name: values}, each a sequence aligned with ``items`` (None / NaN = missing).
        ids: optional ids (default: the structure's own id, else its position).
        split: optional split labels aligned with ``items``.
    """
    items = list(items)
    tmap = dict(targets or {})
    for t, v in tmap.items():
        if len(v) != len(items):
            raise ValueError(f"target {t!r} has {len(v)} values for {len(items)} structures")
    for what, seq in (("ids", ids), ("split", split)):
        if seq is not None and len(seq) != len(items):
            raise ValueError(f"{what} has {len(seq)} values for {len(items)} structures")
    settings = _settings("list", None, list(tmap), None, None, None, on_error)
    settings["base_dir"] = str(Path.cwd())

    def build():
        check_on_error(on_error)
        tn = list(tmap)
        entries = (_Entry(k, str(ids[k]) if ids is not None else _object_id(obj, k), obj,
                          [tmap[t][k] for t in tn], None if split is None else split[k])
                   for k, obj in enumerate(items))
        return _assemble(entries, tn, on_error, name or "structures", split is not None, Path.cwd())

    return _cache.cached_build(cache_dir, settings,
                               lambda: _cache.content_digest([items, tmap, ids, split]), build)


def _object_id(obj: Any, k: int) -> str:
    if isinstance(obj, Crystal):
        return obj.id
    props = getattr(obj, "properties", None)
    if isinstance(props, dict):
        for c in ID_CANDIDATES:
            if c in props:
                return str(props[c])
    info = getattr(obj, "info", None)
    if isinstance(info, dict) and not isinstance(obj, Crystal):
        for c in ID_CANDIDATES:
            if c in info:
                return str(info[c])
    if isinstance(obj, dict):
        for c in ID_CANDIDATES:
            if c in obj:
                return str(obj[c])
    if isinstance(obj, (str, os.PathLike)) and "\n" not in str(obj):
        return _stem(Path(obj))
    return str(k)


def _read_single(path: Path, on_error: str, cache_dir, name: str | None) -> CrystalDataset:
    settings = _settings("structure", path, None, None, None, None, on_error)

    def build():
        check_on_error(on_error)
        # the path already names its folder (relative to the working directory): no base folder is added
        return _assemble(iter([_Entry(0, _stem(path), path.absolute(), [])]), [], on_error, name or path.name,
                         False, path.parent)

    return _cache.cached_build(cache_dir, settings, lambda: _cache.file_digest(path), build)


# -- the shared core: entries → validated crystals -------------------------------------------------------


def _assemble(entries: Iterable[_Entry], target_names: Sequence[str], on_error: str, name: str,
              has_split: bool, base_dir: Path) -> tuple[CrystalDataset, list[Path]]:
    """Parse and validate every entry; collect crystals, split labels, errors and files read."""
    crystals: list[Crystal] = []
    labels: list[str] = []
    errors: list[LoadError] = []
    deps: list[Path] = []
    non_numeric: dict[str, list[str]] = {}
    nt = len(target_names)
    for e in entries:
        try:
            label = normalize_split_label(e.split) if has_split else None
            y = np.array([_to_float(v, t, e.id, non_numeric) for v, t in zip(e.targets, target_names)],
                         dtype=np.float64) if nt else None
            found = _parse_all(e.structure, e.id, base_dir, deps)
            if len(found) > 1 and nt:
                raise InvalidStructureError(e.id, f"holds {len(found)} structures but one row of targets; "
                                                  "give each structure its own row")
        except InvalidStructureError as err:
            if on_error == "raise":
                raise
            errors.append(LoadError(e.index, err.structure_id, str(err)))
            continue
        except ValueError as err:  # split label or target value of this entry
            if on_error == "raise":
                raise InvalidStructureError(e.id, str(err)) from err
            errors.append(LoadError(e.index, e.id, str(InvalidStructureError(e.id, str(err)))))
            continue
        for c in found:  # one per block of a multi-block file; a bad block is reported alone
            if isinstance(c, InvalidStructureError):
                if on_error == "raise":
                    raise c
                errors.append(LoadError(e.index, c.structure_id, str(c)))
                continue
            c.targets = y
            crystals.append(c)
            if label is not None:
                labels.append(label)
    for t, bad in non_numeric.items():
        warnings.warn(f"{name}: {len(bad)} non-numeric or infinite value(s) of target {t!r} set to NaN "
                      f"(first ids: {', '.join(bad[:5])})", stacklevel=4)
    warn_duplicate_ids([c.id for c in crystals], name, stacklevel=4)
    if errors:
        shown = "; ".join(e.message for e in errors[:3])
        warnings.warn(f"{name}: skipped {len(errors)} of {len(errors) + len(crystals)} entries "
                      f"(see dataset.errors): {shown}{' ...' if len(errors) > 3 else ''}", stacklevel=4)
    ds = CrystalDataset(crystals, target_names, errors, labels if has_split else None, name)
    return ds, deps


def _to_float(v: Any, target: str, sid: str, non_numeric: dict[str, list[str]]) -> float:
    """One label → float; missing → NaN. Non-numeric text and ±inf → NaN (and noted, for one warning).

    Raises:
        ValueError: an array-valued label (it must hold exactly one number).
    """
    if v is None:
        return math.nan
    if isinstance(v, (bool, np.bool_, int, float, np.integer, np.floating)):
        x = float(v)
    elif isinstance(v, str):
        s = v.strip()
        if s.lower() in _MISSING_STRINGS:
            return math.nan
        try:
            x = float(s)
        except ValueError:
            x = math.inf  # reported below like an infinite label
    else:
        arr = np.asarray(v)
        if arr.size != 1 or arr.dtype.kind not in "biuf":
            raise ValueError(f"target {target!r} is not a single number (got {type(v).__name__} of shape "
                             f"{arr.shape})")
        x = float(arr.reshape(()))
    if math.isinf(x):  # an infinite label would break the normalisation statistics
        non_numeric.setdefault(target, []).append(sid)
        return math.nan
    return x


def parse_structure(value: Any, sid: str, base_dir: PathLike | None = None,
                    deps: list[Path] | None = None) -> Crystal:
    """One structure given in any supported form → validated :class:`Crystal` (targets not set).

    ``value``: pymatgen ``Structure``, ASE ``Atoms``, :class:`Crystal`, a structure dict (pymatgen,
    {"lattice", "cart_coords", "species"} or jarvis ``atoms``), CIF / POSCAR / JSON text, a file path
    (relative to ``base_dir``), or a zero-argument callable returning one of these. Files read are
    appended to ``deps``.

    Raises:
        InvalidStructureError: naming ``sid`` and the problem (also when ``value`` holds several structures).
    """
    found = _parse_all(value, sid, base_dir, deps)
    if len(found) > 1:
        raise InvalidStructureError(sid, f"holds {len(found)} structures, not one")
    if isinstance(found[0], InvalidStructureError):
        raise found[0]
    return found[0]


def _parse_all(value: Any, sid: str, base_dir: PathLike | None,
               deps: list[Path] | None) -> list[Crystal | InvalidStructureError]:
    """Every structure ``value`` holds (several for a multi-block CIF, ids ``<sid>#<k>``, k from 0).

    A whole-value failure raises; a bad block of a multi-block CIF is returned as its error.
    """
    try:
        if callable(value) and not isinstance(value, (str, os.PathLike)) and not hasattr(value, "sites"):
            value = value()
        if value is None or (isinstance(value, float) and math.isnan(value)) or (
                isinstance(value, str) and not value.strip()):
            raise InvalidStructureError(sid, "no structure given (empty cell)")
        if isinstance(value, os.PathLike):
            return _from_path(Path(value), sid, base_dir, deps)
        if isinstance(value, str):
            kind = text_kind(value)
            if kind == "cif":
                return _each(block_ids(parse_cif_text(value, sid), sid))
            if kind == "poscar":
                from pymatgen.io.vasp import Poscar

                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    s = Poscar.from_str(value, read_velocities=False).structure
                check_poscar_warnings(caught, sid, "the POSCAR text")
                return [to_crystal(s, id=sid)]
            if kind == "json":
                return _parse_all(_parse_dict_text(value, sid), sid, base_dir, deps)
            if kind == "path":
                return _from_path(Path(value.strip()), sid, base_dir, deps)
            raise InvalidStructureError(sid, f"text is neither CIF, POSCAR, JSON nor a file name: {value[:60]!r}")
        if isinstance(value, dict) and "lattice_mat" in value:
            from crystalframer.data.published import jarvis_atoms_to_crystal

            return [jarvis_atoms_to_crystal(value, sid)]
        return [to_crystal(value, id=sid)]
    except InvalidStructureError:
        raise
    except Exception as e:  # noqa: BLE001 - parsers raise many types; report them with the id
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InvalidStructureError(sid, f"could not parse the structure ({type(e).__name__}: {msg})") from e


def _each(parts: list[tuple[str, Any]]) -> list[Crystal | InvalidStructureError]:
    out: list[Crystal | InvalidStructureError] = []
    for part_id, obj in parts:
        try:
            out.append(to_crystal(obj, id=part_id))
        except InvalidStructureError as e:
            out.append(e)
    return out


def _from_path(p: Path, sid: str, base_dir: PathLike | None,
               deps: list[Path] | None) -> list[Crystal | InvalidStructureError]:
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    if deps is not None:
        deps.append(p)  # recorded even when missing: creating the file later must invalidate the cache
    if not p.is_file():
        raise InvalidStructureError(sid, f"structure file not found: {p}")
    return _each(read_path(p, sid))


def _parse_dict_text(text: str, sid: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:  # str(dict) of a pymatgen dict (single quotes, None): a Python literal, parsed without eval
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise InvalidStructureError(sid, f"structure text is neither JSON nor a Python literal dict ({e})") from e


_CIF_RE = re.compile(r"^\s*data_\S*", re.MULTILINE)


def text_kind(s: str) -> str:
    """Classify a text cell: "cif", "json", "poscar", "path" or "unknown"."""
    t = s.strip()
    if not t:
        return "unknown"
    if t[0] in "{":
        return "json"
    if "\n" in t:
        if _CIF_RE.search(t) or "_cell_length_a" in t or "_atom_site_" in t:
            return "cif"
        return "poscar"
    if len(t) < 4096:
        return "path"
    return "unknown"


# -- helpers ---------------------------------------------------------------------------------------------


def _settings(kind: str, path: Path | None, targets, structure_column, id_column, split_column,
              on_error: str) -> dict[str, Any]:
    return {"reader": kind, "path": None if path is None else str(Path(path).resolve()),
            "targets": None if targets is None else ([targets] if isinstance(targets, str) else list(targets)),
            "structure_column": structure_column, "id_column": id_column, "split_column": split_column,
            "on_error": on_error}


def _target_list(targets) -> list[str]:
    if targets is None:
        return []
    if isinstance(targets, str):
        return [targets]
    return [str(t) for t in targets]


def _require_columns(columns: Sequence[str], wanted: Sequence[str], what: str, name: str) -> None:
    missing = [w for w in wanted if w not in columns]
    if missing:
        raise ValueError(f"{name}: {what} column(s) {missing} not found; columns are {list(columns)}")


def _auto_split(columns: Sequence[str], split_column: str | None) -> str | None:
    if split_column is not None:
        return split_column
    return next((c for c in columns if c.strip().lower() == "split"), None)


def _ids(id_values: list | None, structures: list, index: list[int]) -> list[str]:
    if id_values is not None:
        out = []
        for k, v in enumerate(id_values):
            out.append(str(index[k]) if _blank(v) else str(v).strip())
        return out
    out = []
    for k, s in enumerate(structures):  # file-path cells name their structure; otherwise the row number
        if isinstance(s, (str, os.PathLike)) and "\n" not in str(s) and text_kind(str(s)) == "path":
            out.append(_stem(Path(str(s).strip())))
        else:
            out.append(_object_id(s, index[k]) if not isinstance(s, str) else str(index[k]))
    return out


def _detect_structure_column(df: Any, base: Path, exclude: set, name: str) -> str:
    """The column holding structures: objects/dicts first, then CIF, POSCAR, JSON text, then file paths."""
    rank = {"object": 0, "cif": 1, "poscar": 2, "json": 3, "path": 4}
    best: tuple[int, int, str] | None = None
    columns = [str(c) for c in df.columns]
    for pos, col in enumerate(columns):
        if col in exclude:
            continue
        sample = [v for v in df[col].head(50).tolist() if not _blank(v)][:5]
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


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _cell_kind(v: Any, base: Path) -> str:
    if isinstance(v, Crystal) or hasattr(v, "sites") or (hasattr(v, "get_positions") and hasattr(v, "cell")):
        return "object"
    if isinstance(v, dict):
        return "object" if _looks_like_structure_dict(v) else "other"
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


def _looks_like_structure_dict(d: dict) -> bool:
    return ("lattice" in d and ("sites" in d or "cart_coords" in d)) or "lattice_mat" in d


def _numeric(values: Sequence[str]) -> bool:
    for v in values:
        if v.strip().lower() in _MISSING_STRINGS:
            continue
        try:
            float(v)
        except ValueError:
            return False
    return True


def _stem(p: Path) -> str:
    n = p.name[:-3] if p.name.lower().endswith(".gz") else p.name
    base, dot, ext = n.rpartition(".")
    return base if dot and ("." + ext.lower()) in STRUCTURE_SUFFIXES else n


def _is_structure_file(p: Path) -> bool:
    b = _base_name(p)
    if b.startswith("id_prop"):
        return False
    return b.endswith(STRUCTURE_SUFFIXES) or b.startswith(("poscar", "contcar"))


def _read_text(path: Path) -> str:
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


class _plain_copy:
    """Context manager: the path itself, or a decompressed temporary copy of a ``.gz`` file."""

    def __init__(self, path: Path):
        self.path = path
        self.tmpdir: str | None = None

    def __enter__(self) -> Path:
        if not self.path.name.lower().endswith(".gz"):
            return self.path
        self.tmpdir = tempfile.mkdtemp(prefix="crystalframer-")
        out = Path(self.tmpdir) / self.path.name[:-3]
        with gzip.open(self.path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return out

    def __exit__(self, *exc) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
