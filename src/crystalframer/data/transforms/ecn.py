"""The ECN data transform: structures → supercell graphs (memoised, optionally cached on disk) → :class:`ECNBatch`.

Graph building (spglib + Voronoi) costs about 0.05–0.15 s per small structure, so :class:`ECNGraphTransform`
keeps the graphs it built in memory (least recently used dropped first) and, given a folder, on disk
(:class:`GraphCache`: one ``.npz`` per structure, JSON header inside, atomic write, no pickle). Both are keyed
by :func:`graph_key`, a hash of the structure arrays, the Hubbard flag, the settings and :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crystalframer.data.batch import ECNBatch
from crystalframer.data.cache import npz_header, write_npz
from crystalframer.data.structures import Crystal, to_crystal
from crystalframer.data.transforms.ecn_graph import (
    ECNGraph,
    ECNGraphSettings,
    build_ecn_graph,
    collate_ecn,
    hubbard_flag,
)

#: Bump when the stored graph layout or a building rule changes (ecn_graph, ecn_neighbours, geometry.cells or
#: geometry.symmetry): it invalidates the caches.
SCHEMA_VERSION = 1


def graph_key(crystal: Crystal, settings: ECNGraphSettings) -> str:
    """sha256 of the structure arrays, the Hubbard flag, the settings and the schema version."""
    h = hashlib.sha256()
    header = json.dumps({"schema": SCHEMA_VERSION, "settings": settings.to_dict(),
                         "hubbard": hubbard_flag(crystal)}, sort_keys=True)
    h.update(header.encode())
    for arr in (crystal.lattice, crystal.positions, crystal.species):
        a = np.ascontiguousarray(np.asarray(arr, dtype="<f8"))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


_ARRAYS = ("lattice", "positions", "species", "src", "dst", "dist")


class GraphCache:
    """Graphs on disk: ``<dir>/<key[:2]>/<key>.npz``, arrays plus a JSON header (``header`` uint8 array).

    Files are written to a temporary name in the same folder and renamed (atomic on POSIX), so readers
    never see a partial file; they are read with ``allow_pickle=False``. A file whose header does not
    match (schema version, key) or that cannot be read is treated as a miss and rewritten.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str) -> ECNGraph | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                header = npz_header(z)
                if header.get("schema") != SCHEMA_VERSION or header.get("key") != key:
                    return None
                arrays = {name: np.array(z[name]) for name in _ARRAYS}
        except Exception:  # noqa: BLE001 - a damaged cache entry is a miss, never an error
            return None
        info = dict(header.get("info", {}))
        info["from_cache"] = True
        return ECNGraph(id=header.get("id", "structure"), hubbard=float(header["hubbard"]),
                        connected=bool(header["connected"]), info=info, **arrays)

    def put(self, key: str, graph: ECNGraph) -> Path:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        header = {"schema": SCHEMA_VERSION, "key": key, "id": graph.id, "hubbard": graph.hubbard,
                  "connected": bool(graph.connected), "info": _jsonable(graph.info)}
        arrays = {name: getattr(graph, name) for name in _ARRAYS}
        write_npz(p, header, arrays)
        return p


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if k == "from_cache":
            continue
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v
    return out


class ECNGraphTransform:
    """Crystals → ECN graphs → :class:`ECNBatch`, with an in-memory memo and an optional disk cache.

    Args:
        settings: :class:`ECNGraphSettings` or a dict of its fields (default: ECN's IsayevNN rule).
        cache_dir: folder of the :class:`GraphCache`, or None.
        memo_size: graphs kept in memory (least recently used dropped first); 0 disables the memo.
        self_loops: add a distance-0 self-loop per node when collating (the paper's code).

    A pickled copy (a ``DataLoader`` worker, ``copy.deepcopy`` of a model holding the transform) starts with
    an empty memo: the memo is a cache and may hold tens of thousands of graphs.
    """

    def __init__(self, settings: ECNGraphSettings | dict | None = None, cache_dir: str | os.PathLike | None = None,
                 memo_size: int = 50000, self_loops: bool = True):
        self.settings = settings if isinstance(settings, ECNGraphSettings) else ECNGraphSettings.from_dict(settings)
        self.cache = GraphCache(cache_dir) if cache_dir else None
        self.memo_size = int(memo_size)
        self.self_loops = bool(self_loops)
        self._memo: OrderedDict[str, ECNGraph] = OrderedDict()

    def graph(self, crystal: Crystal | Any) -> ECNGraph:
        """The supercell graph of one structure (anything :func:`to_crystal` reads), from the memo, the disk
        cache or built; it carries the structure's id and targets."""
        if not isinstance(crystal, Crystal):
            crystal = to_crystal(crystal)
        key = graph_key(crystal, self.settings)
        g = self._memo.get(key)
        if g is not None:
            self._memo.move_to_end(key)
        else:
            g = self.cache.get(key) if self.cache is not None else None
            if g is None:
                g = build_ecn_graph(crystal, self.settings)
                if self.cache is not None:
                    self.cache.put(key, g)
            if self.memo_size > 0:
                self._memo[key] = g
                while len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
        return replace(g, id=crystal.id, targets=crystal.targets)

    def __call__(self, items: Sequence[Crystal | ECNGraph | Any]) -> ECNBatch:
        """Graphs of ``items`` (prebuilt :class:`ECNGraph` objects are used as they are) batched in float64."""
        graphs = [c if isinstance(c, ECNGraph) else self.graph(c) for c in items]
        return collate_ecn(graphs, dtype=torch.float64, self_loops=self.self_loops)

    def clear_memo(self) -> None:
        self._memo.clear()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_memo"] = OrderedDict()
        return state
