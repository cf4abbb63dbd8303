"""Structures, batching and data sets (no model code here)."""

from crystalframer.data.batch import CrystalBatch, collate
from crystalframer.data.structures import Crystal, InvalidStructureError, read_structures, to_crystal

__all__ = ["Crystal", "CrystalBatch", "InvalidStructureError", "collate", "read_structures", "to_crystal"]
