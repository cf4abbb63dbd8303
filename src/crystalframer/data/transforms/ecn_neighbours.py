"""Neighbours of ECN graphs: the rule on the unit cell, copied to the 8 cells of the 2×2×2 supercell.

* :func:`isayev_neighbours` (ECN default): pymatgen ``IsayevNN`` (Isayev et al., Nat. Commun. 8, 15679 (2017):
  a shared Voronoi facet and ``d < r_cov,i + r_cov,j + tol``). Disordered sites use their majority element for
  the covalent radius. Facets of (numerically) zero area are not shared facets (``min_facet``): they come
  from Voronoi degeneracies in symmetric crystals and would make the graph depend on rounding.
* :func:`radius_neighbours` (fast; ECN's Perov-5 rule): every image within a radius.

:func:`supercell_edges` copies them to the 8 cells with wrap-around (a neighbour at lattice offset ``t`` of a
node in cell ``c`` is in cell ``(c + t) mod 2``: circular padding), the same graph as running the rule on the
periodic 2×2×2 supercell, 8× cheaper.
"""

from __future__ import annotations

import warnings

import numpy as np

from crystalframer.data.structures import InvalidStructureError
from crystalframer.geometry.cells import CELL_COORDS, N_CELLS, cell_index, image_search


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
    cand, d = image_search(lattice, diff, radius)  # (n, n, S, 3)
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
    src = (N_CELLS * j[:, None] + cell_index(cj)).reshape(-1)
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
