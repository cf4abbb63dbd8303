"""ECN supercell graphs (spec B.1, B.2, B.8): crystal → primitive cell → 2×2×2 supercell → neighbour graph.

Steps of :func:`build_ecn_graph`:

1. **Primitive cell.** spglib ``standardize_cell(to_primitive=True, no_idealize=True)`` with
   ``symprec`` (default 0.01 Å, pymatgen's default; spglib's default angle tolerance). ``no_idealize``
   keeps the input orientation and the measured geometry (distances are not symmetrised). Distinct
   species vectors (occupancy-weighted rows) are distinct atom types. If spglib finds no cell, the input
   cell is used and ``info["primitive"]`` is False.
2. **Canonical unit cell** [proposal]. ECN groups atoms into 8 copies of the unit cell, so the graph
   depends on which periodic image of each atom belongs to cell 0, and the cell labels depend on the
   basis. The paper's code takes the input wrapping as it is, so its predictions change under a rigid
   translation. Here both are chosen canonically (:func:`canonical_unit_cell`): over every basis related
   to spglib's by a lattice rotation and every anchor atom of the rarest species, each atom takes its
   image nearest to the anchor (the Wigner–Seitz cell of the anchor; exact ties go to the smallest
   fractional offset), and the candidate with the smallest order-free description wins. Decisions use
   the geometry symmetrized with ``tie_symprec`` (default 1e-3 Å) so that symmetry-equivalent images tie
   exactly; the real geometry breaks the remaining ties. The graph then does not depend on translation,
   rotation, atom order or the input cell (tested on real MP/JARVIS structures and Perov-5), unless
   spglib's symmetry detection itself flips for structures distorted by about ``tie_symprec``.
3. **Supercell.** 8 copies at ``t_c = c1 l1 + c2 l2 + c3 l3``; node ``8·a + c`` is atom ``a`` in cell
   ``c = 4·c1 + 2·c2 + c3`` (all images of atom 0 first, as in the paper's code).
4. **Neighbours**, computed once on the primitive cell and copied to the 8 cells with wrap-around (a
   neighbour at lattice offset ``t`` of a node in cell ``c`` is in cell ``(c + t) mod 2``: circular
   padding). This is the same graph as running the rule on the periodic 2×2×2 supercell, 8× cheaper.
   * ``neighbors="isayev"`` (ECN default): pymatgen ``IsayevNN`` (shared Voronoi facet and
     ``d < r_cov,i + r_cov,j + tol``), ``tol = 0.5`` Å, ``cutoff = 6`` Å search radius. Disordered sites
     use their majority element for the covalent radius. Facets of (numerically) zero area are not
     shared facets (``min_facet``): they come from Voronoi degeneracies in symmetric crystals and would
     make the graph depend on rounding.
   * ``neighbors="cutoff"`` (fast; ECN's Perov-5 rule): every image within ``radius`` (default 5 Å).
   Multi-edges (two images of one atom that fall in the same supercell node) are kept, each with its
   true distance.

Self-loops are added by :func:`collate_ecn`, as in the paper's code. Graphs can be cached on disk
(:class:`GraphCache`: one ``.npz`` per structure, JSON header inside, atomic write, no pickle).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from crystalframer.atomic import atomic_open
from crystalframer.data.structures import Crystal, InvalidStructureError
from crystalframer.geometry.images import shift_range
from crystalframer.geometry.symmetry import species_types

#: Bump when the stored graph layout or the building rules change (invalidates caches).
SCHEMA_VERSION = 1
N_CELLS = 8
#: (8, 3) int64 cell coordinates of cell index 4·c1 + 2·c2 + c3.
CELL_COORDS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(N_CELLS)], dtype=np.int64)
#: Distance tolerance (Å) under which two images are equally near (on the symmetrized geometry).
DIST_TOL = 1e-6


@dataclass(frozen=True)
class ECNGraphSettings:
    """How a supercell graph is built.

    Attributes:
        neighbors: ``"isayev"`` (Voronoi + covalent radii, the ECN default) or ``"cutoff"`` (all
            neighbours within ``radius``).
        tol: IsayevNN bond tolerance δ in Å.
        cutoff: IsayevNN neighbour search radius in Å (also the hard distance cutoff).
        radius: neighbour radius of the ``"cutoff"`` rule, Å.
        symprec: spglib distance tolerance (Å) for finding the primitive cell (pymatgen's default 0.01,
            loose enough for slightly noisy supercells of relaxed structures). Structures whose noise is
            about symprec can be reduced differently for different input settings (seen on Carbon-24,
            noise ≈ 0.01 Å: use 1e-3 there); MP, JARVIS and Perov-5 structures are stable at 0.01.
        tie_symprec: distance tolerance (Å) of the symmetrization used only to break exact ties when the
            unit cell is chosen (:func:`canonical_unit_cell`). Smaller than ``symprec`` because a loose
            value makes symmetry detection flip between settings on slightly distorted cells (Perov-5
            distortions are about 0.005–0.01 Å).
        min_facet: IsayevNN facets whose area is below this fraction of the atom's largest facet are not
            shared facets. In symmetric structures (rock salt) some neighbours touch a Voronoi cell only
            at an edge or a vertex; qhull then reports zero-area "facets" (~1e-7 relative area) for a
            rounding-dependent subset of them, and the graph would change with the orientation. 0 keeps
            every facet (pymatgen's behaviour).
        primitive: reduce to the primitive cell first (the ECN default); False keeps the input cell.
    """

    neighbors: str = "isayev"
    tol: float = 0.5
    cutoff: float = 6.0
    radius: float = 5.0
    symprec: float = 0.01
    tie_symprec: float = 1e-3
    min_facet: float = 1e-5
    primitive: bool = True

    def __post_init__(self) -> None:
        if self.neighbors not in ("isayev", "cutoff"):
            raise ValueError(f"neighbors must be 'isayev' or 'cutoff', got {self.neighbors!r}")
        for name in ("tol", "cutoff", "radius", "symprec", "tie_symprec", "min_facet"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.radius <= 0 or self.cutoff <= 0:
            raise ValueError("radius and cutoff must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ECNGraphSettings":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ECN graph settings: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def perov5(cls) -> "ECNGraphSettings":
        """The paper code's Perov-5 rule: every neighbour within 5 Å."""
        return cls(neighbors="cutoff", radius=5.0)


@dataclass
class ECNGraph:
    """One ECN supercell graph (numpy arrays; float64 geometry).

    Attributes:
        id: structure id.
        lattice: (3, 3) rows l1, l2, l3 of the unit cell used (primitive unless disabled), Å. The
            supercell lattice is ``2 · lattice``.
        positions: (n, 3) Cartesian positions of the unit-cell atoms in cell 0, Å.
        species: (n, 98) occupancy-weighted one-hot species of the unit-cell atoms.
        src, dst: (E,) int64 supercell node ids; messages flow src → dst (dst is the receiver i).
        dist: (E,) float64 true distance of each edge, Å.
        hubbard: the Hubbard-U flag (0 or 1), the same for every atom.
        connected: whether the directed graph is strongly connected (and every node has an edge).
        targets: optional (n_targets,) labels.
        info: extras (space group number, atom counts, anchor, whether the primitive cell was found).
    """

    id: str
    lattice: np.ndarray
    positions: np.ndarray
    species: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    dist: np.ndarray
    hubbard: float = 0.0
    connected: bool = True
    targets: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_atoms(self) -> int:
        """n, atoms in the unit cell."""
        return int(self.positions.shape[0])

    @property
    def num_nodes(self) -> int:
        """8 n supercell nodes."""
        return N_CELLS * self.num_atoms

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    @property
    def node_atom(self) -> np.ndarray:
        """(8n,) unit-cell atom index a of each node."""
        return np.arange(self.num_nodes) // N_CELLS

    @property
    def node_cell(self) -> np.ndarray:
        """(8n,) cell index c of each node."""
        return np.arange(self.num_nodes) % N_CELLS

    @property
    def node_positions(self) -> np.ndarray:
        """(8n, 3) Cartesian node positions, Å (atom a in cell c at r_a + t_c)."""
        t = CELL_COORDS.astype(np.float64) @ self.lattice  # (8, 3)
        return (self.positions[:, None, :] + t[None, :, :]).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------------------------
# Building


def primitive_cell(crystal: Crystal, symprec: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Primitive standardized cell with spglib (input orientation, geometry not idealized).

    Returns:
        lattice (3, 3) rows Å, frac (n, 3) fractional coordinates, species (n, 98), info dict with
        ``spacegroup`` (int or None) and ``primitive`` (bool: spglib found a cell).
    """
    import spglib

    types, table = species_types(crystal.species)
    frac = crystal.positions @ np.linalg.inv(crystal.lattice)
    cell = (np.asarray(crystal.lattice, dtype=np.float64), frac, types + 1)
    info: dict[str, Any] = {"spacegroup": None, "primitive": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = spglib.standardize_cell(cell, to_primitive=True, no_idealize=True, symprec=symprec)
            ds = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception:  # noqa: BLE001 - spglib raises its own error type in some versions; fall back
        out, ds = None, None
    if ds is not None:
        info["spacegroup"] = int(ds.number)
    if out is None:  # the graph is then built on the input cell, which may be a supercell: say so
        warnings.warn(f"{crystal.id}: spglib found no primitive cell (symprec {symprec} Å); the ECN graph is "
                      "built on the input cell as given", RuntimeWarning, stacklevel=2)
        return np.asarray(crystal.lattice, dtype=np.float64), frac, np.asarray(crystal.species), info
    lat, pf, pt = out
    info["primitive"] = True
    return np.asarray(lat, dtype=np.float64), np.asarray(pf, dtype=np.float64), table[np.asarray(pt) - 1], info


def _image_search(lattice: np.ndarray, diff: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
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
    cand, d = _image_search(metric_lattice, rel, reach)  # (n, S, 3), (n, S)
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
    """Choose the basis of the unit cell and which image of each atom forms cell 0 (module docstring, step 2).

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


def isayev_neighbours(lattice: np.ndarray, positions: np.ndarray, species: np.ndarray, tol: float = 0.5,
                      cutoff: float = 6.0, structure_id: str = "structure", min_facet: float = 1e-5
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """pymatgen ``IsayevNN`` neighbours on the unit cell, without degenerate facets (``min_facet``).

    Returns:
        i (E,) receivers, j (E,) neighbours, t (E, 3) int lattice offsets (neighbour at r_j + t·L),
        d (E,) distances in Å.
    """
    from pymatgen.analysis.local_env import IsayevNN
    from pymatgen.core import Lattice, Structure

    inv = np.linalg.inv(lattice)
    frac = positions @ inv
    z = np.argmax(species, axis=1) + 1  # majority element: pymatgen's covalent radii need one element
    # pymatgen's Voronoi search expects sites inside [0, 1) (a site at −1e-17 loses neighbours), so give it
    # cleanly wrapped copies; offsets and distances are re-derived from our own positions below
    inside = np.mod(frac, 1.0)
    inside[inside > 1.0 - 1e-9] = 0.0
    s = Structure(Lattice(lattice), z.tolist(), inside, coords_are_cartesian=False)
    nn = IsayevNN(tol=tol, cutoff=cutoff, allow_pathological=False, extra_nn_info=False,
                  compute_adj_neighbors=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = nn.get_all_nn_info(s)
    except (ValueError, RuntimeError) as e:
        raise InvalidStructureError(structure_id, f"IsayevNN neighbour search failed: {e}") from e
    I, J, T, D = [], [], [], []
    for i, site_nns in enumerate(info):
        for d in site_nns:
            if d["weight"] < min_facet:  # a zero-area facet: the Voronoi cells only touch
                continue
            j = int(d["site_index"])
            disp = np.asarray(d["site"].coords) - s[i].coords
            t = (positions[i] + disp - positions[j]) @ inv
            tr = np.round(t)
            if np.abs(t - tr).max() > 1e-5:
                raise InvalidStructureError(structure_id, "IsayevNN returned a neighbour off the lattice")
            I.append(i)
            J.append(j)
            T.append(tr)
            D.append(float(np.linalg.norm(positions[j] + tr @ lattice - positions[i])))
    return (np.asarray(I, dtype=np.int64), np.asarray(J, dtype=np.int64),
            np.asarray(T, dtype=np.int64).reshape(-1, 3), np.asarray(D, dtype=np.float64))


def radius_neighbours(lattice: np.ndarray, positions: np.ndarray, radius: float = 5.0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every image within ``radius`` Å (the atom itself excluded); same returns as :func:`isayev_neighbours`."""
    inv = np.linalg.inv(lattice)
    frac = positions @ inv
    diff = frac[None, :, :] - frac[:, None, :]  # (n_i, n_j, 3): r_j − r_i
    cand, d = _image_search(lattice, diff, radius)  # (n, n, S, 3)
    keep = (d <= radius) & (d > 1e-8)
    i, j, s = np.nonzero(keep)
    t = np.round(cand[i, j, s] - diff[i, j]).astype(np.int64)
    return i.astype(np.int64), j.astype(np.int64), t, d[i, j, s]


def supercell_edges(i: np.ndarray, j: np.ndarray, t: np.ndarray, d: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copy unit-cell neighbours to the 8 cells with wrap-around. Returns src, dst, dist sorted by (dst, src, d)."""
    c = np.arange(N_CELLS)
    dst = (N_CELLS * i[:, None] + c[None, :]).reshape(-1)
    cj = (CELL_COORDS[None, :, :] + t[:, None, :]) % 2  # (E, 8, 3) the neighbour's cell
    src = (N_CELLS * j[:, None] + 4 * cj[..., 0] + 2 * cj[..., 1] + cj[..., 2]).reshape(-1)
    dist = np.repeat(d, N_CELLS)
    order = np.lexsort((dist, src, dst))
    return src[order].astype(np.int64), dst[order].astype(np.int64), dist[order]


def strongly_connected(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> bool:
    """Whether every node has an out-edge and the directed graph is strongly connected."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if num_nodes == 0 or len(src) == 0:
        return False
    if len(np.unique(src)) < num_nodes:
        return False
    A = coo_matrix((np.ones(len(src)), (src, dst)), shape=(num_nodes, num_nodes)).tocsr()
    ncomp, _ = connected_components(A, directed=True, connection="strong")
    return ncomp == 1


def _hubbard_flag(crystal: Crystal) -> float:
    info = crystal.info or {}
    for key in ("is_hubbard", "hubbard", "gga_u"):
        if key in info:
            return float(bool(info[key]))
    return 0.0


def graph_key(crystal: Crystal, settings: ECNGraphSettings) -> str:
    """sha256 of the structure arrays, the Hubbard flag, the settings and the schema version."""
    h = hashlib.sha256()
    header = json.dumps({"schema": SCHEMA_VERSION, "settings": settings.to_dict(),
                         "hubbard": _hubbard_flag(crystal)}, sort_keys=True)
    h.update(header.encode())
    for arr in (crystal.lattice, crystal.positions, crystal.species):
        a = np.ascontiguousarray(np.asarray(arr, dtype="<f8"))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def build_ecn_graph(crystal: Crystal, settings: ECNGraphSettings | dict | None = None,
                    cache: "GraphCache | str | os.PathLike | None" = None) -> ECNGraph:
    """Build the ECN supercell graph of ``crystal`` (see module docstring).

    Args:
        crystal: a validated :class:`Crystal`.
        settings: :class:`ECNGraphSettings` or a dict of its fields (default: ECN's IsayevNN rule).
        cache: optional :class:`GraphCache` or directory; a stored graph is reused when its key matches.
    Raises:
        InvalidStructureError: the neighbour search fails.
    """
    if not isinstance(settings, ECNGraphSettings):
        settings = ECNGraphSettings.from_dict(settings)
    if cache is not None and not isinstance(cache, GraphCache):
        cache = GraphCache(cache)
    key = None
    if cache is not None:
        key = graph_key(crystal, settings)
        g = cache.get(key)
        if g is not None:
            return replace(g, id=crystal.id, targets=crystal.targets)

    if settings.primitive:
        lattice, frac, species, info = primitive_cell(crystal, settings.symprec)
    else:
        lattice = np.asarray(crystal.lattice, dtype=np.float64)
        frac, species = crystal.positions @ np.linalg.inv(lattice), np.asarray(crystal.species)
        info = {"spacegroup": None, "primitive": False}
    lattice, positions, anchor = canonical_unit_cell(lattice, frac, species, settings.symprec, settings.tie_symprec)
    if settings.neighbors == "isayev":
        i, j, t, d = isayev_neighbours(lattice, positions, species, settings.tol, settings.cutoff, crystal.id,
                                       settings.min_facet)
    else:
        i, j, t, d = radius_neighbours(lattice, positions, settings.radius)
    src, dst, dist = supercell_edges(i, j, t, d)
    n_nodes = N_CELLS * len(positions)
    info.update(input_atoms=crystal.num_atoms, unit_cell_atoms=int(len(positions)), anchor=int(anchor))
    g = ECNGraph(id=crystal.id, lattice=lattice, positions=positions, species=np.asarray(species, np.float64),
                 src=src, dst=dst, dist=dist, hubbard=_hubbard_flag(crystal),
                 connected=strongly_connected(n_nodes, src, dst), targets=crystal.targets, info=info)
    if cache is not None:
        cache.put(key, g)
    return g


def connected_only(crystals: Sequence[Crystal], graph_of, label: str = "") -> tuple[list[Crystal], list[str]]:
    """ECN's dataset filter (Kaba & Ravanbakhsh, 2022): drop structures whose supercell graph is not strongly
    connected (the paper's MP set goes from 82,229 to 78,649 structures).

    Args:
        crystals: the structures; graph_of: ``Crystal → ECNGraph`` (e.g. ``ECNNet.build_graph``, memoised).
        label: a name for the warning (e.g. the split).
    Returns:
        (kept structures, ids of the dropped ones). A ``UserWarning`` gives the count when any are dropped.
    """
    kept, dropped = [], []
    for c in crystals:
        (kept if graph_of(c).connected else dropped).append(c)
    if dropped:
        ids = [c.id for c in dropped]
        warnings.warn(f"ECN connectivity filter{' (' + label + ')' if label else ''}: dropped {len(ids)} of "
                      f"{len(crystals)} structures whose graph is not strongly connected "
                      f"(e.g. {', '.join(map(str, ids[:5]))}); ECN(drop_disconnected=False) keeps them",
                      UserWarning, stacklevel=2)
    return kept, [c.id for c in dropped]


def build_ecn_graphs(crystals: Sequence[Crystal], settings: ECNGraphSettings | dict | None = None,
                     cache: "GraphCache | str | os.PathLike | None" = None,
                     on_error: str = "raise") -> tuple[list[ECNGraph], list[tuple[int, str, str]]]:
    """Build many graphs. ``on_error="skip"`` collects failures as (index, id, message) instead of raising."""
    if cache is not None and not isinstance(cache, GraphCache):
        cache = GraphCache(cache)
    graphs, errors = [], []
    for k, c in enumerate(crystals):
        try:
            graphs.append(build_ecn_graph(c, settings, cache))
        except InvalidStructureError as e:
            if on_error == "raise":
                raise
            errors.append((k, c.id, str(e)))
    return graphs, errors


# ----------------------------------------------------------------------------------------------------------------
# Disk cache

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
                header = json.loads(bytes(z["header"]).decode("utf-8"))
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
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        with atomic_open(p) as f:
            np.savez(f, **arrays)
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


# ----------------------------------------------------------------------------------------------------------------
# Batching


@dataclass
class ECNBatch:
    """B supercell graphs with N nodes and E edges in total (self-loops included when requested).

    Attributes:
        species: (N, 98) species vector of each node (its unit-cell atom's).
        cell: (N,) long cell index c ∈ 0..7 of each node.
        atom: (N,) long batch-global unit-cell atom id (nodes of one atom share it across the 8 cells).
        hubbard: (B,) Hubbard-U flag per structure.
        batch: (N,) long structure index of each node.
        ptr: (B + 1,) long node offsets.
        edge_src, edge_dst: (E,) long batch-global node ids (message src → dst).
        edge_dist: (E,) distances, Å (0 for self-loops).
        edge_identity: (E,) bool, both ends are images of the same unit-cell atom (self-loops included).
        ids: B structure ids.
        y: optional (B, n_targets) targets in original units (NaN = missing).
    """

    species: Tensor
    cell: Tensor
    atom: Tensor
    hubbard: Tensor
    batch: Tensor
    ptr: Tensor
    edge_src: Tensor
    edge_dst: Tensor
    edge_dist: Tensor
    edge_identity: Tensor
    ids: list[str] = field(default_factory=list)
    y: Tensor | None = None

    @property
    def num_graphs(self) -> int:
        return int(self.ptr.shape[0] - 1)

    @property
    def num_nodes(self) -> int:
        return int(self.cell.shape[0])

    def __len__(self) -> int:
        return self.num_graphs

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ECNBatch":
        """Move to ``device``; ``dtype`` casts the floating tensors (species, hubbard, distances, y)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            out[f.name] = v
        return ECNBatch(**out)


def collate_ecn(graphs: Sequence[ECNGraph], dtype: torch.dtype = torch.float32, self_loops: bool = True) -> ECNBatch:
    """Concatenate graphs into an :class:`ECNBatch`; ``self_loops`` adds one (distance 0) per node."""
    if len(graphs) == 0:
        raise ValueError("cannot collate an empty list of ECN graphs")
    n_atoms = np.array([g.num_atoms for g in graphs], dtype=np.int64)
    n_nodes = N_CELLS * n_atoms
    node_off = np.concatenate([[0], np.cumsum(n_nodes)])
    atom_off = np.concatenate([[0], np.cumsum(n_atoms)])
    N = int(node_off[-1])
    species = np.concatenate([np.repeat(g.species, N_CELLS, axis=0) for g in graphs])
    cell = np.tile(np.arange(N_CELLS), int(n_atoms.sum()))
    atom = np.repeat(np.arange(int(atom_off[-1])), N_CELLS)
    src = [g.src + node_off[k] for k, g in enumerate(graphs)]
    dst = [g.dst + node_off[k] for k, g in enumerate(graphs)]
    dist = [g.dist for g in graphs]
    if self_loops:
        src.append(np.arange(N))
        dst.append(np.arange(N))
        dist.append(np.zeros(N))
    src_a, dst_a = np.concatenate(src).astype(np.int64), np.concatenate(dst).astype(np.int64)
    y = None
    if all(g.targets is not None for g in graphs):
        y = torch.from_numpy(np.stack([np.asarray(g.targets, np.float64) for g in graphs])).to(dtype)
    return ECNBatch(
        species=torch.from_numpy(species).to(dtype),
        cell=torch.from_numpy(cell).long(),
        atom=torch.from_numpy(atom).long(),
        hubbard=torch.tensor([g.hubbard for g in graphs], dtype=dtype),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), torch.from_numpy(n_nodes)),
        ptr=torch.from_numpy(node_off).long(),
        edge_src=torch.from_numpy(src_a),
        edge_dst=torch.from_numpy(dst_a),
        edge_dist=torch.from_numpy(np.concatenate(dist)).to(dtype),
        edge_identity=torch.from_numpy(atom[src_a] == atom[dst_a]),
        ids=[g.id for g in graphs],
        y=y,
    )
