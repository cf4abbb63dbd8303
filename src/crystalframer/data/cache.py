"""On-disk preprocessing cache of :class:`~crystalframer.data.datasets.CrystalDataset` objects.

Format: one ``<key>.npz`` file (``numpy.savez``, read back with ``allow_pickle=False``, so loading
never runs code from the file) holding flat arrays and a UTF-8 JSON header:

========================  ====================================================================
``header``                uint8 bytes of a JSON object: schema, key, target names, ids, split
                          labels, skipped entries, dependency digests, per-crystal info
``lattice``               (B, 3, 3) float64, Å
``atom_ptr``              (B + 1,) int64: atoms of crystal b are ``atom_ptr[b]:atom_ptr[b+1]``
``positions``             (N, 3) float64 Cartesian, Å
``site_ptr``              (N + 1,) int64: species entries of site i are ``site_ptr[i]:site_ptr[i+1]``
``species_index``         (M,) int16, Z − 1 of each species entry
``species_occupancy``     (M,) float64 occupancy
``targets``               (B, n_targets) float64, NaN = missing
========================  ====================================================================

The header carries ``content_sha256``, the SHA-256 of the rest of the header and of every array; a file
edited after it was written (even well-formed, at the right key) fails this check and is rebuilt.

The key is the SHA-256 of the cache schema version, the versions of the parsers (pymatgen, ASE, this
library), the validation constants, the reader settings and the content of the input (file bytes or a
canonical encoding of in-memory objects). Files read indirectly (structure files named in a CSV or
``id_prop.csv``) are listed in the header with their SHA-256 and re-checked on every hit, so editing any
input, changing a setting or upgrading a parser misses the cache: a stale cache is never used. Files are
written to a temporary name and moved into place with ``os.replace`` (atomic), so a crashed or concurrent
writer never leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from crystalframer.atomic import atomic_open
from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.structures import MIN_DISTANCE, N_ELEMENTS, Crystal

#: Bump when the file layout or anything that changes the parsed crystals changes.
CACHE_SCHEMA_VERSION = 2  # 2: content checksum in the header


class Unhashable(TypeError):
    """An in-memory input that :func:`content_digest` cannot encode canonically."""


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _dep_digest(path: str) -> str:
    """Digest of a file read indirectly; "absent" for a missing one (creating it must miss the cache)."""
    return file_digest(path) if os.path.isfile(path) else "absent"


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("pymatgen.core", "ase", "crystalframer"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            out[mod] = str(getattr(m, "__version__", "?"))
        except ImportError:
            out[mod] = "absent"
    return out


def cache_key(settings: dict[str, Any], content: str) -> str:
    """SHA-256 key of the schema, parser versions, validation constants, reader settings and input digest."""
    doc = {"schema": CACHE_SCHEMA_VERSION, "versions": _versions(),
           "validation": {"min_distance": MIN_DISTANCE, "n_elements": N_ELEMENTS},
           "settings": settings, "content": content}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(obj: Any) -> str:
    """SHA-256 of a canonical encoding of an in-memory input (DataFrame, list of structures, dicts, ...).

    Supported: None, bool, int, float, str, bytes, lists/tuples, dicts, numpy arrays and scalars, pandas
    DataFrames and Series, pymatgen objects (through ``as_dict()``), ASE ``Atoms`` and :class:`Crystal`.

    Raises:
        Unhashable: some object has no canonical encoding (the caller then does not cache).
    """
    h = hashlib.sha256()
    _feed(h, obj, 0)
    return h.hexdigest()


def _feed(h, obj: Any, depth: int) -> None:
    if depth > 64:
        raise Unhashable("nesting too deep to hash")
    t = type(obj)
    if obj is None or isinstance(obj, (bool, np.bool_)):
        h.update(f"<{obj!r}>".encode())
    elif isinstance(obj, (int, np.integer)):
        h.update(b"i" + str(int(obj)).encode() + b";")
    elif isinstance(obj, (float, np.floating)):
        h.update(b"f" + float(obj).hex().encode() + b";")
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(b) + b)
    elif isinstance(obj, bytes):
        h.update(b"b%d:" % len(obj) + obj)
    elif isinstance(obj, os.PathLike):
        _feed(h, "path:" + os.fspath(obj), depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype == object:
            h.update(b"O" + str(obj.shape).encode())
            for v in obj.ravel():
                _feed(h, v, depth + 1)
        else:
            a = np.ascontiguousarray(obj)
            h.update(f"a{a.dtype.str}{a.shape}".encode() + a.tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(b"l%d[" % len(obj))
        for v in obj:
            _feed(h, v, depth + 1)
        h.update(b"]")
    elif isinstance(obj, dict):
        h.update(b"d%d{" % len(obj))
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k, depth + 1)
            _feed(h, obj[k], depth + 1)
        h.update(b"}")
    elif isinstance(obj, Crystal):
        _feed(h, ["Crystal", obj.id, obj.lattice, obj.positions, obj.species, obj.targets], depth + 1)
    elif t.__name__ == "DataFrame" and hasattr(obj, "columns"):
        h.update(b"DF")
        _feed(h, [str(c) for c in obj.columns], depth + 1)
        _feed(h, list(obj.index), depth + 1)
        for c in obj.columns:
            col = obj[c]
            vals = col.to_numpy()
            _feed(h, vals, depth + 1)
    elif t.__name__ == "Series" and hasattr(obj, "index"):
        _feed(h, ["Series", list(obj.index), obj.to_numpy()], depth + 1)
    elif hasattr(obj, "get_positions") and hasattr(obj, "cell"):  # ASE Atoms
        _feed(h, ["Atoms", obj.get_atomic_numbers(), obj.get_positions(), np.asarray(obj.cell[:]),
                  np.asarray(obj.pbc), dict(obj.info)], depth + 1)
    elif hasattr(obj, "as_dict"):  # pymatgen (MSONable) objects
        _feed(h, [t.__module__ + "." + t.__name__, obj.as_dict()], depth + 1)
    else:
        raise Unhashable(f"cannot hash an object of type {t.__module__}.{t.__name__} for the cache key")


# -- writing and reading -------------------------------------------------------------------------------

_ARRAYS = ("lattice", "atom_ptr", "positions", "site_ptr", "species_index", "species_occupancy", "targets")


def _content_sha256(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the header (without its checksum) and of the arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    doc = json.loads(json.dumps({k: v for k, v in header.items() if k != "content_sha256"}))  # as stored
    h.update(json.dumps(doc, sort_keys=True).encode())
    for name in _ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode() + a.tobytes())
    return h.hexdigest()


def save_dataset(path: str | os.PathLike, dataset: CrystalDataset, key: str,
                 dependencies: dict[str, str] | None = None) -> Path:
    """Write ``dataset`` to ``path`` (``.npz``) atomically. ``dependencies``: file path → SHA-256."""
    path = Path(path)
    crystals = dataset.crystals
    B = len(crystals)
    nt = len(dataset.target_names)
    counts = np.array([c.num_atoms for c in crystals], dtype=np.int64)
    atom_ptr = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(counts, out=atom_ptr[1:])
    lattice = np.stack([c.lattice for c in crystals]) if B else np.zeros((0, 3, 3))
    positions = np.concatenate([c.positions for c in crystals]) if B else np.zeros((0, 3))
    species = np.concatenate([c.species for c in crystals]) if B else np.zeros((0, N_ELEMENTS))
    site, z = np.nonzero(species)  # row-major: entries of a site are contiguous and ordered by Z
    site_ptr = np.zeros(len(species) + 1, dtype=np.int64)
    np.cumsum(np.bincount(site, minlength=len(species)), out=site_ptr[1:])
    targets = (np.stack([np.asarray(c.targets, np.float64) for c in crystals]) if B and nt
               else np.zeros((B, nt)))
    infos = [_jsonable(c.info) for c in crystals]
    header = {
        "schema": CACHE_SCHEMA_VERSION, "key": key, "name": dataset.name,
        "target_names": list(dataset.target_names), "has_targets": nt > 0,
        "ids": [c.id for c in crystals], "split_labels": dataset.split_labels,
        "errors": [list(e) for e in dataset.errors], "dependencies": dependencies or {},
        "infos": infos if any(infos) else None,
    }
    arrays = dict(
        lattice=np.asarray(lattice, np.float64), atom_ptr=atom_ptr, positions=np.asarray(positions, np.float64),
        site_ptr=site_ptr, species_index=z.astype(np.int16), species_occupancy=species[site, z].astype(np.float64),
        targets=targets,
    )
    header["content_sha256"] = _content_sha256(header, arrays)
    write_npz(path, header, arrays)
    return path



def write_npz(path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` plus a JSON ``header`` (stored as bytes, so no pickle is needed to read it) atomically."""
    arrays = dict(arrays, header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8))
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def npz_header(z: Any) -> dict[str, Any]:
    """The JSON header of an open file written by :func:`write_npz`."""
    return json.loads(bytes(z["header"]).decode("utf-8"))


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of a crystal's info dict (the rest is not cached)."""
    out = {}
    for k, v in (info or {}).items():
        try:
            json.dumps(v, allow_nan=True)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


def load_cached(path: str | os.PathLike, key: str) -> CrystalDataset | None:
    """Read a cache file; None if it is absent, unreadable, for another key, or a dependency changed."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = npz_header(z)
            if header.get("schema") != CACHE_SCHEMA_VERSION or header.get("key") != key:
                return None
            for dep, digest in header.get("dependencies", {}).items():
                if _dep_digest(dep) != digest:
                    return None
            a = {k: z[k] for k in _ARRAYS}
        if header.get("content_sha256") != _content_sha256(header, a):
            warnings.warn(f"ignoring cache file {path}: its content does not match its checksum (edited or "
                          "corrupted); rebuilding it", stacklevel=3)
            return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as e:
        warnings.warn(f"ignoring unreadable cache file {path}: {type(e).__name__}: {e}", stacklevel=3)
        return None
    n_sites = len(a["positions"])
    species = np.zeros((n_sites, N_ELEMENTS), dtype=np.float64)
    site_of_entry = np.repeat(np.arange(n_sites), np.diff(a["site_ptr"]))
    species[site_of_entry, a["species_index"].astype(np.int64)] = a["species_occupancy"]
    ptr = a["atom_ptr"]
    has_t = header["has_targets"]
    infos = header.get("infos") or [{}] * len(header["ids"])
    crystals = []
    for b, sid in enumerate(header["ids"]):
        s, e = int(ptr[b]), int(ptr[b + 1])
        crystals.append(Crystal(lattice=a["lattice"][b].copy(), positions=a["positions"][s:e].copy(),
                                species=species[s:e].copy(), id=sid,
                                targets=a["targets"][b].copy() if has_t else None, info=dict(infos[b])))
    ds = CrystalDataset(crystals, header["target_names"], header["errors"], header["split_labels"], header["name"])
    ds.from_cache = True
    ds.cache_path = path
    return ds


def cached_build(cache_dir: str | os.PathLike | None, settings: dict[str, Any], content: Callable[[], str],
                 build: Callable[[], tuple[CrystalDataset, Iterable[str | os.PathLike]]]) -> CrystalDataset:
    """Return the cached data set for (settings, content) or build, save and return it.

    Args:
        cache_dir: folder of cache files; None disables caching (``build`` runs).
        settings: reader settings (JSON-able), part of the key.
        content: returns the digest of the input; may raise :class:`Unhashable` (then no caching).
        build: returns (dataset, files read indirectly, whose digests are recorded and re-checked).
    """
    if cache_dir is None:
        return build()[0]
    try:
        key = cache_key(settings, content())
    except Unhashable as e:
        warnings.warn(f"not caching: {e}", stacklevel=3)
        return build()[0]
    path = Path(cache_dir) / f"{key}.npz"
    hit = load_cached(path, key)
    if hit is not None:
        return hit
    ds, deps = build()
    try:
        if cache_key(settings, content()) != key:  # the input changed while it was read: do not cache
            return ds
    except Unhashable:
        return ds
    dep_digests = {p: _dep_digest(p) for p in dict.fromkeys(os.path.abspath(os.fspath(d)) for d in deps)}
    try:
        save_dataset(path, ds, key, dep_digests)
    except OSError as e:  # a read-only or full cache folder must not stop training
        warnings.warn(f"could not write cache file {path}: {e}", stacklevel=3)
        return ds
    ds.cache_path = path
    return ds


def clear_cache(cache_dir: str | os.PathLike) -> int:
    """Delete every cache file (``*.npz`` written by this module) in ``cache_dir``; returns how many."""
    n = 0
    for p in Path(cache_dir).glob("*.npz"):
        if len(p.stem) == 64 and all(ch in "0123456789abcdef" for ch in p.stem):
            p.unlink()
            n += 1
    return n
