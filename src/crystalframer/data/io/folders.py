"""A folder of structure files with a cgcnn-style ``id_prop.csv`` (Xie & Grossman, PRL 120, 145301 (2018))."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from crystalframer.data import cache as _cache
from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.io.entries import (
    Entry,
    PathLike,
    all_numeric,
    assemble,
    auto_split_column,
    file_stem,
    is_structure_file,
    reader_settings,
    require_columns,
    target_list,
)
from crystalframer.data.structures import InvalidStructureError, check_on_error


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

    settings = reader_settings("folder", path, targets, None, None, split_column, on_error)
    return _cache.cached_build(cache_dir, settings, content,
                               lambda: _folder_build(path, prop, targets, split_column, on_error,
                                                     name or path.name))


def _folder_build(path: Path, prop: Path | None, targets, split_column, on_error: str,
                  name: str) -> tuple[CrystalDataset, list[Path]]:
    check_on_error(on_error)
    path = path.absolute()  # listed files then name their folder whatever the working directory
    files = sorted(p for p in path.iterdir() if p.is_file() and is_structure_file(p))
    if prop is None:
        if targets:
            raise ValueError(f"{path}: no id_prop.csv, so there are no targets to read ({targets})")
        entries = (Entry(k, file_stem(p), p, []) for k, p in enumerate(files))
        return assemble(entries, [], on_error, name, False, path)
    import pandas as pd

    raw = pd.read_csv(prop, header=None, dtype=str, keep_default_na=False, skipinitialspace=True)
    if raw.shape[1] < 2:
        raise ValueError(f"{prop}: expected an id column and at least one target column, "
                         f"got {raw.shape[1]} column")
    # an exact file name may have any extension; names without one are matched among structure files
    by_name = {p.name: p for p in path.iterdir() if p.is_file() and p != prop}
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        for key in {file_stem(p), p.name[:-3] if p.name.endswith(".gz") else p.name}:
            by_stem.setdefault(key, []).append(p)
    first = [str(v).strip() for v in raw.iloc[0]]
    header = not all_numeric(first[1:]) and first[0] not in by_name and first[0] not in by_stem
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
    tnames = target_list(targets)
    if header:
        split_column = auto_split_column(names[1:], split_column)
        require_columns(names[1:], tnames + ([split_column] if split_column else []), "target/split", str(prop))
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
    entries = (Entry(row0 + k, str(r[0]).strip(), locate(str(r[0]).strip(), str(r[0]).strip()),
                      [r[c] for c in cols], r[scol] if scol is not None else None)
               for k, r in enumerate(values))
    ds, deps = assemble(entries, tnames, on_error, name, scol is not None, path)
    return ds, deps + [prop]
