"""JSON structures plus targets: JSON lists, JSON lines, pandas "split" tables (the matminer format)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from crystalframer.data import cache as _cache
from crystalframer.data.datasets import CrystalDataset, LoadError
from crystalframer.data.io.ase_files import build_from_ase_db
from crystalframer.data.io.entries import (
    ID_CANDIDATES,
    STRUCTURE_NAME_HINTS,
    Entry,
    PathLike,
    assemble,
    looks_like_structure_dict,
    read_text,
    reader_settings,
    target_list,
)
from crystalframer.data.io.tables import build_from_dataframe
from crystalframer.data.structures import InvalidStructureError, check_on_error


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
    settings = reader_settings("json", path, targets, structure_column, id_column, split_column, on_error)
    settings["lines"] = lines
    return _cache.cached_build(
        cache_dir, settings, lambda: _cache.file_digest(path),
        lambda: _json_build(path, targets, structure_column, id_column, split_column, on_error,
                            name or path.name, lines))


def _json_build(path: Path, targets, structure_column, id_column, split_column, on_error, name, lines):
    check_on_error(on_error)
    text = read_text(path)
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
        return build_from_dataframe(df, targets, structure_column, id_column, split_column, on_error, path.parent,
                                name)
    if isinstance(doc, dict) and "ids" in doc and "nextid" in doc:  # an ASE JSON database
        return build_from_ase_db(path, targets, id_column, split_column, on_error, name)
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a JSON list, JSON lines or a pandas split table")
    items = doc if lines else list(enumerate(doc))
    tnames = target_list(targets)
    entries = [_json_entry(k, item, tnames, structure_column, id_column, split_column or "split")
               for k, item in items]
    has_split = split_column is not None or any(isinstance(item, dict) and "split" in item for _, item in items)
    ds, deps = assemble(iter(entries), tnames, on_error, name, has_split, path.parent)
    if bad_lines:
        ds.errors = sorted(bad_lines + ds.errors, key=lambda e: e.index)
    return ds, deps


def _json_entry(k: int, item: Any, tnames: list[str], structure_column, id_column, split_column) -> Entry:
    if not isinstance(item, dict):
        return Entry(k, str(k), item, [None] * len(tnames))
    props = {}
    if structure_column is not None:
        s = item.get(structure_column)
    elif looks_like_structure_dict(item):
        s = item
        props = item.get("properties") or {}
    else:
        key = next((c for c in STRUCTURE_NAME_HINTS if c in item), None)
        if key is None:
            key = next((c for c, v in item.items() if isinstance(v, dict) and looks_like_structure_dict(v)), None)
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
    return Entry(k, sid, s, [get(t) for t in tnames], get(split_column))
