"""ASE sources: databases (``.db``, ASE JSON db) and multi-frame files such as extxyz."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from crystalframer.data import cache as _cache
from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.io.entries import (
    ID_CANDIDATES,
    Entry,
    PathLike,
    assemble,
    base_name,
    plain_copy,
    reader_settings,
    target_list,
)
from crystalframer.data.structures import check_on_error


def read_ase_db(path: PathLike, targets: Sequence[str] | str | None = None, id_column: str | None = None,
                split_column: str | None = None, on_error: str = "skip", cache_dir: PathLike | None = None,
                name: str | None = None) -> CrystalDataset:
    """Read an ASE database (``.db`` SQLite or ASE JSON db; gzip accepted).

    Targets and the split label come from each row's key-value pairs, columns (``energy``, ...) or
    ``data``. Ids: ``id_column`` or the first of :data:`ID_CANDIDATES` among the key-value pairs, else
    the row id.
    """
    path = Path(path)
    settings = reader_settings("ase_db", path, targets, None, id_column, split_column, on_error)
    return _cache.cached_build(cache_dir, settings, lambda: _cache.file_digest(path),
                               lambda: build_from_ase_db(path, targets, id_column, split_column, on_error,
                                                     name or path.name))


def build_from_ase_db(path: Path, targets, id_column, split_column, on_error, name):
    from ase.db import connect

    check_on_error(on_error)
    tnames = target_list(targets)
    with plain_copy(path) as plain:
        kind = "json" if base_name(path).endswith(".json") else "db"
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
        entries.append(Entry(k, sid, row.toatoms, [_row_value(row, t) for t in tnames], split))
    has_split = split_column is not None or any("split" in r.key_value_pairs for r in rows)
    return assemble(entries, tnames, on_error, name, has_split, path.parent)


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
    settings = reader_settings("ase", path, targets, None, id_column, split_column, on_error)
    settings["ase_format"] = ase_format
    return _cache.cached_build(cache_dir, settings, lambda: _cache.file_digest(path),
                               lambda: _ase_file_build(path, targets, id_column, split_column, on_error,
                                                       name or path.name, ase_format))


def _ase_file_build(path, targets, id_column, split_column, on_error, name, ase_format):
    from ase.io import read

    check_on_error(on_error)
    tnames = target_list(targets)
    fmt = ase_format
    if fmt is None and base_name(path).endswith((".xyz", ".extxyz")):
        fmt = "extxyz"
    with plain_copy(path) as plain:
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
        entries.append(Entry(k, sid, atoms, tv, split))
    return assemble(entries, tnames, on_error, name, has_split, path.parent)


def _atoms_value(atoms: Any, key: str) -> Any:
    if key in atoms.info:
        return atoms.info[key]
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    return results.get(key)


#: ``read_extxyz`` is :func:`read_ase_file` (extxyz is its default for ``.xyz``/``.extxyz``).
read_extxyz = read_ase_file
