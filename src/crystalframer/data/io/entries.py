"""What every reader shares: source entries → validated crystals, and the helpers of the readers.

A reader turns its source into :class:`Entry` records (position in the source, id, structure in any form,
raw target values, split label) and hands them to :func:`assemble`, which parses and validates each one
(:func:`parse_structure`), converts the labels (a missing or non-numeric value becomes NaN) and collects the
entries that fail in ``dataset.errors`` (``on_error="skip"``) or raises at the first (``on_error="raise"``).
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
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from crystalframer.data.datasets import CrystalDataset, LoadError
from crystalframer.data.io.jarvis import jarvis_atoms_to_crystal
from crystalframer.data.splits import normalize_split_label
from crystalframer.data.structures import (
    Crystal,
    InvalidStructureError,
    block_ids,
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


class Entry(NamedTuple):
    index: int  # position in the source (row, line, frame)
    id: str
    structure: Any  # object, text, path, or a zero-argument callable returning one of these
    targets: Sequence[Any]
    split: Any = None


def assemble(entries: Iterable[Entry], target_names: Sequence[str], on_error: str, name: str,
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
            y = np.array([to_float(v, t, e.id, non_numeric) for v, t in zip(e.targets, target_names)],
                         dtype=np.float64) if nt else None
            found = parse_all(e.structure, e.id, base_dir, deps)
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


def to_float(v: Any, target: str, sid: str, non_numeric: dict[str, list[str]]) -> float:
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
    found = parse_all(value, sid, base_dir, deps)
    if len(found) > 1:
        raise InvalidStructureError(sid, f"holds {len(found)} structures, not one")
    if isinstance(found[0], InvalidStructureError):
        raise found[0]
    return found[0]


def parse_all(value: Any, sid: str, base_dir: PathLike | None,
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
                return parse_all(_parse_dict_text(value, sid), sid, base_dir, deps)
            if kind == "path":
                return _from_path(Path(value.strip()), sid, base_dir, deps)
            raise InvalidStructureError(sid, f"text is neither CIF, POSCAR, JSON nor a file name: {value[:60]!r}")
        if isinstance(value, dict) and "lattice_mat" in value:
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


def reader_settings(kind: str, path: Path | None, targets, structure_column, id_column, split_column,
              on_error: str) -> dict[str, Any]:
    return {"reader": kind, "path": None if path is None else str(Path(path).resolve()),
            "targets": None if targets is None else ([targets] if isinstance(targets, str) else list(targets)),
            "structure_column": structure_column, "id_column": id_column, "split_column": split_column,
            "on_error": on_error}


def target_list(targets) -> list[str]:
    if targets is None:
        return []
    if isinstance(targets, str):
        return [targets]
    return [str(t) for t in targets]


def require_columns(columns: Sequence[str], wanted: Sequence[str], what: str, name: str) -> None:
    missing = [w for w in wanted if w not in columns]
    if missing:
        raise ValueError(f"{name}: {what} column(s) {missing} not found; columns are {list(columns)}")


def auto_split_column(columns: Sequence[str], split_column: str | None) -> str | None:
    if split_column is not None:
        return split_column
    return next((c for c in columns if c.strip().lower() == "split"), None)


def entry_ids(id_values: list | None, structures: list, index: list[int]) -> list[str]:
    if id_values is not None:
        out = []
        for k, v in enumerate(id_values):
            out.append(str(index[k]) if is_blank(v) else str(v).strip())
        return out
    out = []
    for k, s in enumerate(structures):  # file-path cells name their structure; otherwise the row number
        if isinstance(s, (str, os.PathLike)) and "\n" not in str(s) and text_kind(str(s)) == "path":
            out.append(file_stem(Path(str(s).strip())))
        else:
            out.append(object_id(s, index[k]) if not isinstance(s, str) else str(index[k]))
    return out


def object_id(obj: Any, k: int) -> str:
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
        return file_stem(Path(obj))
    return str(k)


def is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def looks_like_structure_dict(d: dict) -> bool:
    return ("lattice" in d and ("sites" in d or "cart_coords" in d)) or "lattice_mat" in d


def all_numeric(values: Sequence[str]) -> bool:
    for v in values:
        if v.strip().lower() in _MISSING_STRINGS:
            continue
        try:
            float(v)
        except ValueError:
            return False
    return True


def file_stem(p: Path) -> str:
    n = p.name[:-3] if p.name.lower().endswith(".gz") else p.name
    base, dot, ext = n.rpartition(".")
    return base if dot and ("." + ext.lower()) in STRUCTURE_SUFFIXES else n


def is_structure_file(p: Path) -> bool:
    b = base_name(p)
    if b.startswith("id_prop"):
        return False
    return b.endswith(STRUCTURE_SUFFIXES) or b.startswith(("poscar", "contcar"))


def base_name(path: Path) -> str:
    """Lower-case file name without a trailing ``.gz``."""
    n = path.name.lower()
    return n[:-3] if n.endswith(".gz") else n


def read_text(path: Path) -> str:
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


class plain_copy:
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
