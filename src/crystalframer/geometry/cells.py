"""Unit cells: the 2×2×2 supercell convention of ECN, lattice automorphisms and a canonical choice of unit cell.

The supercell of ECN (Kaba & Ravanbakhsh, NeurIPS 2022) holds 8 copies of the unit cell, at
``t_c = c1 l1 + c2 l2 + c3 l3`` with ``c ∈ {0,1}^3``; cell ``c`` has the index ``4·c1 + 2·c2 + c3``.

Why a canonical unit cell: ECN groups atoms into 8 copies of the unit cell, so its graph depends on which
periodic image of each atom belongs to cell 0, and the cell labels depend on the basis. The paper's code takes
the input wrapping as it is, so its predictions change under a rigid translation. :func:`canonical_unit_cell`
chooses both canonically (see ``docs/ecn.md``).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter

import numpy as np

from crystalframer.geometry.images import shift_range
from crystalframer.geometry.symmetry import species_types, symmetrized_geometry

#: Cells of the 2×2×2 supercell.
N_CELLS = 8
#: (8, 3) int64 cell coordinates of cell index 4·c1 + 2·c2 + c3.
CELL_COORDS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(N_CELLS)], dtype=np.int64)


def cell_index(c: np.ndarray | tuple[int, int, int]) -> np.ndarray | int:
    """Cell coordinates (..., 3) in {0,1} (any integers: reduced mod 2) → index 4·c1 + 2·c2 + c3."""
    c = np.asarray(c) % 2
    return 4 * c[..., 0] + 2 * c[..., 1] + c[..., 2]


#: Distance tolerance (Å) under which two images are equally near (on the symmetrized geometry).
DIST_TOL = 1e-6


def image_search(lattice: np.ndarray, diff: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """All images of nearest-image-reduced fractional differences within ``radius``.

    Args:
        diff: (..., 3) fractional differences (any integers added are removed).
    Returns:
        shifted (..., S, 3) fractional differences and their Cartesian lengths (..., S), Å.
    """
    red = diff - np.round(diff)
    R = shift_range(lattice, radius)
    axes = [np.arange(-r, r + 1) for r in R]
    shifts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    cand = red[..., None, :] + shifts
    d = np.linalg.norm(cand @ lattice, axis=-1)
    return cand, d


@functools.lru_cache(maxsize=1)
def _unimodular_candidates() -> np.ndarray:
    """(m, 3, 3) float64: all matrices with entries in {−1, 0, 1} and determinant +1 (computed once)."""
    A = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=np.float64).reshape(-1, 3, 3)
    A = A[np.abs(np.linalg.det(A) - 1.0) < 1e-9]
    A.setflags(write=False)
    return A


def lattice_automorphisms(G: np.ndarray, tol: float) -> np.ndarray:
    """Proper integer basis changes A (entries in {−1, 0, 1}, det +1) with A G Aᵀ = G within ``tol`` (Å²).

    These are the rotations of the lattice written in its basis. Returns (m, 3, 3) int64, identity first.
    """
    A = _unimodular_candidates()
    ok = np.abs(np.einsum("nij,jk,nlk->nil", A, G, A) - G[None]).max(axis=(1, 2)) <= tol
    A = A[ok].astype(np.int64)
    first = np.all(A == np.eye(3, dtype=np.int64), axis=(1, 2))
    return np.concatenate([A[first], A[~first]])


def _nearest_images(metric_lattice: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """For each fractional difference (n, 3): the integer shift (n, 3) of its image nearest to 0.

    Ties (within DIST_TOL Å) go to the lexicographically smallest shifted difference; candidates of one
    atom differ by integer vectors, so that comparison is exact.
    """
    red = rel - np.round(rel)
    reach = float(np.linalg.norm(red @ metric_lattice, axis=1).max()) + 1e-6
    cand, d = image_search(metric_lattice, rel, reach)  # (n, S, 3), (n, S)
    tied = d <= d.min(axis=1, keepdims=True) + DIST_TOL
    pick = np.argmax(tied, axis=1)
    for b in np.nonzero(tied.sum(axis=1) > 1)[0]:
        pick[b] = min(np.nonzero(tied[b])[0], key=lambda s: tuple(_quantize(cand[b, s], 20).tolist()))
    return np.round(cand[np.arange(len(rel)), pick] - rel)


def _quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """Round to multiples of 2^-bits.

    A binary grid, not a decimal one: structures are often stored with 6 decimals, and averages of such
    numbers (the symmetrized positions) land exactly on the rounding boundaries of a decimal grid, where
    rounding then follows floating-point noise. They never land on a binary grid's boundaries.
    """
    return np.round(np.asarray(x) * 2.0 ** bits) / 2.0 ** bits + 0.0  # + 0.0 turns −0.0 into 0.0


def _describe(types: np.ndarray, offsets: np.ndarray, bits: int = 20) -> tuple:
    """Sorted (type, quantized fractional offset) pairs: a description free of atom order."""
    return tuple(sorted(zip(types.tolist(), map(tuple, _quantize(offsets, bits).tolist()))))


def canonical_unit_cell(lattice: np.ndarray, frac: np.ndarray, species: np.ndarray, symprec: float = 0.01,
                        tie_symprec: float = 1e-3) -> tuple[np.ndarray, np.ndarray, int]:
    """Choose the basis of the unit cell and which image of each atom forms cell 0 (module docstring).

    Candidates are every basis ``A·lattice`` with A a lattice rotation (:func:`lattice_automorphisms`) and
    every anchor atom a of the rarest species. For a candidate, every atom takes its image nearest to a,
    and the description D = sorted (type, fractional offset from a) of those images is free of origin
    and atom order. The candidate with the smallest D wins (then the real geometry: offsets and metric);
    equal keys mean the same labelled graph. So two
    inputs whose reduced cells differ by a lattice rotation (spglib may return either) end up identical,
    the 8-cell labels included. Decisions use the symmetrized geometry (:func:`symmetrized_geometry`) so
    that symmetry-equivalent images tie exactly.

    Returns:
        lattice (3, 3) the chosen basis rows, positions (n, 3) Cartesian (real geometry), Å, anchor index.
    """
    types, _ = species_types(species)
    counts = Counter(types.tolist())
    G, fsym = symmetrized_geometry(lattice, frac, species, tie_symprec)
    G_real = lattice @ lattice.T
    scale = float(np.sqrt(np.diag(G)).max())
    autos = lattice_automorphisms(G, tol=2.0 * scale * max(symprec, 1e-6))
    rarest = min((counts[t], t) for t in counts)[1]
    best: tuple | None = None
    for A in autos:
        Ainv = np.linalg.inv(A).round()  # unimodular: exact integer inverse
        Gc = A @ G @ A.T
        metric_lattice = np.linalg.cholesky(Gc)  # any L with L Lᵀ = G measures the same lengths
        fc = fsym @ Ainv  # r = f B = (f A⁻¹)(A B)
        fr = frac @ Ainv
        for a in np.nonzero(types == rarest)[0]:
            rel = fc - fc[a]
            shifts = _nearest_images(metric_lattice, rel)
            # primary key: the symmetrized description (grid 2^-20 ≈ 1e-6); candidates it cannot tell apart
            # (equivalent up to tie_symprec) are ordered by the real geometry (grid 2^-34 ≈ 6e-11, above
            # rounding noise), so that even a tiny real distortion is placed the same way for any input
            desc = (_describe(types, rel + shifts, 20), _describe(types, fr - fr[a] + shifts, 34),
                    tuple(_quantize(A @ G_real @ A.T, 24).ravel().tolist()))
            if best is None or desc < best[0]:
                best = (desc, A, int(a), shifts)
    _, A, anchor, shifts = best
    new_lattice = A @ lattice
    positions = (frac @ np.linalg.inv(A).round() + shifts) @ new_lattice
    return new_lattice, positions, anchor
