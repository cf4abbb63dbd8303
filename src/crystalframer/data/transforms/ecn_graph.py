"""ECN supercell graphs (Kaba & Ravanbakhsh, NeurIPS 2022): crystal → primitive cell → 2×2×2 supercell → graph.

Steps of :func:`build_ecn_graph`:

1. **Primitive cell.** spglib ``standardize_cell(to_primitive=True, no_idealize=True)`` with
   ``symprec`` (default 0.01 Å, pymatgen's default; spglib's default angle tolerance). ``no_idealize``
   keeps the input orientation and the measured geometry (distances are not symmetrised). Distinct
   species vectors (occupancy-weighted rows) are distinct atom types. If spglib finds no cell, the input
   cell is used and ``info["primitive"]`` is False.
2. **Canonical unit cell** (this library's addition; ``docs/ecn.md`` explains why and how). The basis and
   the image of each atom that forms cell 0 are chosen canonically (:func:`~crystalframer.geometry.cells.
   canonical_unit_cell`), so the graph does not depend on translation, rotation, atom order or the input
   cell, unless spglib's symmetry detection itself flips for structures distorted by about ``tie_symprec``.
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

Self-loops are added by :func:`collate_ecn`, as in the paper's code. Memoising and the disk cache are in
:mod:`crystalframer.data.transforms.ecn`; the steps live in :mod:`crystalframer.geometry.symmetry` (1),
:mod:`crystalframer.geometry.cells` (2, 3) and :mod:`crystalframer.data.transforms.ecn_neighbours` (4).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch

from crystalframer.data.batch import ECNBatch
from crystalframer.data.structures import Crystal
from crystalframer.data.transforms.ecn_neighbours import (
    isayev_neighbours,
    radius_neighbours,
    strongly_connected,
    supercell_edges,
)
from crystalframer.geometry.cells import CELL_COORDS, N_CELLS, canonical_unit_cell
from crystalframer.geometry.symmetry import primitive_standard_cell, spacegroup_number, species_types


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


# --------------------------------------------------------------------------------------------------------------
# Building


def primitive_cell(crystal: Crystal, symprec: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Primitive standardized cell with spglib (input orientation, geometry not idealized).

    Returns:
        lattice (3, 3) rows Å, frac (n, 3) fractional coordinates, species (n, 98), info dict with
        ``spacegroup`` (int or None) and ``primitive`` (bool: spglib found a cell).
    """
    types, table = species_types(crystal.species)
    lattice = np.asarray(crystal.lattice, dtype=np.float64)
    frac = crystal.positions @ np.linalg.inv(crystal.lattice)
    out = primitive_standard_cell(lattice, frac, types + 1, symprec)
    info: dict[str, Any] = {"spacegroup": spacegroup_number(lattice, frac, types + 1, symprec), "primitive": False}
    if out is None:  # the graph is then built on the input cell, which may be a supercell: say so
        warnings.warn(f"{crystal.id}: spglib found no primitive cell (symprec {symprec} Å); the ECN graph is "
                      "built on the input cell as given", RuntimeWarning, stacklevel=2)
        return lattice, frac, np.asarray(crystal.species), info
    lat, pf, pt = out
    info["primitive"] = True
    return np.asarray(lat, dtype=np.float64), np.asarray(pf, dtype=np.float64), table[np.asarray(pt) - 1], info


def hubbard_flag(crystal: Crystal) -> float:
    info = crystal.info or {}
    for key in ("is_hubbard", "hubbard", "gga_u"):
        if key in info:
            return float(bool(info[key]))
    return 0.0


def build_ecn_graph(crystal: Crystal, settings: ECNGraphSettings | dict | None = None) -> ECNGraph:
    """Build the ECN supercell graph of ``crystal`` (see module docstring).

    Args:
        crystal: a validated :class:`Crystal`.
        settings: :class:`ECNGraphSettings` or a dict of its fields (default: ECN's IsayevNN rule).
    Raises:
        InvalidStructureError: the neighbour search fails.
    """
    if not isinstance(settings, ECNGraphSettings):
        settings = ECNGraphSettings.from_dict(settings)
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
    return ECNGraph(id=crystal.id, lattice=lattice, positions=positions, species=np.asarray(species, np.float64),
                    src=src, dst=dst, dist=dist, hubbard=hubbard_flag(crystal),
                    connected=strongly_connected(n_nodes, src, dst), targets=crystal.targets, info=info)


def connected_only(crystals: Sequence[Crystal], graph_of, label: str = "") -> tuple[list[Crystal], list[str]]:
    """ECN's dataset filter (Kaba & Ravanbakhsh, 2022): drop structures whose supercell graph is not strongly
    connected (the paper's MP set goes from 82,229 to 78,649 structures).

    Args:
        crystals: the structures; graph_of: ``Crystal → ECNGraph`` (e.g. ``ECNGraphTransform.graph``, memoised).
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


# --------------------------------------------------------------------------------------------------------------
# Batching


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
