"""The published benchmark data sets of CrystalFramer (Ito et al., ICLR 2025), read through jarvis-tools.

Each *target set* (the official ``data/<target_set>`` name) is one jarvis-tools list
(``jarvis.db.figshare.data(name)``) with some label keys renamed:

================================  ===============  ====================================  ==================
target set                        jarvis name      source key → stored target name       train/val/test
================================  ===============  ====================================  ==================
jarvis__dft_3d_2021               dft_3d_2021      formation_energy_peratom →            44578/5572/5572
                                                   formation_energy,
                                                   optb88vdw_total_energy → total_energy,
                                                   optb88vdw_bandgap → opt_bandgap
jarvis__dft_3d_2021-mbj_bandgap   dft_3d_2021      mbj_bandgap → mbj_bandgap             14537/1817/1817
jarvis__dft_3d_2021-ehull         dft_3d_2021      ehull → ehull                         44296/5537/5537
jarvis__megnet                    megnet           e_form → e_form, "gap pbe" → bandgap  60000/5000/4239
jarvis__megnet-bulk_modulus       (Matformer)      "bulk modulus" → bulk_modulus         4664/393/393
jarvis__megnet-shear_modulus      (Matformer)      "shear modulus" → shear_modulus       4664/392/393
jarvis__oqmd_3d                   oqmd_3d_no_cfid  _oqmd_delta_e → delta_e,              654108/81763/81763
                                                   _oqmd_stability → stability
jarvis__oqmd_3d-bandgap           oqmd_3d_no_cfid  _oqmd_band_gap → bandgap              653388/81673/81673
================================  ===============  ====================================  ==================

Units: eV/atom (formation energies, total energy, ehull, delta_e, stability), eV (band gaps),
log10(GPa) (bulk and shear moduli).

Ids: ``jid`` (JARVIS), ``id`` (MEGNet), ``_oqmd_entry_id`` (OQMD). Filtering: an entry is kept only if every
label of its target set is a finite float or an int (NaN, inf, "na", None and missing keys drop it); nothing
else is filtered. For OQMD the element strings are stripped first and entries that pymatgen could not turn
into a structure are dropped too. The bulk/shear sets are the six Matformer pickles (already split, not
filtered).

Splits: the official index files ``data/splits/<target_set>/{train,val,test}.pkl`` (1-D int64 arrays of
indices into the unfiltered list; read with a restricted unpickler that only rebuilds numpy arrays) when
all three are given, otherwise the official rule of :func:`crystalframer.data.splits.official_split_indices`.

Structures that fail validation (:func:`~crystalframer.data.structures.to_crystal`) are reported in
``dataset.errors`` (index = position in the unfiltered list) and removed *after* the split is made, so
the split of every other entry is exactly the official one.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from crystalframer.data import cache as _cache
from crystalframer.data.datasets import CrystalDataset, LoadError
from crystalframer.data.io.jarvis import jarvis_atoms_to_crystal
from crystalframer.data.splits import SPLITS, normalize_split_label, official_split_indices
from crystalframer.data.structures import InvalidStructureError

PathLike = str | os.PathLike


@dataclass(frozen=True)
class PublishedSet:
    """One official target set.

    Attributes:
        target_set: official name (folder under ``data/``).
        source: jarvis-tools data set name, or "matformer" for the bulk/shear pickles.
        id_key: key of the structure id in the source entries.
        labels: (source key, stored target name) pairs, in target order.
        sizes: official (train, val, test) sizes, checked after splitting (a warning if they differ).
        fixed_sizes: split sizes used by the rule instead of 80/10/10 fractions (MEGNet).
        strip_elements: strip element strings and drop entries pymatgen could not convert (OQMD).
        units: unit of each target.
    """

    target_set: str
    source: str
    id_key: str
    labels: tuple[tuple[str, str], ...]
    sizes: tuple[int, int, int]
    fixed_sizes: tuple[int, int, int] | None = None
    strip_elements: bool = False
    units: tuple[str, ...] = ()

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(dst for _, dst in self.labels)


PUBLISHED_SETS: dict[str, PublishedSet] = {s.target_set: s for s in [
    PublishedSet("jarvis__dft_3d_2021", "dft_3d_2021", "jid",
                 (("formation_energy_peratom", "formation_energy"), ("optb88vdw_total_energy", "total_energy"),
                  ("optb88vdw_bandgap", "opt_bandgap")), (44578, 5572, 5572), units=("eV/atom", "eV/atom", "eV")),
    PublishedSet("jarvis__dft_3d_2021-mbj_bandgap", "dft_3d_2021", "jid", (("mbj_bandgap", "mbj_bandgap"),),
                 (14537, 1817, 1817), units=("eV",)),
    PublishedSet("jarvis__dft_3d_2021-ehull", "dft_3d_2021", "jid", (("ehull", "ehull"),), (44296, 5537, 5537),
                 units=("eV/atom",)),
    PublishedSet("jarvis__megnet", "megnet", "id", (("e_form", "e_form"), ("gap pbe", "bandgap")),
                 (60000, 5000, 4239), fixed_sizes=(60000, 5000, 4239), units=("eV/atom", "eV")),
    PublishedSet("jarvis__megnet-bulk_modulus", "matformer", "id", (("bulk modulus", "bulk_modulus"),),
                 (4664, 393, 393), units=("log10(GPa)",)),
    PublishedSet("jarvis__megnet-shear_modulus", "matformer", "id", (("shear modulus", "shear_modulus"),),
                 (4664, 392, 393), units=("log10(GPa)",)),
    PublishedSet("jarvis__oqmd_3d", "oqmd_3d_no_cfid", "_oqmd_entry_id",
                 (("_oqmd_delta_e", "delta_e"), ("_oqmd_stability", "stability")), (654108, 81763, 81763),
                 strip_elements=True, units=("eV/atom", "eV/atom")),
    PublishedSet("jarvis__oqmd_3d-bandgap", "oqmd_3d_no_cfid", "_oqmd_entry_id", (("_oqmd_band_gap", "bandgap"),),
                 (653388, 81673, 81673), strip_elements=True, units=("eV",)),
]}

#: Matformer's MEGNet bulk/shear modulus pickles on figshare (train, val, test), as the official script.
MATFORMER_URLS = {
    "bulk": ("https://figshare.com/ndownloader/files/40258705", "https://figshare.com/ndownloader/files/40258675",
             "https://figshare.com/ndownloader/files/40258666"),
    "shear": ("https://figshare.com/ndownloader/files/40258681", "https://figshare.com/ndownloader/files/40258684",
              "https://figshare.com/ndownloader/files/40258678"),
}


# -- split rule and split files ---------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and scalars and plain containers, and nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol 2 stores array bytes as latin-1 text
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module.startswith("numpy.core"):  # numpy >= 2 moved numpy.core to numpy._core
            import importlib

            try:
                return getattr(importlib.import_module("numpy._core" + module[len("numpy.core"):]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def safe_unpickle(data: bytes) -> Any:
    """Unpickle bytes that may only contain numpy arrays/scalars, lists, dicts, tuples, str, numbers.

    Raises:
        pickle.UnpicklingError: the data refers to any other class or function.
    """
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def load_split_file(path: PathLike) -> np.ndarray:
    """Read an official split file (a pickled 1-D integer numpy array) safely → int64 array.

    Raises:
        ValueError: the file holds something else (for example the list of id strings that the official
            ``make_id_list.py`` writes under the same name) or cannot be read safely.
    """
    path = Path(path)
    try:
        obj = safe_unpickle(path.read_bytes())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a safely readable split index array ({e})") from e
    if isinstance(obj, list) and obj and all(isinstance(v, str) for v in obj):
        raise ValueError(f"{path}: holds a list of id strings (make_id_list.py format), not the index array")
    if not isinstance(obj, np.ndarray) or obj.ndim != 1 or obj.dtype.kind not in "iu":
        what = f"array {obj.dtype} {obj.shape}" if isinstance(obj, np.ndarray) else type(obj).__name__
        raise ValueError(f"{path}: expected a 1-D integer numpy array, got {what}")
    return obj.astype(np.int64)


# -- labels and structures -------------------------------------------------------------------------------


def valid_label(v: Any) -> bool:
    """Official filter: an int, or a finite float (bool, str, None, NaN and inf are rejected)."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    if isinstance(v, (float, np.floating)):
        return math.isfinite(float(v))
    return False


@lru_cache(maxsize=4096)
def _pymatgen_species_ok(s: str) -> bool:
    from pymatgen.core.periodic_table import get_el_sp

    try:
        get_el_sp(s)
        return True
    except Exception:  # noqa: BLE001 - pymatgen raises ValueError or KeyError
        return False


def _converts(atoms: Any) -> bool:
    """Would ``Atoms(...).pymatgen_converter()`` return a structure (OQMD pre-filter)?"""
    try:
        lat = np.asarray(atoms["lattice_mat"], dtype=np.float64)
        coords = np.asarray(atoms["coords"], dtype=np.float64).reshape(-1, 3)
        elements = [str(e).strip() for e in atoms["elements"]]
    except (KeyError, TypeError, ValueError):
        return False
    return lat.shape == (3, 3) and len(elements) == len(coords) and all(_pymatgen_species_ok(e) for e in elements)


def filter_entries(entries: Sequence[Mapping[str, Any]], spec: PublishedSet) -> np.ndarray:
    """Positions (in ``entries``) of the entries the official scripts keep for ``spec`` (int64, ascending)."""
    keys = [src for src, _ in spec.labels]
    kept = []
    for i, x in enumerate(entries):
        if spec.strip_elements and not _converts(x.get("atoms")):
            continue
        if all(valid_label(x.get(k)) for k in keys):
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


# -- downloads -----------------------------------------------------------------------------------------


def _jarvis_zip_path(name: str, store_dir: PathLike | None) -> Path:
    from jarvis.db.figshare import get_cache_dir, get_db_info

    info = get_db_info()
    if name not in info:
        raise ValueError(f"jarvis-tools does not know the data set {name!r}")
    folder = Path(store_dir) if store_dir is not None else Path(get_cache_dir("jarvis_data"))
    return folder / (info[name][1] + ".zip")


def fetch_jarvis(name: str, store_dir: PathLike | None = None) -> list[dict[str, Any]]:
    """The jarvis-tools list ``name``: read from its zip in ``store_dir`` (or jarvis' cache), else downloaded.

    The zip is the one ``jarvis.db.figshare.data(name, store_dir)`` writes; a zip that cannot be read is
    reported with its path (delete it to download again).
    """
    try:
        zpath = _jarvis_zip_path(name, store_dir)
    except ImportError as e:
        raise ImportError("the published data sets need jarvis-tools: pip install jarvis-tools") from e
    if zpath.is_file():
        js_tag = zpath.name[:-4]
        try:
            with zipfile.ZipFile(zpath) as z:
                return json.loads(z.read(js_tag))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{zpath} is damaged ({type(e).__name__}: {e}); delete it to download again") from e
    from jarvis.db.figshare import data

    return data(name, store_dir=None if store_dir is None else str(store_dir))


def _default_store(sub: str) -> Path:
    base = os.environ.get("CRYSTALFRAMER_DATA", os.path.join(os.path.expanduser("~"), ".cache", "crystalframer"))
    return Path(base) / sub


def matformer_files(kind: str, store_dir: PathLike | None = None, download: bool = True) -> dict[str, Path]:
    """Paths of Matformer's ``{kind}_modulus_megnet_{split}.pkl`` files (kind "bulk" or "shear").

    Missing files are downloaded (figshare) into ``store_dir`` (default ``~/.cache/crystalframer/megnet_elastic``
    or ``$CRYSTALFRAMER_DATA/megnet_elastic``) when ``download`` is True.
    """
    folder = Path(store_dir) if store_dir is not None else _default_store("megnet_elastic")
    out = {}
    for split, url in zip(SPLITS, MATFORMER_URLS[kind]):
        p = folder / f"{kind}_modulus_megnet_{split}.pkl"
        if not p.is_file():
            if not download:
                raise FileNotFoundError(f"{p} not found")
            folder.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + f".part{os.getpid()}")
            with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:  # noqa: S310 - fixed https URL
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, p)
        out[split] = p
    return out


def _read_matformer(path: Path) -> list[dict[str, Any]]:
    try:
        data = safe_unpickle(path.read_bytes())
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused to unpickle ({e}); expected a list of plain dicts") from e
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise ValueError(f"{path}: expected a pickled list of dicts, got {type(data).__name__}")
    return data


# -- loading --------------------------------------------------------------------------------------------


def load_published(target_set: str, split: str | None = None, splits_dir: PathLike | None = None,
                   store_dir: PathLike | None = None, targets: Sequence[str] | None = None,
                   on_error: str = "skip", cache_dir: PathLike | None = None,
                   download: bool = True) -> CrystalDataset:
    """Load an official target set (see the module table) as a :class:`CrystalDataset` with split labels.

    Args:
        target_set: e.g. "jarvis__dft_3d_2021", "jarvis__megnet", "jarvis__oqmd_3d-bandgap".
        split: "train" / "val" / "test", or None for all three (train, then val, then test entries; the
            entries the official rule leaves unused are not included).
        splits_dir: the official ``data/splits`` folder; ``<target_set>/{train,val,test}.pkl`` are used
            when all three exist. Otherwise the official rule (:func:`official_split_indices`); any split file
            present is then checked against it.
        store_dir: where jarvis-tools zips (or the Matformer pickles) are kept / downloaded to.
        targets: stored target names to keep (default: all of the set). Filtering always uses every
            label of the set, so the split does not depend on this choice.
        on_error: "skip" (report invalid structures in ``dataset.errors``) or "raise".
        cache_dir: preprocessing cache folder (keyed by the downloaded file's digest), or None.
        download: for the Matformer sets, allow downloading missing pickles.
    """
    if target_set not in PUBLISHED_SETS:
        raise ValueError(f"unknown target set {target_set!r}; known: {', '.join(PUBLISHED_SETS)}")
    spec = PUBLISHED_SETS[target_set]
    want = None if split is None else normalize_split_label(split)
    tnames = list(spec.target_names if targets is None else targets)
    unknown = [t for t in tnames if t not in spec.target_names]
    if unknown:
        raise ValueError(f"{target_set} has targets {spec.target_names}, not {unknown}")
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    split_files = _split_files(splits_dir, target_set)
    settings = {"reader": "published", "target_set": target_set, "split": want, "targets": tnames,
                "on_error": on_error}

    if spec.source == "matformer":
        kind = target_set.rsplit("-", 1)[1].split("_")[0]
        files = matformer_files(kind, store_dir, download)
        return _cache.cached_build(
            cache_dir, settings, lambda: _cache.content_digest([_cache.file_digest(files[s]) for s in SPLITS]),
            lambda: (_build_matformer(spec, files, want, tnames, on_error), []))

    def content() -> str:
        zpath = _jarvis_zip_path(spec.source, store_dir)
        if not zpath.is_file():
            raise _cache.Unhashable(f"{zpath} not downloaded yet")
        return _cache.content_digest([_cache.file_digest(zpath),
                                      {s: _cache.file_digest(p) for s, p in split_files.items()}])

    fetched: list[list[dict[str, Any]]] = []

    def get_entries() -> list[dict[str, Any]]:
        if not fetched:
            fetched.append(fetch_jarvis(spec.source, store_dir))
        return fetched[0]

    def build():
        return _build_jarvis(spec, get_entries(), split_files, want, tnames, on_error), []

    if cache_dir is not None and not _jarvis_zip_path(spec.source, store_dir).is_file():
        get_entries()  # download now, so that the zip's digest can key the cache on this first call
    return _cache.cached_build(cache_dir, settings, content, build)


def _split_files(splits_dir: PathLike | None, target_set: str) -> dict[str, Path]:
    if splits_dir is None:
        return {}
    folder = Path(splits_dir) / target_set
    return {s: folder / f"{s}.pkl" for s in SPLITS if (folder / f"{s}.pkl").is_file()}


def split_published(entries: Sequence[Mapping[str, Any]], spec: PublishedSet,
                    split_files: Mapping[str, PathLike] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Filter and split a jarvis-tools list as the official scripts do.

    Returns:
        (data_idx, split → positions in the filtered list) where data_idx (int64) holds the positions of
        the kept entries in ``entries``; ``entries[data_idx[split["train"]]]`` are the training entries.
    """
    data_idx = filter_entries(entries, spec)
    files = dict(split_files or {})
    rule = official_split_indices(len(data_idx), spec.fixed_sizes)
    if not files:
        return data_idx, rule
    pos = np.full(len(entries), -1, dtype=np.int64)
    pos[data_idx] = np.arange(len(data_idx))
    from_files = {}
    for s, p in files.items():
        raw = load_split_file(p)
        bad = raw[(raw < 0) | (raw >= len(entries))]
        if len(bad) == 0:
            bad = raw[pos[raw] < 0]
        if len(bad):
            raise ValueError(f"{p}: index {int(bad[0])} is not a kept entry of the {len(entries)}-entry "
                             f"{spec.source} list; the split file does not match this download")
        from_files[s] = pos[raw]
    if len(from_files) == 3:
        return data_idx, from_files
    for s, idx in from_files.items():  # partial set of files (OQMD has no train.pkl): check them against the rule
        if not np.array_equal(idx, rule[s]):
            warnings.warn(f"{files[s]} differs from the official split rule for {spec.target_set}; "
                          "using the rule (all three split files are needed to override it)", stacklevel=3)
    return data_idx, rule


def _build_jarvis(spec: PublishedSet, entries: Sequence[Mapping[str, Any]], split_files: Mapping[str, Path],
                  want: str | None, tnames: list[str], on_error: str) -> CrystalDataset:
    data_idx, parts = split_published(entries, spec, split_files)
    sizes = tuple(len(parts[s]) for s in SPLITS)
    if sizes != spec.sizes:
        warnings.warn(f"{spec.target_set}: split sizes {sizes} differ from the official {spec.sizes} "
                      f"({len(entries)} entries, {len(data_idx)} kept); is this the same jarvis-tools download?",
                      stacklevel=3)
    col = [spec.target_names.index(t) for t in tnames]
    keys = [src for src, _ in spec.labels]
    crystals, labels, errors = [], [], []
    for s in SPLITS if want is None else (want,):
        for p in parts[s]:
            i = int(data_idx[p])
            x = entries[i]
            sid = str(x.get(spec.id_key, i))
            y = np.array([float(x[keys[c]]) for c in col], dtype=np.float64)
            try:
                c = jarvis_atoms_to_crystal(x["atoms"], sid, y, strip_elements=spec.strip_elements)
            except InvalidStructureError as e:
                if on_error == "raise":
                    raise
                errors.append(LoadError(i, sid, str(e)))
                continue
            crystals.append(c)
            labels.append(s)
    if errors:
        warnings.warn(f"{spec.target_set}: skipped {len(errors)} invalid structures (see dataset.errors): "
                      f"{errors[0].message}", stacklevel=3)
    name = spec.target_set if want is None else f"{spec.target_set}[{want}]"
    return CrystalDataset(crystals, tnames, errors, labels, name)


def _build_matformer(spec: PublishedSet, files: Mapping[str, Path], want: str | None, tnames: list[str],
                     on_error: str) -> CrystalDataset:
    key = spec.labels[0][0]
    crystals, labels, errors = [], [], []
    offset = 0
    for s in SPLITS:
        data = _read_matformer(files[s])
        if want is None or s == want:
            for k, x in enumerate(data):
                sid = str(x.get(spec.id_key, offset + k))
                try:
                    y = float(x.get(key))
                except (TypeError, ValueError):
                    y = math.nan  # the official script would stop here; keep the structure, label missing
                try:
                    c = jarvis_atoms_to_crystal(x["atoms"], sid, [y] if tnames else None, strip_elements=True)
                except (InvalidStructureError, KeyError) as e:
                    if on_error == "raise":
                        raise
                    errors.append(LoadError(offset + k, sid, str(e)))
                    continue
                crystals.append(c)
                labels.append(s)
        offset += len(data)
    name = spec.target_set if want is None else f"{spec.target_set}[{want}]"
    return CrystalDataset(crystals, tnames, errors, labels, name)
