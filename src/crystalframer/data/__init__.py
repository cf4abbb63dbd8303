"""Data layer: structures, readers, data sets, splits, the published sets and the preprocessing cache."""

from crystalframer.data.batch import CrystalBatch, collate
from crystalframer.data.cache import CACHE_SCHEMA_VERSION, clear_cache
from crystalframer.data.datasets import (
    SHARED_SETS,
    CrystalDataset,
    DatasetSplits,
    LoadError,
    TargetStats,
    load_shared,
    split_indices,
)
from crystalframer.data.published import (
    PUBLISHED_SETS,
    jarvis_atoms_to_crystal,
    load_published,
    load_split_file,
    official_split_indices,
)
from crystalframer.data.readers import (
    load_dataset,
    parse_structure,
    read_ase_db,
    read_ase_file,
    read_csv,
    read_dataframe,
    read_extxyz,
    read_folder,
    read_json,
    read_structure_list,
)
from crystalframer.data.structures import (
    Crystal,
    InvalidStructureError,
    UnphysicalStructureWarning,
    read_structures,
    to_crystal,
)

__all__ = [
    "CACHE_SCHEMA_VERSION", "PUBLISHED_SETS", "SHARED_SETS", "Crystal", "CrystalBatch", "CrystalDataset",
    "DatasetSplits", "InvalidStructureError", "LoadError", "TargetStats", "clear_cache", "collate",
    "jarvis_atoms_to_crystal", "load_dataset", "load_published", "load_shared", "load_split_file",
    "official_split_indices", "parse_structure", "read_ase_db", "read_ase_file", "read_csv", "read_dataframe", "read_extxyz",
    "read_folder", "read_json", "read_structure_list", "read_structures", "split_indices", "to_crystal",
    "UnphysicalStructureWarning",
]
