"""Data layer: structures, readers (:mod:`~crystalframer.data.io`), data sets and splits, the shared and published
sets (:mod:`~crystalframer.data.sources`), batches, transforms and the preprocessing cache.

The names below load on first use (PEP 562): importing one module of the package (``crystalframer.data.batch``,
what the networks need) does not load the readers, the data sets or pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crystalframer._lazy import lazy_exports

if TYPE_CHECKING:  # static imports for type checkers and IDEs; at run time the names load lazily
    from crystalframer.data.batch import CrystalBatch, collate
    from crystalframer.data.cache import CACHE_SCHEMA_VERSION, clear_cache
    from crystalframer.data.datasets import CrystalDataset, DatasetSplits, LoadError, TargetStats
    from crystalframer.data.io.ase_files import read_ase_db, read_ase_file, read_extxyz
    from crystalframer.data.io.entries import parse_structure
    from crystalframer.data.io.folders import read_folder
    from crystalframer.data.io.jarvis import jarvis_atoms_to_crystal
    from crystalframer.data.io.json_files import read_json
    from crystalframer.data.io.lists import read_structure_list
    from crystalframer.data.io.load import load_dataset
    from crystalframer.data.io.tables import read_csv, read_dataframe
    from crystalframer.data.sources.published import PUBLISHED_SETS, load_published, load_split_file
    from crystalframer.data.sources.shared import SHARED_SETS, load_shared
    from crystalframer.data.splits import official_split_indices, split_indices
    from crystalframer.data.structures import (
        Crystal,
        InvalidStructureError,
        UnphysicalStructureWarning,
        read_structures,
        to_crystal,
    )

# public name -> defining module
_EXPORTS: dict[str, str] = {
    "CrystalBatch": "crystalframer.data.batch",
    "collate": "crystalframer.data.batch",
    "CACHE_SCHEMA_VERSION": "crystalframer.data.cache",
    "clear_cache": "crystalframer.data.cache",
    "CrystalDataset": "crystalframer.data.datasets",
    "DatasetSplits": "crystalframer.data.datasets",
    "LoadError": "crystalframer.data.datasets",
    "TargetStats": "crystalframer.data.datasets",
    "read_ase_db": "crystalframer.data.io.ase_files",
    "read_ase_file": "crystalframer.data.io.ase_files",
    "read_extxyz": "crystalframer.data.io.ase_files",
    "parse_structure": "crystalframer.data.io.entries",
    "read_folder": "crystalframer.data.io.folders",
    "jarvis_atoms_to_crystal": "crystalframer.data.io.jarvis",
    "read_json": "crystalframer.data.io.json_files",
    "read_structure_list": "crystalframer.data.io.lists",
    "load_dataset": "crystalframer.data.io.load",
    "read_csv": "crystalframer.data.io.tables",
    "read_dataframe": "crystalframer.data.io.tables",
    "PUBLISHED_SETS": "crystalframer.data.sources.published",
    "load_published": "crystalframer.data.sources.published",
    "load_split_file": "crystalframer.data.sources.published",
    "SHARED_SETS": "crystalframer.data.sources.shared",
    "load_shared": "crystalframer.data.sources.shared",
    "official_split_indices": "crystalframer.data.splits",
    "split_indices": "crystalframer.data.splits",
    "Crystal": "crystalframer.data.structures",
    "InvalidStructureError": "crystalframer.data.structures",
    "UnphysicalStructureWarning": "crystalframer.data.structures",
    "read_structures": "crystalframer.data.structures",
    "to_crystal": "crystalframer.data.structures",
}

__all__ = [
    "CACHE_SCHEMA_VERSION", "PUBLISHED_SETS", "SHARED_SETS", "Crystal", "CrystalBatch", "CrystalDataset",
    "DatasetSplits", "InvalidStructureError", "LoadError", "TargetStats", "clear_cache", "collate",
    "jarvis_atoms_to_crystal", "load_dataset", "load_published", "load_shared", "load_split_file",
    "official_split_indices", "parse_structure", "read_ase_db", "read_ase_file", "read_csv", "read_dataframe",
    "read_extxyz", "read_folder", "read_json", "read_structure_list", "read_structures", "split_indices", "to_crystal",
    "UnphysicalStructureWarning",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
