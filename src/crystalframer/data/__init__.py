"""Data layer: structures, readers (:mod:`~crystalframer.data.io`), data sets and splits, the shared and published
sets (:mod:`~crystalframer.data.sources`), batches, transforms and the preprocessing cache."""

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

__all__ = [
    "CACHE_SCHEMA_VERSION", "PUBLISHED_SETS", "SHARED_SETS", "Crystal", "CrystalBatch", "CrystalDataset",
    "DatasetSplits", "InvalidStructureError", "LoadError", "TargetStats", "clear_cache", "collate",
    "jarvis_atoms_to_crystal", "load_dataset", "load_published", "load_shared", "load_split_file",
    "official_split_indices", "parse_structure", "read_ase_db", "read_ase_file", "read_csv", "read_dataframe", "read_extxyz",
    "read_folder", "read_json", "read_structure_list", "read_structures", "split_indices", "to_crystal",
    "UnphysicalStructureWarning",
]
