"""In-memory lists of structures (with targets given as {name: values}) and single structure files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from crystalframer.data import cache as _cache
from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.io.entries import Entry, PathLike, assemble, file_stem, object_id, reader_settings
from crystalframer.data.structures import check_on_error


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
    settings = reader_settings("list", None, list(tmap), None, None, None, on_error)
    settings["base_dir"] = str(Path.cwd())

    def build():
        check_on_error(on_error)
        tn = list(tmap)
        entries = (Entry(k, str(ids[k]) if ids is not None else object_id(obj, k), obj,
                          [tmap[t][k] for t in tn], None if split is None else split[k])
                   for k, obj in enumerate(items))
        return assemble(entries, tn, on_error, name or "structures", split is not None, Path.cwd())

    return _cache.cached_build(cache_dir, settings,
                               lambda: _cache.content_digest([items, tmap, ids, split]), build)


def read_single_file(path: Path, on_error: str, cache_dir, name: str | None) -> CrystalDataset:
    settings = reader_settings("structure", path, None, None, None, None, on_error)

    def build():
        check_on_error(on_error)
        # the path already names its folder (relative to the working directory): no base folder is added
        return assemble(iter([Entry(0, file_stem(path), path.absolute(), [])]), [], on_error, name or path.name,
                         False, path.parent)

    return _cache.cached_build(cache_dir, settings, lambda: _cache.file_digest(path), build)
