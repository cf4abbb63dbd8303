"""Atom types for symmetry searches (spglib): shared by the frames and the data layer."""

from __future__ import annotations

import numpy as np


def species_types(species: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct species rows (n, 98) → (types (n,) int, table (T, 98)). Type order is the sorted row order,
    so it does not depend on the atom order."""
    rows = np.round(np.asarray(species, dtype=np.float64), 9)
    table, types = np.unique(rows, axis=0, return_inverse=True)
    return types.reshape(-1).astype(np.int64), table
