"""Crystal symmetry with spglib (Togo et al., spglib documentation): atom types, primitive cells, symmetrized
geometry. The one place that calls spglib's cell standardisation.
"""

from __future__ import annotations

import warnings

import numpy as np


def species_types(species: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct species rows (n, 98) → (types (n,) int, table (T, 98)). Type order is the sorted row order,
    so it does not depend on the atom order."""
    rows = np.round(np.asarray(species, dtype=np.float64), 9)
    table, types = np.unique(rows, axis=0, return_inverse=True)
    return types.reshape(-1).astype(np.int64), table


def primitive_standard_cell(lattice: np.ndarray, frac: np.ndarray, types: np.ndarray, symprec: float
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """spglib ``standardize_cell(to_primitive=True, no_idealize=True)``: the primitive cell in the input orientation.

    ``no_idealize`` keeps the input orientation and the measured geometry (distances are not symmetrised).

    Args:
        lattice: (3, 3) rows, Å; frac: (n, 3) fractional positions; types: (n,) integer atom types;
        symprec: spglib distance tolerance, Å.
    Returns:
        (lattice (3, 3) rows Å, frac (m, 3), types (m,)) as spglib returns them, or None where spglib finds no
        cell (or fails).
    """
    import spglib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return spglib.standardize_cell((lattice, frac, types), to_primitive=True, no_idealize=True,
                                           symprec=symprec)
    except Exception:  # noqa: BLE001 - spglib raises its own error type in some versions; no cell then
        return None


def spacegroup_number(lattice: np.ndarray, frac: np.ndarray, types: np.ndarray, symprec: float) -> int | None:
    """The international space-group number (1..230) spglib finds within ``symprec`` Å, or None."""
    import spglib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = spglib.get_symmetry_dataset((lattice, frac, types), symprec=symprec)
    except Exception:  # noqa: BLE001 - as above
        return None
    return None if ds is None else int(ds.number)


def symmetrized_geometry(lattice: np.ndarray, frac: np.ndarray, species: np.ndarray, symprec: float = 0.01
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Metric and fractional positions averaged over the cell's own symmetry operations (spglib, ``symprec``).

    Used only for discrete decisions (which image is nearest, which atom is the anchor): in a structure
    that is symmetric only within ``symprec``, images that are equivalent by symmetry differ by tiny
    distances, and which one looks nearest would then depend on the input setting.

    Returns:
        G (3, 3) symmetrized metric (|f L|² = f G fᵀ for a row of fractional coordinates f), and
        frac_sym (n, 3) symmetrized fractional coordinates, each within ~symprec of ``frac`` (no
        integer jumps).
    """
    import spglib

    types, _ = species_types(species)
    G = lattice @ lattice.T
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sym = spglib.get_symmetry((lattice, frac, types + 1), symprec=symprec)
    except Exception:  # noqa: BLE001 - no symmetry information: decide on the raw geometry
        sym = None
    if not sym or len(sym["rotations"]) == 0:
        return G, frac.copy()
    Ws = np.asarray(sym["rotations"], dtype=np.float64)
    ws = np.asarray(sym["translations"], dtype=np.float64)
    # W acts on column fractional vectors; a row f maps to f Wᵀ, so lengths need Wᵀ G W = G
    G_sym = np.einsum("mji,jk,mkl->il", Ws, G, Ws) / len(Ws)
    n = len(frac)
    acc = np.zeros_like(frac)
    cnt = np.zeros(n)
    for W, w in zip(Ws, ws):
        img = frac @ W.T + w  # (n, 3) image of every atom under this operation
        diff = img[:, None, :] - frac[None, :, :]  # (b, a, 3)
        diff -= np.round(diff)
        d2 = np.einsum("bai,ij,baj->ba", diff, G_sym, diff)
        d2[types[:, None] != types[None, :]] = np.inf
        a = np.argmin(d2, axis=1)  # the atom that image b lands on
        np.add.at(acc, a, frac[a] + diff[np.arange(n), a])
        np.add.at(cnt, a, 1.0)
    if np.any(cnt == 0):  # the operations did not map atoms one-to-one: keep the raw geometry
        return G, frac.copy()
    return G_sym, acc / cnt[:, None]
